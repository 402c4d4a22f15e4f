"""Incidents: an event-sourced workflow for serious workplace reports.

`domain` is pure (no I/O); `infra` is the one copy of the I/O plumbing; the four
services (`intake`, `triage`, `escalation`, `audit`) import both and never each other.
"""
