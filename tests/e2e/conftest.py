"""The whole stack as separate processes: its own broker, database and ports.

`stack` starts Tansu, the four services (`python -m services.<name>`) on free ports
and a fresh database (`tooling.launcher.PrivateStack`, as bench and chaos do), and lets
a test kill (SIGKILL) and restart any of them, or the broker. Logs go to the test's
temp folder and are printed when a service fails. A test module that needs other
settings for every service (a policy of seconds, say) overrides the `stack_env` fixture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from tooling.launcher import SERVICES, PrivateStack
from tooling.localstack import Tansu

ROOT = Path(__file__).resolve().parents[2]
AUDITOR = {"authorization": "Bearer dev-auditor-token"}


class Stack(PrivateStack):
    """Four service processes and a broker, under a test's control."""

    broker: Tansu

    def __init__(self, logs: Path, database_url: str, env: Mapping[str, str] | None = None) -> None:
        super().__init__(
            logs,
            database_url,
            env={
                "INCIDENTS_BROKER_CHECK_INTERVAL": "0.5",
                "INCIDENTS_TRACES_DIR": str(logs / "traces"),
                "INCIDENTS_CHECKPOINT_INTERVAL": "1",
                **(env or {}),
            },
        )

    def start(self, name: str, **env: str) -> None:
        self.start_service(name, **env)


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    """Extra environment for every service of the module's stack (none by default).

    A test module overrides this fixture to run its stack with, say, its own policy
    file (`INCIDENTS_POLICY_FILE`); `stack.start(name, **env)` still wins over it.
    """
    return {}


@pytest.fixture(scope="module")
def stack(
    make_database: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
    stack_env: dict[str, str],
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("stack")
    stack = Stack(logs, make_database("e2e"), stack_env)
    try:
        for name in SERVICES:
            stack.start(name)
        for name in SERVICES:
            stack.wait_ready(name)
        yield stack
    finally:
        stack.stop()


def submit(stack: Stack, body: dict[str, object] | None = None) -> str:
    answer = httpx.post(
        stack.url("intake") + "/v1/reports",
        json=body or {"category": "harassment", "summary": "e2e", "description": "d"},
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    incident: str = answer.json()["incident_id"]
    return incident


SUBMITTED = "incident.report.submitted.v1"


def timeline(
    stack: Stack, incident: str, of_type: str | None = SUBMITTED
) -> list[dict[str, object]]:
    """The incident's ledger entries (by default only its submission)."""
    answer = httpx.get(
        f"{stack.url('audit')}/v1/incidents/{incident}/timeline", headers=AUDITOR, timeout=5
    )
    if answer.status_code == 404:
        return []
    assert answer.status_code == 200, answer.text
    events: list[dict[str, object]] = answer.json()["events"]
    return [e for e in events if of_type is None or e["event"]["type"] == of_type]  # type: ignore[index]


def wait_for_timeline(
    stack: Stack, incident: str, timeout: float = 20.0, of_type: str | None = SUBMITTED
) -> list[dict[str, object]]:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        events = timeline(stack, incident, of_type)
        if events:
            return events
        time.sleep(0.05)
    raise AssertionError(
        f"{incident} not in the ledger after {timeout}s\n--- intake\n{stack.tail('intake')}"
        f"\n--- audit\n{stack.tail('audit')}"
    )
