"""The published event contract: JSON Schemas per type, the AsyncAPI map, `incidents schemas`.

The schemas are checked with an independent validator (`jsonschema`), against events
built by the same code the services use, so a schema that accepts what the services
refuse (or the reverse) is caught here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from services.cli import app
from services.domain.events import CATALOG, ReportSubmitted, Topic, make_event
from services.domain.inbound import INBOUND_TYPE
from services.domain.schemas import (
    ASYNCAPI_FILE,
    SERVICE_TOPICS,
    asyncapi_document,
    event_schemas,
    render_all,
    schema_file,
)

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "schemas"
NOW = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
INCIDENT = "inc-0001"
DIGEST = "sha256:" + "ab" * 32

# One valid `data` per catalog type: the examples a consumer would start from.
SAMPLES: dict[str, dict[str, Any]] = {
    "incident.report.submitted.v1": {
        "category": "sexual_misconduct",
        "summary": "Store manager assaulted an employee",
        "description": "After closing time on Friday...",
        "occurred_at": "2026-10-30T21:15:00Z",
        "location": "Store 12",
        "unit": "city-retail",
        "accused": ["p-wang"],
        "named": ["a colleague"],
        "reporter": None,
        "channel": "web",
        "report_digest": DIGEST,
    },
    "incident.report.amended.v1": {"accused_added": ["p-li"], "report_digest": DIGEST},
    "incident.reporter.message.v1": {
        "direction": "from_reporter",
        "author": "reporter",
        "text": "Any news?",
    },
    "incident.attachment.added.v1": {
        "attachment_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
        "digest": "sha256:" + "ab" * 32,
        "size": 5242880,
        "media_type": "application/pdf",
        "name": "enc:v1:c2VhbGVk",
        "author": "reporter",
    },
    "incident.attachment.downloaded.v1": {
        "principal": "p-chen",
        "attachment_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
    },
    "incident.triaged.v1": {
        "category": "sexual_misconduct",
        "severity": "critical",
        "policy_version": "2026-11-01",
        "chain": [
            {
                "level": 1,
                "role": "hr_case_handler",
                "recipients": ["p-ma"],
                "acknowledge_within": 3600,
            }
        ],
        "excluded": [{"principal": "p-chen", "rule": "accused_management_chain"}],
        "deadlines": {"1": "2026-11-01T10:30:00Z"},
    },
    "incident.assigned.v1": {"level": 1, "principals": ["p-ma"]},
    "incident.reassigned.v1": {
        "removed": [{"principal": "p-ma", "rule": "named_in_report"}],
        "added": ["p-zhou"],
    },
    "incident.recused.v1": {"principal": "p-chen", "reason": None},
    "incident.reassignment.ordered.v1": {
        "principal": "p-sun",
        "to": ["p-ma"],
        "remove": ["p-chen"],
        "reason": "enc:v1:AAAA",
    },
    "incident.people.confirmed.v1": {
        "principal": "p-sun",
        "accused": ["p-wang"],
        "named": [],
        "outsiders": 1,
        "note": None,
    },
    "incident.notified.v1": {
        "principal": "p-ma",
        "channel": "email",
        "level": 1,
        "report_digest": DIGEST,
    },
    "incident.viewed.v1": {"principal": "p-ma", "report_digest": DIGEST},
    "incident.acknowledged.v1": {"principal": "p-ma", "level": 1},
    "incident.commented.v1": {"principal": "p-ma", "text": "Interview scheduled."},
    "incident.status.changed.v1": {"principal": "p-ma", "status": "investigating"},
    "incident.access.denied.v1": {"principal": "p-li", "action": "view", "reason": "excluded"},
    "incident.identity.disclosed.v1": {"principal": "p-custos", "reason": "enc:v1:AAAA"},
    "incident.legal_hold.placed.v1": {"principal": "p-audit", "reason": "enc:v1:AAAA"},
    "incident.legal_hold.released.v1": {"principal": "p-audit", "reason": "enc:v1:AAAA"},
    "incident.erased.v1": {
        "reason": "retention_expired",
        "category": "harassment",
        "closed_at": "2021-11-01T09:00:00Z",
        "retain_until": "2026-10-31T09:00:00Z",
    },
    "incident.decision.overdue.v1": {
        "submitted_at": "2026-11-01T09:00:00Z",
        "due_at": "2026-11-01T09:05:00Z",
    },
    "incident.escalated.v1": {
        "level": 2,
        "recipients": ["p-zhou"],
        "reason": "not_acknowledged",
        "deadline": "2026-11-01T12:30:00Z",
    },
    "incident.escalation.cleared.v1": {"level": 2, "principal": "p-zhou"},
    "incident.reminder.due.v1": {
        "clock": "reporter_acknowledgement",
        "due_at": "2026-11-08T09:30:00Z",
    },
    "incident.deadline.breached.v1": {
        "clock": "reporter_acknowledgement",
        "due_at": "2026-11-08T09:30:00Z",
    },
    "incident.escalation.stalled.v1": {
        "level": 5,
        "reason": "nobody_eligible",
        "roles_tried": ["hr_case_handler", "hr_head"],
        "repeat_every": 86400,
    },
    "incident.acknowledgement.ignored.v1": {"principal": "p-li", "level": 2, "reason": "excluded"},
    "incident.notice.delivered.v1": {
        "notice_id": "0b3f6a52-8d1e-4c55-9a63-2f1b6c7d8e90",
        "principal": "p-ma",
        "level": 1,
        "channel": "triage",
        "adapter": "webhook",
        "attempts": 1,
    },
    "incident.notice.failed.v1": {
        "notice_id": "0b3f6a52-8d1e-4c55-9a63-2f1b6c7d8e90",
        "principal": "p-ma",
        "level": 1,
        "channel": "triage",
        "adapter": "webhook",
        "attempts": 1,
        "reason": "refused",
        "detail": "HTTP 400",
    },
    "directory.person.upserted.v1": {
        "person_id": "p-ma",
        "name": "Ma Lin",
        "unit": "group",
        "manager_id": "p-zhou",
        "roles": ["hr_case_handler"],
    },
    "directory.people.imported.v1": {
        "people": [
            {"person_id": "p-ma", "name": "Ma Lin", "unit": "group", "manager_id": "p-zhou"},
            {"person_id": "p-zhou", "name": "Zhou Wei", "email": "zhou@example.com"},
        ]
    },
    "directory.role.assigned.v1": {"person_id": "p-ma", "role": "hr_head"},
    "directory.role.revoked.v1": {"person_id": "p-ma", "role": "hr_head"},
    "directory.role.proposed.v1": {
        "grant_id": "g-0123456789abcdef",
        "person_id": "p-ma",
        "role": "auditor",
        "proposed_by": "p-admin",
    },
    "audit.read.recorded.v1": {
        "principal": "p-audit",
        "route": "entries",
        "start": 0,
        "end": 1000,
        "withheld": ["7c9e6679-7425-40de-944b-e07fc1f90ae7"],
    },
    "incident.inbound.accepted.v1": {
        "event_id": "0b6f8a47-3f0e-4a53-9d0e-1c2a3b4c5d6e",
        "system": "hris",
        "incident_id": "c4107746-4877-5a31-b444-10a8b947dd59",
    },
    "incident.inbound.rejected.v1": {
        "event_id": "0b6f8a47-3f0e-4a53-9d0e-1c2a3b4c5d6e",
        "system": "hris",
        "reason": "system 'hris' lacks the 'report_for_person' scope for this report",
    },
    "incident.input.rejected.v1": {
        "reason": "not JSON",
        "source_topic": "incident.inbound",
        "source_partition": 0,
        "source_offset": 42,
        "original_b64": "bm90IGpzb24=",
    },
    "audit.checkpoint.signed.v1": {
        "tree_size": 7,
        "root_hash": "cd" * 32,
        "timestamp": "2026-11-01T09:30:00Z",
        "key_id": "k1",
        "checkpoint": "incidents.example/ledger\n7\nzd==\n",
    },
    "audit.checkpoint.cosigned.v1": {
        "tree_size": 7,
        "root_hash": "cd" * 32,
        "witness": (
            "incidents.example/witness+cd28c5fd+BNVOKfj/BrJFtwHMmYpmk45+n8lAr9NV+9bzKdNBpAYN"
        ),
        "timestamp": "2026-11-01T09:30:01Z",
        "checkpoint": "incidents.example/ledger\n7\nzd==\n",
    },
}


def validator(type_: str) -> Draft202012Validator:
    schema = event_schemas()[schema_file(type_)]
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def event_dict(type_: str) -> dict[str, Any]:
    """A valid event of `type_`, as the services would publish it (JSON-ready)."""
    return make_event(
        type_,
        subject=INCIDENT,
        data=SAMPLES[type_],
        source="/services/test",
        time=NOW,
        actor="system:test",
        causationid="0f8fad5b-d9cb-469f-a165-70867728950e",
        correlationid="7c9e6679-7425-40de-944b-e07fc1f90ae7",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ).to_dict()


def errors_of(type_: str, event: dict[str, Any]) -> list[str]:
    return [error.message for error in validator(type_).iter_errors(event)]


def test_the_committed_schemas_folder_is_what_the_code_renders() -> None:
    committed = {
        path.name: path.read_text(encoding="utf-8")
        for path in sorted(PUBLISHED.glob("*"))
        if path.suffix in {".json", ".yaml"}
    }
    wanted = render_all()
    stale = sorted(
        name for name in committed.keys() | wanted.keys() if committed.get(name) != wanted.get(name)
    )
    assert not stale, f"schemas/ is stale ({', '.join(stale)}): run `make schemas`"


def test_rendering_is_deterministic() -> None:
    assert render_all() == render_all()


def test_every_catalog_type_has_a_schema_and_a_sample() -> None:
    assert set(event_schemas()) == {schema_file(name) for name in [*CATALOG, INBOUND_TYPE]}
    assert set(SAMPLES) == set(CATALOG)


@pytest.mark.parametrize("type_", sorted(CATALOG))
def test_each_schema_is_valid_draft_2020_12_with_an_id(type_: str) -> None:
    schema = event_schemas()[schema_file(type_)]
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == f"https://incidents.example/schemas/{type_}.json"
    assert schema["properties"]["type"]["const"] == type_


@pytest.mark.parametrize("type_", sorted(CATALOG))
def test_an_event_the_services_build_is_valid_against_its_published_schema(type_: str) -> None:
    assert errors_of(type_, event_dict(type_)) == []


def test_nested_models_resolve_through_root_definitions() -> None:
    event = event_dict("incident.triaged.v1")
    event["data"]["chain"][0]["level"] = 0
    assert any("minimum" in message for message in errors_of("incident.triaged.v1", event))


def test_an_event_without_a_subject_is_invalid() -> None:
    event = event_dict(ReportSubmitted.TYPE)
    del event["subject"]
    assert errors_of(ReportSubmitted.TYPE, event) == ["'subject' is a required property"]


def test_an_event_of_another_type_does_not_pass_the_schema() -> None:
    event = event_dict(ReportSubmitted.TYPE)
    event["type"] = "incident.viewed.v1"
    assert any("incident.report.submitted.v1" in m for m in errors_of(ReportSubmitted.TYPE, event))


def test_an_event_id_that_is_not_a_uuid_is_invalid() -> None:
    event = event_dict(ReportSubmitted.TYPE)
    event["id"] = "not-a-uuid"
    assert any("uuid" in message for message in errors_of(ReportSubmitted.TYPE, event))


def test_unknown_data_fields_are_invalid_as_in_the_catalog() -> None:
    event = event_dict("incident.viewed.v1")
    event["data"]["secret"] = "x"
    assert errors_of("incident.viewed.v1", event)


def test_extensions_of_other_systems_follow_the_cloudevents_naming_rule() -> None:
    event = event_dict(ReportSubmitted.TYPE)
    assert errors_of(ReportSubmitted.TYPE, {**event, "tenant": "acme"}) == []
    assert errors_of(ReportSubmitted.TYPE, {**event, "Tenant-Id": "acme"})


def test_the_asyncapi_document_has_every_topic_as_a_channel() -> None:
    channels = asyncapi_document()["channels"]
    assert {channel["address"] for channel in channels.values()} == {str(t) for t in Topic}


def test_the_asyncapi_document_has_a_message_per_type_with_its_schema_file() -> None:
    doc = asyncapi_document()
    messages = doc["components"]["messages"]
    assert set(messages) == set(CATALOG) | {INBOUND_TYPE}
    for name, message in messages.items():
        assert message["contentType"] == "application/cloudevents+json"
        assert message["payload"] == {"$ref": f"./{name}.json"}
        if name in CATALOG:
            directory = CATALOG[name].topic is Topic.DIRECTORY
            key = "`directory` for every directory event" if directory else "incident id"
            assert key in message["bindings"]["kafka"]["key"]["description"]
            assert set(message["headers"]["properties"]) == {"content-type", "traceparent"}
    for name, entry in CATALOG.items():
        assert name in doc["channels"][str(entry.topic)]["messages"]
    assert list(doc["channels"][str(Topic.INBOUND)]["messages"]) == [INBOUND_TYPE]


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_local_reference_of_the_asyncapi_document_resolves() -> None:
    doc = asyncapi_document()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        assert _resolve(doc, ref) is not None


def test_the_asyncapi_operations_name_who_produces_and_consumes_each_topic() -> None:
    operations = asyncapi_document()["operations"].values()
    done = {
        (op["tags"][0]["name"], op["action"], op["channel"]["$ref"].rsplit("/", 1)[1])
        for op in operations
    }
    assert ("intake", "send", "incident.reports") in done
    assert ("intake", "receive", "incident.inbound") in done
    assert ("triage", "receive", "directory.changes") in done
    assert ("escalation", "send", "incident.escalations") in done
    assert {(s, a, t) for s, a, t in done if s == "audit" and a == "receive"} == {
        ("audit", "receive", str(topic)) for topic in Topic
    }
    producers = {t for _, a, t in done if a == "send"}
    assert producers == {str(t) for t in Topic} - {str(Topic.INBOUND)}
    assert sum(len(topics) for acts in SERVICE_TOPICS.values() for topics in acts.values()) == len(
        done
    )


def test_the_asyncapi_file_is_yaml_of_version_3() -> None:
    loaded = yaml.safe_load(render_all()[ASYNCAPI_FILE])
    assert loaded == json.loads(json.dumps(asyncapi_document()))
    assert loaded["asyncapi"] == "3.0.0"


def test_the_schemas_command_writes_checks_and_prunes_the_folder(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "schemas"
    (out).mkdir()
    (out / "incident.gone.v1.json").write_text("{}\n")

    written = runner.invoke(app, ["schemas", "--out", str(out)])
    assert written.exit_code == 0, written.output
    assert {p.name for p in out.iterdir()} == set(render_all())

    assert runner.invoke(app, ["schemas", "--out", str(out), "--check"]).exit_code == 0

    (out / "incident.viewed.v1.json").write_text("{}\n")
    (out / "asyncapi.yaml").unlink()
    (out / "extra.json").write_text("{}\n")
    checked = runner.invoke(app, ["schemas", "--out", str(out), "--check"])
    assert checked.exit_code == 1
    assert "differs" in checked.output and "incident.viewed.v1.json" in checked.output
    assert "missing" in checked.output and "asyncapi.yaml" in checked.output
    assert "extra" in checked.output and "extra.json" in checked.output
    assert (out / "extra.json").exists(), "--check writes nothing"
