"""`python -m services.triage`: run the triage service."""

from services.infra.settings import TriageSettings
from services.infra.webapp import serve
from services.triage.app import create_app

settings = TriageSettings()
serve(
    create_app(settings),
    name="triage",
    host=settings.http_host,
    port=settings.port,
    log_level=settings.log_level,
)
