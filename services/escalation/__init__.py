"""Escalation: the faust stream processor that keeps deadlines and climbs chains.

- `app.py`: `create_app(settings)`: the faust agents (over `incident.triage`,
  `incident.activity`, `incident.reports`, `directory.changes`) running inside a FastAPI
  app for health and metrics.
- `usecases.py`: the use cases (start, step, clear, record a delivery, queue notices),
  each a command and an `EscalationUnitOfWork`; the rules are `services.domain.escalation`.
- `postgres.py` / `memory.py`: that unit of work on PostgreSQL (locks, skip-locked due
  rows) and in memory (use-case tests).
- `handlers.py`, `inputs.py`: the adapters (Kafka batches, the deadline scheduler, the
  delivery worker) that build the commands; `notify.py`: the delivery adapters;
  `addresses.py`: the e-mail addresses projected from the directory events.
"""
