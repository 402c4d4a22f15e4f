"""The configuration check before anything starts (issue 23, item 8): every problem
on one line naming file, line and field (or the environment variable), all at once,
exit code 2, no traceback, and no connection to the broker or the database first."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from services.infra import webapp
from services.infra.preflight import CONFIG_EXIT, check_service
from services.infra.settings import IntakeSettings
from tooling import stack
from tooling.stack import run_stack

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nowhere"  # refused at once if ever tried


@pytest.fixture
def broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A policy path typo, a directory file that is not YAML, a refused setting."""
    directory = tmp_path / "directory.yaml"
    directory.write_text("people:\n  - id: p-a\n    roles: [handler\n", encoding="utf-8")
    env = {
        "INCIDENTS_POLICY_FILE": str(tmp_path / "polcy.yaml"),
        "INCIDENTS_DIRECTORY_FILE": str(directory),
        "INCIDENTS_DB_POOL_MAX": "0",
        "INCIDENTS_DATABASE_URL": UNREACHABLE,
        "INCIDENTS_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "INCIDENTS_STATE_DIR": str(tmp_path / "state"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_every_problem_is_one_line_naming_where(broken: dict[str, str]) -> None:
    settings, problems = check_service("audit")
    assert settings is None
    policy, directory = broken["INCIDENTS_POLICY_FILE"], broken["INCIDENTS_DIRECTORY_FILE"]
    refused, unread, not_yaml = problems  # the YAML parser's own words vary (LibYAML or not)
    assert refused == "INCIDENTS_DB_POOL_MAX: Input should be greater than or equal to 1"
    assert unread == f"{policy}: cannot read: No such file or directory"
    assert not_yaml.startswith(f"{directory}:4: not valid YAML: ") and "]" in not_yaml


def test_a_field_that_does_not_validate_names_file_line_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ncategories: 3\n", encoding="utf-8")
    monkeypatch.setenv("INCIDENTS_POLICY_FILE", str(policy))
    _settings, problems = check_service("triage")
    assert f"{policy}:2: field categories: Input should be a valid dictionary" in problems
    assert all(p.startswith(f"{policy}:") for p in problems), problems


def test_a_service_refuses_its_configuration_before_connecting(
    broken: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `python -m services.intake` runs: exit 2, one line per problem on stderr,
    no traceback, and neither the app nor a connection was made (the database and
    broker are unreachable: trying them would fail differently and slowly)."""

    def never(_: object) -> None:
        raise AssertionError("the app was built before the configuration was checked")

    monkeypatch.setattr(webapp, "serve", never)
    with pytest.raises(SystemExit) as stopped:
        webapp.run_service("intake", IntakeSettings, never)  # type: ignore[arg-type]
    assert stopped.value.code == CONFIG_EXIT
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines[0] == "intake: the configuration has 3 problem(s):"
    assert lines[1] == "  INCIDENTS_DB_POOL_MAX: Input should be greater than or equal to 1"
    assert lines[2].endswith("polcy.yaml: cannot read: No such file or directory")
    assert ":4: not valid YAML" in lines[3] and len(lines) == 4
    assert "Traceback" not in err and out == ""


def test_the_entry_point_exits_2_without_a_traceback(broken: dict[str, str]) -> None:
    """The module itself, once (a subprocess: imports take a few seconds)."""
    done = subprocess.run(
        [sys.executable, "-m", "services.triage"],
        env={**os.environ, **broken},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == CONFIG_EXIT, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[2].endswith(
        "polcy.yaml: cannot read: No such file or directory"
    )


def test_incidents_up_checks_every_service_before_the_broker(
    broken: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_: object) -> None:
        raise AssertionError("the broker started before the configuration was checked")

    monkeypatch.setattr(stack._Stack, "start_broker", never)
    buffer = io.StringIO()
    code = run_stack(str(tmp_path / "run"), console=Console(file=buffer, width=300))
    assert code == CONFIG_EXIT
    out = buffer.getvalue()
    assert out.count("polcy.yaml: cannot read") == 1  # three services read it: said once
    assert "INCIDENTS_DB_POOL_MAX" in out and "not valid YAML" in out
    assert not (tmp_path / "run").exists()
