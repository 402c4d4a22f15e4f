"""Intake: the one front door.

- `api.py`: HTTP routes (thin: parse, call the service, answer).
- `service.py`: what intake does with a report: validate, store, queue for Kafka.
- `inbound.py`: the `incident.inbound` consumer for systems that publish on Kafka.
- `app.py`: `create_app(settings)`, wiring the runtime, routes and consumers.
"""
