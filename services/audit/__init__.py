"""Audit: the verifiable ledger of everything that happened.

- `ledger.py`: canonical leaves and exactly-once appends of consumed records.
- `merkle.py`: RFC 9162 Merkle tree hashing, proofs and their verification (pure).
- `api.py`: auditor HTTP API (timeline; proofs, heads and knowledge follow).
- `app.py`: `create_app(settings)`, wiring the runtime, the ingest consumer and routes.
"""
