"""`incidents up --traces`: Phoenix when the extra is installed, a clear message when not."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import tooling.stack as stack
from services.cli import app
from tooling.traces import PHOENIX_EXTRA, Phoenix, phoenix_missing

_real_find_spec = importlib.util.find_spec


def _without_phoenix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the extra look uninstalled, whatever this environment has."""

    def find_spec(name: str, *args: Any) -> Any:
        if name.split(".")[0] == "phoenix":
            return None
        return _real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _stack_records(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def run_stack(**kwargs: Any) -> int:
        calls.append(kwargs)
        return 0

    monkeypatch.setattr(stack, "run_stack", run_stack)
    return calls


def test_traces_without_the_extra_says_how_to_install_it_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_phoenix(monkeypatch)
    calls = _stack_records(monkeypatch)
    result = CliRunner().invoke(app, ["up", "--traces"])
    assert result.exit_code == 2
    assert "--traces needs the optional extra" in result.output
    assert PHOENIX_EXTRA in result.output
    assert calls == []


def test_without_traces_the_extra_is_not_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_phoenix(monkeypatch)
    calls = _stack_records(monkeypatch)
    result = CliRunner().invoke(app, ["up", "--run-dir", "somewhere"])
    assert result.exit_code == 0, result.output
    assert calls == [{"run_dir": "somewhere", "traces": False}]


def test_traces_with_the_extra_runs_the_stack_with_phoenix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    calls = _stack_records(monkeypatch)
    assert phoenix_missing() is None
    result = CliRunner().invoke(app, ["up", "--traces"])
    assert result.exit_code == 0, result.output
    assert calls == [{"run_dir": None, "traces": True}]


def test_phoenix_listens_on_loopback_only_and_the_services_export_to_it(tmp_path: Path) -> None:
    phoenix = Phoenix(tmp_path / "phoenix", port=16006, grpc_port=14317)
    command, env = phoenix.command()
    assert command[1] == "-c" and "run_phoenix()" in command[2] and command[3:] == ["serve"]
    assert env["PHOENIX_HOST"] == "127.0.0.1"
    assert (env["PHOENIX_PORT"], env["PHOENIX_GRPC_PORT"]) == ("16006", "14317")
    assert env["PHOENIX_WORKING_DIR"] == str(tmp_path / "phoenix")
    assert phoenix.service_env() == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:16006",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
