"""The docs site lists what the code has: every setting and every event type.

Two tables in docs/ are generated from the code, between `<!-- generated:NAME -->` and
`<!-- /generated:NAME -->` markers: the configuration reference (from the settings
classes' field descriptions) and the event table (from the event catalog). The tests
fail when a setting or an event type is missing from its table, or when a table names
one the code no longer has. To rewrite both tables from the code:

    .venv/bin/python -m tests.unit.test_docs

The inbound example of docs/events.md must be an event intake accepts, with the
incident id it documents. (The link check is `make docs`: mkdocs --strict fails on a
link to a missing page or anchor.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from services.domain.events import CATALOG
from services.domain.inbound import incident_id_for, report_of
from services.infra.settings import (
    AuditSettings,
    CommonSettings,
    ContentKeySettings,
    EscalationSettings,
    IntakeSettings,
    PseudonymSettings,
    TriageSettings,
)
from services.infra.systems import load_systems
from services.witness.config import WitnessSettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
EVENTS = DOCS / "events.md"
_DATA = ROOT / "services" / "data"

# (heading, settings class, fields of that class to list, who reads them)
_BASES: tuple[type[BaseSettings], ...] = (CommonSettings, PseudonymSettings, ContentKeySettings)
SECTIONS: list[tuple[str, type[BaseSettings], str]] = [
    ("Every service", CommonSettings, "every service"),
    ("Reporter pseudonyms", PseudonymSettings, "intake, triage"),
    ("Content keys", ContentKeySettings, "intake, audit"),
    ("Intake", IntakeSettings, "intake"),
    ("Triage", TriageSettings, "triage"),
    ("Escalation", EscalationSettings, "escalation"),
    ("Audit", AuditSettings, "audit"),
    ("Witness (`incidents witness`)", WitnessSettings, "the witness"),
]


def _own_fields(cls: type[BaseSettings]) -> dict[str, FieldInfo]:
    """The fields a class adds to its settings bases (each setting is listed once)."""
    inherited: set[str] = set()
    for base in _BASES:
        if base is not cls and issubclass(cls, base):
            inherited |= set(base.model_fields)
    return {n: f for n, f in cls.model_fields.items() if n not in inherited}


def env_name(cls: type[BaseSettings], name: str, field: FieldInfo) -> str:
    """The environment variable a field is read from."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        if isinstance(first, str):
            return first
    prefix = str(cls.model_config.get("env_prefix", ""))
    return (prefix + name).upper()


def _default(value: Any) -> str:
    if value is None or isinstance(value, SecretStr):
        return "(unset)"
    if isinstance(value, Path):
        if value.is_relative_to(_DATA):
            return f"`services/data/{value.relative_to(_DATA).as_posix()}`"
        if value.is_relative_to(Path.home()):
            return f"`~/{value.relative_to(Path.home()).as_posix()}`"
        return f"`{value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list | set | frozenset):
        items = sorted(map(str, value)) if isinstance(value, set | frozenset) else value
        return f"`{','.join(str(v) for v in items)}`" if value else "(empty)"
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if value == "":
        return "(empty)"
    return f"`{value}`"


