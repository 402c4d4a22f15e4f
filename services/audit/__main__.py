"""`python -m services.audit`: run the audit service."""

from services.audit.app import create_app
from services.infra.settings import AuditSettings
from services.infra.webapp import run_service

run_service("audit", AuditSettings, create_app)
