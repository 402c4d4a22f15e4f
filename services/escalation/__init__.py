"""Escalation: the faust stream processor that keeps deadlines and climbs chains.

- `app.py`: `create_app(settings)`: the faust app (agents over `incident.triage` and
  `incident.activity`) running inside a FastAPI app for health and metrics.
- `handlers.py`: what escalation does with each event (deadlines arrive with the
  escalation issue; today it records what it consumed, exactly once).
"""