def settings_tables() -> str:
    """The configuration reference, one table per settings class."""
    parts = []
    for heading, cls, readers in SECTIONS:
        fields = _own_fields(cls)
        if not fields:
            continue
        rows = [
            f"### {heading}",
            "",
            f"Read by {readers}.",
            "",
            "| variable | default | description |",
            "|---|---|---|",
        ]
        for name, field in fields.items():
            description = " ".join((field.description or "").split()).replace("|", "\\|")
            default = _default(field.get_default(call_default_factory=True))
            rows.append(f"| `{env_name(cls, name, field)}` | {default} | {description} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def event_table() -> str:
    """One row per event type of the catalog: its topic and what it says."""
    rows = ["| type | topic | signed by | `data` fields (optional ones end in ?) | what it says |"]
    rows.append("|---|---|---|---|---|")
    for name, entry in CATALOG.items():
        doc = " ".join((entry.data.__doc__ or "").strip().split("\n\n")[0].split())
        fields = ", ".join(
            f"{f}{'' if info.is_required() else '?'}" for f, info in entry.data.model_fields.items()
        )
        producers = ", ".join(sorted(entry.producers)) or "another system (unsigned)"
        rows.append(
            f"| `{name}` | `{entry.topic.value}` | {producers} | {fields} |"
            f" {doc.replace('|', '/')} |"
        )
    return "\n".join(rows)


def _block(text: str, name: str) -> str:
    match = re.search(
        rf"<!-- generated:{name} -->\n(.*?)<!-- /generated:{name} -->", text, re.DOTALL
    )
    assert match, f"no <!-- generated:{name} --> block"
    return match.group(1)


def _replace_block(path: Path, name: str, body: str) -> None:
    start, end = f"<!-- generated:{name} -->\n", f"<!-- /generated:{name} -->"
    text = path.read_text()
    old = start + _block(text, name) + end
    path.write_text(text.replace(old, start + body + "\n" + end, 1))


def _backticked(text: str, pattern: str) -> set[str]:
    return set(re.findall(rf"`({pattern})`", text))


def test_the_configuration_reference_lists_every_setting_and_no_other() -> None:
    listed = _backticked(_block(CONFIGURATION.read_text(), "settings"), r"INCIDENTS_[A-Z0-9_]+")
    wanted = {
        env_name(cls, name, field)
        for _, cls, _ in SECTIONS
        for name, field in _own_fields(cls).items()
    }
    assert wanted - listed == set(), "missing: run `python -m tests.unit.test_docs`"
    assert listed - wanted == set(), "gone from the code: run `python -m tests.unit.test_docs`"


def test_the_event_table_lists_every_event_type_and_no_other() -> None:
    listed = _backticked(_block(EVENTS.read_text(), "events"), r"[a-z_]+(?:\.[a-z_]+)+\.v\d+")
    assert listed == set(CATALOG), "stale event table: run `python -m tests.unit.test_docs`"


def test_the_inbound_example_is_an_event_intake_accepts() -> None:
    text = EVENTS.read_text()
    section = text[text.index("## Publishing a report") :]
    example = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert example, "no JSON example in the inbound section"
    event = json.loads(example.group(1))
    envelope, _ = report_of(event)  # the inbound type, validated as POST /v1/reports
    system = load_systems(_DATA / "systems.yaml").signer_of(event)  # the demo key signed it
    incident_id = incident_id_for(system.id, envelope.id)
    assert incident_id in section, "the documented incident id is not the derived one"


def test_the_shell_signing_example_signs_what_intake_verifies(tmp_path: Path) -> None:
    if not (shutil.which("jq") and shutil.which("openssl") and shutil.which("xxd")):
        pytest.skip("jq, openssl and xxd are needed")
    text = (ROOT / "docs" / "inbound.md").read_text()
    recipe = re.search(r"```sh\n(# the demo key.*?)```", text, re.DOTALL)
    assert recipe, "no signing example in docs/inbound.md"
    script = recipe.group(1).replace("docs/examples/", f"{ROOT}/docs/examples/")
    subprocess.run(["sh", "-c", script], cwd=tmp_path, check=True, timeout=30)
    event = json.loads((tmp_path / "signed.json").read_text())
    assert load_systems(_DATA / "systems.yaml").signer_of(event).id == "hris"
    report_of(event)


def test_every_setting_has_a_description() -> None:
    for _, cls, _ in SECTIONS:
        for name, field in _own_fields(cls).items():
            assert field.description, f"{cls.__name__}.{name} has no description"


if __name__ == "__main__":
    _replace_block(CONFIGURATION, "settings", settings_tables())
    _replace_block(EVENTS, "events", event_table())
    print(f"rewrote the generated tables of {CONFIGURATION.name} and {EVENTS.name}")
