"""Triage: the faust stream processor that decides who is asked to act.

- `app.py`: `create_app(settings)`: the faust app (agents over `incident.reports` and
  `directory.changes`) running inside a FastAPI app for health and metrics.
- `handlers.py`: what triage does with each event (the policy decision arrives with
  the triage issue; today it records what it consumed, exactly once).
"""
