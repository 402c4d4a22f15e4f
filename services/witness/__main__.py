"""`python -m services.witness`: run the witness with settings from `INCIDENTS_WITNESS_*`."""

from services.witness.app import run

run()
