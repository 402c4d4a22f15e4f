"""Triage: the faust stream processor that decides who is asked to act.

- `app.py`: `create_app(settings)`: the faust app (agents over `incident.reports`,
  `directory.changes` and `incident.activity`) running inside a FastAPI app for health
  and metrics.
- `usecases.py`: what triage does with each input, exactly once, each use case a command
  and a `TriageUnitOfWork`: the directory kept, decisions, re-decisions after a
  confirmation, re-exclusion on amendment, recusals and ordered reassignments
  (docs/conflicts.md).
- `handlers.py`: the Kafka adapters: records in, commands out, unreadable records
  dead-lettered.
- `postgres.py` / `memory.py`: triage's repositories (decisions, directory log,
  policies) on PostgreSQL and in memory.
"""
