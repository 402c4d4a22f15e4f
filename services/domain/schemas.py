"""The published contract of the events: a JSON Schema per event type and an AsyncAPI map.

Everything here is derived from the envelope (`envelope.py`) and the catalog
(`events.py`), so the published files cannot drift from the code that validates events:
`make schemas` writes `render_all()` to `schemas/`, and a unit test fails when the
committed files differ. Pure: the texts are returned, the CLI writes them.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from services.domain.envelope import (
    _EXTENSION_NAME,
    _TRACEPARENT,
    CLOUDEVENTS_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    SPECVERSION,
    Envelope,
)
from services.domain.events import CATALOG, DIRECTORY_KEY, EventType, Topic
from services.domain.inbound import INBOUND_TYPE, MAX_INBOUND_BYTES, REPORT_SCOPES
from services.domain.reports import ReportRequest

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URL = "https://incidents.example/schemas/"
ASYNCAPI_FILE = "asyncapi.yaml"
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

#: Which service sends to and receives from which topic (SPEC.md, services table).
SERVICE_TOPICS: dict[str, dict[str, tuple[Topic, ...]]] = {
    "intake": {
        "send": (
            Topic.REPORTS,
            Topic.ACTIVITY,
            Topic.DIRECTORY,
            Topic.DEADLETTER,
            Topic.INBOUND_RESULTS,
        ),
        "receive": (Topic.INBOUND,),
    },
    "triage": {
        "send": (Topic.TRIAGE, Topic.ACTIVITY),
        "receive": (Topic.REPORTS, Topic.DIRECTORY),
    },
    "escalation": {
        "send": (Topic.ESCALATIONS, Topic.ACTIVITY),
        "receive": (Topic.TRIAGE, Topic.ACTIVITY),
    },
    "audit": {
        "send": (Topic.CHECKPOINTS,),
        "receive": tuple(Topic),
    },
}

_TOPIC_DESCRIPTIONS: dict[Topic, str] = {
    Topic.INBOUND: (
        "Reports published by registered systems (docs/inbound.md). Each record is one "
        f"`{INBOUND_TYPE}` CloudEvent, structured mode (`content-type: "
        f"{CLOUDEVENTS_CONTENT_TYPE}`) or binary mode (`ce_*` headers, `content-type: "
        f"{JSON_CONTENT_TYPE}`), signed with the system's registered Ed25519 key, at most "
        f"{MAX_INBOUND_BYTES} bytes. Anything else goes to `{Topic.DEADLETTER}`; the sender "
        f"is answered on `{Topic.INBOUND_RESULTS}`."
    ),
    Topic.INBOUND_RESULTS: (
        "Intake's answer to each authenticated inbound event, keyed by the sender's event "
        "id: accepted (with the incident id) or rejected (with the reason)."
    ),
    Topic.REPORTS: "Reports as accepted by intake, their amendments and reporter messages.",
    Topic.TRIAGE: "Triage decisions: severity, escalation chain, exclusions, assignments.",
    Topic.ACTIVITY: "What people and the system did with an incident: who was told, who looked.",
    Topic.ESCALATIONS: "Escalations up the chain, their clearing, and legal reminders.",
    Topic.DIRECTORY: "Changes to the organisation: people, managers and roles.",
    Topic.DEADLETTER: "Rejected input, with the original bytes and the reason.",
    Topic.CHECKPOINTS: "Signed tree heads of the audit ledger.",
}


def schema_file(type_: str) -> str:
    """The file name of an event type's JSON Schema."""
    return f"{type_}.json"


