"""The configuration check a service (and `incidents up`) runs before anything starts.

Before a process connects to the broker or the database, or runs a migration, it reads
its settings and every file they name (policy, directory, tokens, systems, key files)
and reports each problem on one line naming the file, line and field (or the setting's
environment variable), all problems at once. `run_service` and `incidents up` print
them and exit with `CONFIG_EXIT` instead of a traceback (docs/configuration.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from services.domain.directory import DirectoryFile
from services.domain.policy import Policy
from services.infra.auth import make_authenticator
from services.infra.config import ConfigError, load_yaml_model
from services.infra.crypto import CryptoError
from services.infra.keystore import master_key_of, pseudonyms_of
from services.infra.settings import (
    AuditSettings,
    CommonSettings,
    ContentKeySettings,
    EscalationSettings,
    IntakeSettings,
    PseudonymSettings,
    TriageSettings,
)
from services.infra.signing import SigningError, load_private_key, parse_key_set
from services.infra.systems import load_systems

CONFIG_EXIT = 2
"""Exit code of a process refused by this check (a usage error, as with typer's)."""
SETTINGS: dict[str, type[CommonSettings]] = {
    "intake": IntakeSettings,
    "triage": TriageSettings,
    "escalation": EscalationSettings,
    "audit": AuditSettings,
}
USES_POLICY = ("intake", "triage", "audit")
USES_DIRECTORY = ("intake", "audit")
USES_TOKENS = ("intake", "audit")
CONFIG_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CryptoError,
    SigningError,
    OSError,
    UnicodeDecodeError,
    ValueError,  # pydantic's ValidationError and the loaders' own refusals
)
"""What loading a setting or file raises when the configuration is wrong."""


class ConfigProblems(Exception):
    """The configuration cannot work: `problems`, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def env_name(settings_class: type[BaseModel], field: str) -> str:
    """The environment variable of a settings field (`INCIDENTS_POLICY_FILE`)."""
    info = settings_class.model_fields.get(field)
    alias = getattr(info.validation_alias, "choices", None) if info is not None else None
    if alias:
        return str(alias[0])
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def settings_problems(settings_class: type[BaseModel], exc: ValidationError) -> list[str]:
    """One line per refused setting, naming its environment variable (never its value).

    A rule over several settings (production's refusals) has no single field: its
    message already names the variables.
    """
    lines = []
    for error in exc.errors(include_input=False):
        loc = [str(p) for p in error["loc"]]
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{env_name(settings_class, loc[0])}: {message}" if loc else message)
    return lines


def load_settings(name: str) -> CommonSettings:
    """The settings of service `name` from the environment, or ConfigProblems."""
    settings_class = SETTINGS[name]
    try:
        return settings_class()
    except ValidationError as exc:
        raise ConfigProblems(settings_problems(settings_class, exc)) from exc


def file_checks(name: str, settings: CommonSettings) -> list[Callable[[], object]]:
    """Loading every file service `name` reads at start, one call per file.

    The same loaders the service's `create_app` calls, so a file that passes here
    passes there; none of them connects to anything or writes a file.
    """
    checks: list[Callable[[], object]] = []
    if name in USES_POLICY:
        checks.append(lambda: load_yaml_model(settings.policy_file, Policy))
    if name in USES_DIRECTORY:
        checks.append(lambda: load_yaml_model(settings.directory_file, DirectoryFile))
    if name in USES_TOKENS:
        checks.append(lambda: make_authenticator(settings))
    if isinstance(settings, IntakeSettings):
        checks.append(lambda: load_systems(settings.systems_file))
    if isinstance(settings, ContentKeySettings):
        checks.append(lambda: master_key_of(settings.master_key, settings.master_key_file))
        checks.extend(_readable(path) for path in settings.previous_master_key_files)
    if isinstance(settings, PseudonymSettings):
        checks.append(lambda: pseudonyms_of(settings.pseudonym_key, settings.pseudonym_key_file))
    if settings.event_signing_key is not None:
        key = settings.event_signing_key
        checks.append(lambda: load_private_key(key))
    if settings.event_keys_file is not None:
        keys = settings.event_keys_file
        checks.append(lambda: parse_key_set(_read(keys)))
    for path in (
        settings.kafka_ssl_cafile,
        settings.kafka_ssl_certfile,
        settings.kafka_ssl_keyfile,
        settings.kafka_sasl_password_file,
    ):
        if path is not None:
            checks.append(_readable(path))
    if isinstance(settings, AuditSettings) and (
        settings.environment == "production" or settings.signing_key_file.exists()
    ):
        checks.append(_readable(settings.signing_key_file))
    return checks


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def _readable(path: Path) -> Callable[[], object]:
    return lambda: _read(path)


def problem_lines(exc: BaseException) -> list[str]:
    """The one-line problems a configuration error stands for."""
    if isinstance(exc, ConfigProblems):
        return exc.problems
    if isinstance(exc, ValidationError):  # a model validated inside a loader
        return [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()]
    if isinstance(exc, OSError) and exc.filename is not None:
        return [f"{exc.filename}: cannot read: {exc.strerror}"]
    return [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]


def run_checks(checks: Iterable[Callable[[], object]]) -> list[str]:
    """Every check's problems (all of them, not only the first)."""
    problems: list[str] = []
    for check in checks:
        try:
            check()
        except CONFIG_ERRORS as exc:
            problems.extend(problem_lines(exc))
    return problems


def check_service(name: str) -> tuple[CommonSettings | None, list[str]]:
    """Service `name`'s settings and the problems of its configuration (empty: fine).

    When some settings are refused, the files the others name are still checked (the
    refused ones at their defaults), so one run lists every problem.
    """
    try:
        return (settings := load_settings(name)), run_checks(file_checks(name, settings))
    except ConfigProblems as exc:
        refused = exc
    settings_class = SETTINGS[name]
    cause = refused.__cause__
    fields = (
        {str(e["loc"][0]) for e in cause.errors()} if isinstance(cause, ValidationError) else set()
    )
    defaults = {
        f: settings_class.model_fields[f].get_default(call_default_factory=True)
        for f in fields
        if f in settings_class.model_fields
    }
    try:
        rest = settings_class(**defaults)
    except ValidationError:  # a rule over several settings: nothing more to learn
        return None, refused.problems
    return None, refused.problems + run_checks(file_checks(name, rest))


def refuse(name: str, problems: list[str]) -> NoReturn:
    """Print `problems` to stderr, one per line, and exit with `CONFIG_EXIT`."""
    lines = list(dict.fromkeys(problems))  # a file two checks read: said once
    print(f"{name}: the configuration has {len(lines)} problem(s):", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    sys.exit(CONFIG_EXIT)


def checked(name: str, build: Callable[[Any], Any]) -> tuple[CommonSettings, Any]:
    """Check service `name`'s configuration, then `build(settings)` (its app); exit with
    `CONFIG_EXIT` and one line per problem if either finds the configuration wrong.

    `build` is the service's `create_app`: it connects to nothing (the runtime starts
    in the app's lifespan), so what it refuses is configuration too.
    """
    settings, problems = check_service(name)
    if settings is None or problems:
        refuse(name, problems)
    try:
        return settings, build(settings)
    except CONFIG_ERRORS as exc:
        refuse(name, problem_lines(exc))
