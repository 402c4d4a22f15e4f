"""Audit: the verifiable ledger of everything that happened.

- `usecases.py`: the application layer: appending consumed records, and every auditor
  query (incident reads, knowledge, raw entries, proofs, heads, the console list), each
  on a command and an `AuditUnitOfWork`; `postgres.py` and `memory.py` implement it.
- `ledger.py`: canonical leaves, classification of records, the `PostgresLedger` store.
- `indexed.py`: the index columns an entry is selected by, derived from its leaf (pure):
  the append writes them by it, verify proves them by it.
- `conflicts.py`: who an incident excludes (the reader included), for every read.
- `merkle.py` / `tree.py`: RFC 9162 hashing and proofs (pure) / the tree in PostgreSQL.
- `checkpoint.py`, `cosignature.py`, `heads.py`, `identity.py`: signed heads, witness
  cosignatures, the signer loop, one key for one log.
- `api.py`, `receipt_proofs.py`, `ui*.py`: thin HTTP and console adapters.
- `verify.py`, `trust.py`, `receipt_check.py`, `cli.py`: `incidents audit`, the verifier.
- `app.py`: `create_app(settings)`, wiring the runtime, the ingest consumer and routes.
"""
