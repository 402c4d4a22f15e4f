"""`python -m services.triage`: run the triage service."""

from services.infra.settings import TriageSettings
from services.infra.webapp import run_service
from services.triage.app import create_app

run_service("triage", TriageSettings, create_app)
