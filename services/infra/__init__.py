"""The one copy of the I/O plumbing the four services share.

Settings, CloudEvents over Kafka, the PostgreSQL pool and migrations, the event
store with its outbox and relay, consumer tracking, HTTP errors and telemetry.
"""
