"""`python -m services.escalation`: run the escalation service."""

from services.escalation.app import create_app
from services.infra.settings import EscalationSettings
from services.infra.webapp import serve

settings = EscalationSettings()
serve(
    create_app(settings),
    name="escalation",
    host=settings.http_host,
    port=settings.port,
    log_level=settings.log_level,
)
