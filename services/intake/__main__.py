"""`python -m services.intake`: run the intake service."""

from services.infra.settings import IntakeSettings
from services.infra.webapp import serve
from services.intake.app import create_app

settings = IntakeSettings()
serve(
    create_app(settings),
    name="intake",
    host=settings.http_host,
    port=settings.port,
    log_level=settings.log_level,
)
