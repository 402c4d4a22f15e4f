"""The test suite: unit (pure), integration (real broker and database), e2e (processes)."""
