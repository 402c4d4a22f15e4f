"""Loading the YAML configuration files with errors that name file, line and field.

The models live in `services/domain`; this module only reads files and points at the
offending line when validation fails, so start-up stops with a message a person can act on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def state_dir() -> Path:
    """This machine's state folder (`incidents up`'s lock and keys, the verifier's trusted
    heads): `$INCIDENTS_STATE_DIR`, else `~/.incidents`."""
    configured = os.environ.get("INCIDENTS_STATE_DIR")
    return Path(configured) if configured else Path.home() / ".incidents"


class ConfigError(ValueError):
    """A configuration file is missing or invalid; the message names file, line and field,
    one line per problem."""


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    current = node
    line = current.start_mark.line + 1 if current is not None else None
    for part in loc:
        if isinstance(current, yaml.MappingNode):
            nxt = next((v for k, v in current.value if k.value == part), None)
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int):
            nxt = current.value[part] if part < len(current.value) else None
        else:
            nxt = None
        if nxt is None:
            break
        current = nxt
        line = current.start_mark.line + 1
    return line


_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""LibYAML's safe loader when PyYAML has it: a 20,000-person directory file parses in
a fraction of the pure-Python loader's time (docs/directory-sync.md)."""


def load_yaml_model(path: Path, model: type[M]) -> M:
    """Read `path` and validate it as `model`, or raise ConfigError naming file:line and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    try:
        return model.model_validate(data or {})
    except ValidationError as exc:
        # The line numbers need the node tree: composed only for a file that is refused.
        node = yaml.compose(text, Loader=_LOADER)
        raise ConfigError("\n".join(_problems(path, node, exc))) from exc


def _problems(path: Path, node: yaml.Node | None, exc: ValidationError) -> list[str]:
    """One line per invalid field, each naming file:line and the field (at most 20)."""
    lines = []
    for error in exc.errors()[:20]:
        loc = tuple(error["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(node, loc)
        where = f"{path}:{line}" if line else str(path)
        lines.append(f"{where}: field {field}: {error['msg']}")
    if exc.error_count() > 20:
        lines.append(f"{path}: and {exc.error_count() - 20} more")
    return lines