def _described(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with the description of Envelope field `name`, so the two never diverge."""
    description = Envelope.model_fields[name].description
    return {**schema, "description": description} if description else schema


def _types_on(topic: Topic) -> tuple[str, ...]:
    """Event types carried by a topic (the inbound topic carries inbound reports)."""
    if topic is Topic.INBOUND:
        return (INBOUND_TYPE,)
    return tuple(name for name, entry in CATALOG.items() if entry.topic is topic)


def event_schema(entry: EventType) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a whole structured-mode CloudEvent of one type."""
    data = entry.data.model_json_schema()
    # Nested models are referenced as `#/$defs/<Model>`: their definitions must sit at
    # the root of the document that embeds `data`, or the references would not resolve.
    defs = data.pop("$defs", {})
    properties: dict[str, Any] = {
        "specversion": _described("specversion", {"type": "string", "const": SPECVERSION}),
        "id": _described("id", {"type": "string", "format": "uuid"}),
        "source": _described("source", {"type": "string", "minLength": 1}),
        "type": _described("type", {"type": "string", "const": entry.name}),
        "time": _described("time", {"type": "string", "format": "date-time"}),
        "subject": _described("subject", {"type": "string", "minLength": 1, "maxLength": 200}),
        "datacontenttype": _described(
            "datacontenttype", {"type": "string", "const": JSON_CONTENT_TYPE}
        ),
        "data": data,
        "actor": _described(
            "actor",
            {
                "type": "string",
                "maxLength": 200,
                "examples": ["p-chen", "system:triage"],
            },
        ),
        "causationid": _described("causationid", {"type": "string", "format": "uuid"}),
        "correlationid": _described("correlationid", {"type": "string", "format": "uuid"}),
        "traceparent": _described(
            "traceparent", {"type": "string", "pattern": _TRACEPARENT.pattern}
        ),
    }
    return _cloudevent_schema(
        entry.name,
        f"A `{entry.name}` event: a CloudEvents 1.0 event in structured JSON mode, "
        f"published on the Kafka topic `{entry.topic}` with the incident id as key.",
        ["specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data"],
        properties,
        defs,
    )


def _cloudevent_schema(
    name: str,
    description: str,
    required: list[str],
    properties: dict[str, Any],
    defs: dict[str, Any],
) -> dict[str, Any]:
    """The JSON Schema document of one event type (structured mode)."""
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{SCHEMA_BASE_URL}{schema_file(name)}",
        "title": name,
        "description": description,
        "type": "object",
        "required": required,
        "properties": properties,
        # Other systems may add their own extensions, named by the CloudEvents rule.
        "propertyNames": {"pattern": _EXTENSION_NAME.pattern},
        "additionalProperties": {
            "description": "A CloudEvents extension attribute of another system.",
            "type": ["string", "integer", "boolean"],
        },
    }
    if defs:
        schema["$defs"] = defs
    return schema


def inbound_schema() -> dict[str, Any]:
    """JSON Schema of `incident.report.inbound.v1` as a registered system sends it on
    Kafka, in its structured form (docs/inbound.md): `data` is `POST /v1/reports`' body."""
    data = ReportRequest.model_json_schema()
    defs = data.pop("$defs", {})
    properties: dict[str, Any] = {
        "specversion": _described("specversion", {"type": "string", "const": SPECVERSION}),
        "id": {
            "type": "string",
            "format": "uuid",
            "description": "The sender's event id (a UUID): with the system id it derives the"
            " incident id, so a resend opens nothing new. The results topic is keyed by it.",
        },
        "source": _described("source", {"type": "string", "minLength": 1}),
        "type": _described("type", {"type": "string", "const": INBOUND_TYPE}),
        "time": _described("time", {"type": "string", "format": "date-time"}),
        "subject": {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "description": "Optional, the sender's own reference; intake ignores it (it"
            " derives the incident id from the system id and the event id).",
        },
        "datacontenttype": _described(
            "datacontenttype", {"type": "string", "const": JSON_CONTENT_TYPE}
        ),
        "data": data,
        "signingkey": {
            "type": "string",
            "pattern": r"^system:[a-z0-9][a-z0-9-]{0,62}:[0-9a-f]{16}$",
            "description": "The system's registered key: `system:<id>:<first 16 hex of"
            " SHA-256(raw public key)>`. Required on Kafka; optional over HTTP (the"
            " bearer token authenticates).",
        },
        "signature": {
            "type": "string",
            "contentEncoding": "base64",
            "description": "Base64 Ed25519 signature of `incidents-event-signature/v1\\n`"
            " followed by the canonical JSON of this object without `signature`"
            " (docs/event-signing.md). In binary mode, of the structured form rebuilt from"
            " the headers (every attribute a string, `datacontenttype` from content-type).",
        },
        "traceparent": _described(
            "traceparent", {"type": "string", "pattern": _TRACEPARENT.pattern}
        ),
    }
    return _cloudevent_schema(
        INBOUND_TYPE,
        f"A report from a registered system (scopes: {', '.join(REPORT_SCOPES)}): a CloudEvents"
        f" 1.0 event on the Kafka topic `{Topic.INBOUND}` or `POST /v1/events`. `data`"
        " is the body of `POST /v1/reports`: no digest, no field the sender cannot know.",
        ["specversion", "id", "source", "type", "time", "data", "signingkey", "signature"],
        properties,
        defs,
    )


