"""Triage: the faust stream processor that decides who is asked to act.

- `app.py`: `create_app(settings)`: the faust app (agents over `incident.reports`,
  `directory.changes` and `incident.activity`) running inside a FastAPI app for health
  and metrics.
- `handlers.py`: what triage does with each event, exactly once: decisions, re-decisions
  after a confirmation, re-exclusion on amendment, recusals and ordered reassignments
  (docs/conflicts.md).
"""
