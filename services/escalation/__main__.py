"""`python -m services.escalation`: run the escalation service."""

from services.escalation.app import create_app
from services.infra.settings import EscalationSettings
from services.infra.webapp import run_service

run_service("escalation", EscalationSettings, create_app)
