# syntax=docker/dockerfile:1
# One image for every service and job of the incidents system:
#
#   docker build -t incidents .
#   docker run incidents intake|triage|escalation|audit|migrate|topics
#
# deploy/docker/entrypoint.py maps the argument to `python -m services.<name>` or runs
# the job; deploy/compose.yaml and deploy/k8s/ use nothing else. See deploy/README.md.
#
# Base image: Python 3.11, the version pyproject.toml requires and CI tests. It is
# named by tag here; release builds pin it by digest, resolved when the release is cut
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
# and passed as --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest>, so a
# release is rebuilt from exactly the same base, and a base update is a visible change.
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv with the project and its pinned dependencies ----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY services ./services
# Not tooling/ (incidents up, bench, chaos, demo, traces): development only, and nothing
# the services or the entry point import (tests/unit/test_tooling_layout.py).
# The install CI runs (Makefile, `venv` target) with the same constraints file, without
# the editable flag and the dev extra: tests/unit/test_deploy.py checks they agree.
RUN python -m pip install --quiet --upgrade pip
RUN python -m pip install --quiet -c constraints.txt .
# The trace exporter the image adds (not a project dependency), under the same pins.
COPY deploy/docker/requirements-otlp.txt ./
RUN python -m pip install --quiet -c constraints.txt -r requirements-otlp.txt
RUN python -m compileall -q /opt/venv/lib

# --- runtime: the virtualenv, the entry point, an unprivileged user ------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="incidents" \
      org.opencontainers.image.description="Incident workflow: intake, triage, escalation, audit" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 incidents \
 && useradd --system --uid 10001 --gid incidents --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin incidents
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/entrypoint.py /app/entrypoint.py
COPY deploy/topics.yaml /app/topics.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    INCIDENTS_HTTP_HOST=0.0.0.0
WORKDIR /app
USER 10001:10001
# intake, triage (health, metrics), escalation (health, metrics), audit
EXPOSE 8001 8002 8003 8004
# Whichever service runs here answers /healthz on its own port (a job: nothing to ask).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/entrypoint.py", "probe", "auto", "/healthz"]
ENTRYPOINT ["python", "/app/entrypoint.py"]
CMD ["intake"]