def event_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema of the whole CloudEvent, for every catalog type and the
    inbound contract."""
    schemas = {schema_file(name): event_schema(entry) for name, entry in CATALOG.items()}
    schemas[schema_file(INBOUND_TYPE)] = inbound_schema()
    return schemas


def _inbound_message() -> dict[str, Any]:
    message = _kafka_message(
        INBOUND_TYPE,
        {
            "enum": [CLOUDEVENTS_CONTENT_TYPE, JSON_CONTENT_TYPE],
            "description": f"Structured mode: `{CLOUDEVENTS_CONTENT_TYPE}`, the value"
            f" is the whole event. Binary mode: `{JSON_CONTENT_TYPE}`, the value is"
            " `data` and every other attribute is a `ce_<name>` header.",
        },
        key="The sender's choice (e.g. its case id); intake ignores it.",
    )
    message["headers"]["patternProperties"] = {
        "^ce_[a-z0-9]{1,20}$": {
            "type": "string",
            "description": "Binary mode: one attribute (ce_specversion, ce_id,"
            " ce_source, ce_type, ce_time, ce_signingkey, ce_signature...).",
        }
    }
    message["summary"] = "A report from a registered system (docs/inbound.md)."
    return message


def _message(entry: EventType) -> dict[str, Any]:
    message = _kafka_message(
        entry.name,
        {
            "const": CLOUDEVENTS_CONTENT_TYPE,
            "description": "Structured mode: the record value is the whole event.",
        },
        key=(
            "The sender's event id (`data.event_id`), not the incident id."
            if entry.topic is Topic.INBOUND_RESULTS
            else f"`{DIRECTORY_KEY}` for every directory event, so that they stay in one"
            " order on one partition (a bulk import's chunk names many people)."
            if entry.topic is Topic.DIRECTORY
            else "The incident id (the event's `subject`), so that each "
            "incident's events stay in order on one partition."
        ),
        correlated=True,
        traceparent={
            "type": "string",
            "pattern": _TRACEPARENT.pattern,
            "description": "W3C trace context of the producer.",
        },
    )
    if doc := (entry.data.__doc__ or "").strip():
        message["summary"] = doc
    return message


def _kafka_message(
    name: str, content_type: dict[str, Any], key: str, *, correlated: bool = False, **headers: Any
) -> dict[str, Any]:
    """The AsyncAPI message of event type `name`: its `content-type` header (and other
    `headers`), its payload's schema file, its correlation id if `correlated` (the
    services' events), its Kafka key."""
    message: dict[str, Any] = {
        "name": name,
        "title": name,
        "contentType": CLOUDEVENTS_CONTENT_TYPE,
        "headers": {
            "type": "object",
            "required": ["content-type"],
            "properties": {"content-type": {"type": "string", **content_type}, **headers},
        },
        "payload": {"$ref": f"./{schema_file(name)}"},
    }
    if correlated:
        message["correlationId"] = {
            "description": "The incident's first event id.",
            "location": "$message.payload#/correlationid",
        }
    message["bindings"] = {
        "kafka": {
            "key": {"type": "string", "description": key},
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }
    return message


def _channel(topic: Topic) -> dict[str, Any]:
    return {
        "address": str(topic),
        "title": str(topic),
        "description": _TOPIC_DESCRIPTIONS[topic],
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in _types_on(topic)},
        "bindings": {"kafka": {"topic": str(topic), "bindingVersion": KAFKA_BINDING_VERSION}},
    }


def _operations() -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for service, actions in SERVICE_TOPICS.items():
        for action, topics in actions.items():
            verb = "produces to" if action == "send" else "consumes"
            for topic in topics:
                operations[f"{service}.{action}.{topic}"] = {
                    "action": action,
                    "title": f"{service} {verb} {topic}",
                    "channel": {"$ref": f"#/channels/{topic}"},
                    "messages": [
                        {"$ref": f"#/channels/{topic}/messages/{name}"} for name in _types_on(topic)
                    ],
                    "tags": [{"name": service}],
                }
    return operations


def asyncapi_document() -> dict[str, Any]:
    """AsyncAPI 3.0.0: one channel per topic, a message per type, who sends and receives."""
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Incidents events",
            "version": "1.0.0",
            "description": (
                "Every fact of the incident workflow is a CloudEvents 1.0 event in "
                "structured JSON mode on Kafka, keyed by incident id. Operations name "
                "the service that sends or receives on each topic; each message's "
                "payload is the JSON Schema published beside this file."
            ),
        },
        "defaultContentType": CLOUDEVENTS_CONTENT_TYPE,
        "servers": {
            "local": {
                "host": DEFAULT_BOOTSTRAP,
                "protocol": "kafka",
                "description": "Default bootstrap (INCIDENTS_KAFKA_BOOTSTRAP).",
            }
        },
        "channels": {str(topic): _channel(topic) for topic in Topic},
        "operations": _operations(),
        "components": {
            "messages": {
                **{name: _message(entry) for name, entry in CATALOG.items()},
                INBOUND_TYPE: _inbound_message(),
            }
        },
    }


def render_all() -> dict[str, str]:
    """File name -> exact text of every published file (deterministic)."""
    files = {
        name: json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, schema in event_schemas().items()
    }
    files[ASYNCAPI_FILE] = yaml.safe_dump(
        asyncapi_document(), sort_keys=False, allow_unicode=True, width=100
    )
    return files
