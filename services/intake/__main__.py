"""`python -m services.intake`: run the intake service."""

from services.infra.settings import IntakeSettings
from services.infra.webapp import run_service
from services.intake.app import create_app

run_service("intake", IntakeSettings, create_app)
