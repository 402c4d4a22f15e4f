"""`python -m services.audit`: run the audit service."""

from services.audit.app import create_app
from services.infra.settings import AuditSettings
from services.infra.webapp import serve

settings = AuditSettings()
serve(
    create_app(settings),
    name="audit",
    host=settings.http_host,
    port=settings.port,
    log_level=settings.log_level,
)
