"""Who may write and read each topic: the table the broker's ACLs are made from.

Writes come from the catalog (`EventType.producers`): a service may write a topic only
if it publishes a type of that topic, plus its own liveness marker
(`_incidents.alive.<service>`, see `services.infra.kafka.BrokerWatch`). Reads are the
topics each service subscribes to (a unit test checks them against the apps). Registered
systems write `incident.inbound` and read `incident.inbound.results`, nothing else.
`acl_script` renders them as `kafka-acls.sh` commands (`deploy/kafka/acls.sh`, which
`python -m tests.unit.test_broker_security` writes and that test checks). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.domain.events import CATALOG, SERVICES, Topic

READS: dict[str, tuple[Topic, ...]] = {
    "intake": (Topic.INBOUND, Topic.TRIAGE, Topic.ESCALATIONS, Topic.ACTIVITY),
    "triage": (Topic.DIRECTORY, Topic.REPORTS, Topic.ACTIVITY),
    "escalation": (Topic.TRIAGE, Topic.ACTIVITY, Topic.REPORTS, Topic.DIRECTORY),
    "audit": tuple(t for t in Topic if t is not Topic.INBOUND),
}
"""The topics each service consumes (its consumer loops and faust agents)."""
GROUP_PREFIXES: dict[str, str] = {service: service for service in SERVICES}
"""Each service's consumer groups start with its name (`intake-inbound`, the faust app
`triage`, ...): it may use the groups under that prefix only."""
SYSTEM_WRITES: tuple[Topic, ...] = (Topic.INBOUND,)
SYSTEM_READS: tuple[Topic, ...] = (Topic.INBOUND_RESULTS,)


def writes(service: str) -> tuple[Topic, ...]:
    """The topics `service` publishes to: those of the types the catalog lets it produce."""
    produced = {e.topic for e in CATALOG.values() if service in e.producers}
    return tuple(t for t in Topic if t in produced)


def marker(service: str) -> str:
    """The topic whose presence tells `BrokerWatch` the broker still has its data."""
    return f"_incidents.alive.{service}"


def _topic_acl(principal: str, operations: Iterable[str], topic: str) -> str:
    ops = " ".join(f"--operation {op}" for op in operations)
    return f"--add --allow-principal {principal} {ops} --topic {topic}"


def service_acls(service: str) -> list[str]:
    """`kafka-acls.sh` arguments for one service's principal (`User:<service>`)."""
    principal = f"User:{service}"
    lines = []
    for topic in Topic:  # Describe everywhere: at start it checks that every topic exists
        ops = ["Write"] if topic in writes(service) else []
        ops += ["Read"] if topic in READS[service] else []
        lines.append(_topic_acl(principal, (*ops, "Describe"), str(topic)))
    lines.append(_topic_acl(principal, ("Create", "Write", "Read", "Describe"), marker(service)))
    prefix = GROUP_PREFIXES[service]
    lines.append(
        f"--add --allow-principal {principal} --operation Read --operation Describe"
        f" --group {prefix} --resource-pattern-type prefixed"
    )
    if service in ("triage", "escalation"):  # faust's own topics: `<app id>-...`
        lines.append(
            f"--add --allow-principal {principal} --operation All"
            f" --topic {prefix}- --resource-pattern-type prefixed"
        )
    return lines


def system_acls(principal: str) -> list[str]:
    """`kafka-acls.sh` arguments for a registered system's principal (`User:...`)."""
    lines = [_topic_acl(principal, ("Write", "Describe"), str(t)) for t in SYSTEM_WRITES]
    lines += [_topic_acl(principal, ("Read", "Describe"), str(t)) for t in SYSTEM_READS]
    lines.append(
        f"--add --allow-principal {principal} --operation Read --operation Describe"
        f" --group {principal.removeprefix('User:')}- --resource-pattern-type prefixed"
    )
    return lines


def acl_script() -> str:
    """deploy/kafka/acls.sh: every service's ACLs, and each registered system's from its
    principal given as an argument."""
    head = [
        "#!/bin/sh",
        "# GENERATED from services/domain/topology.py: do not edit; after a change run",
        "#   .venv/bin/python -m tests.unit.test_broker_security",
        "# Grants each service principal (User:<service>, the CN of its client certificate)",
        "# exactly the topics it owns and consumes, and each registered system given as an",
        "# argument (User:system-hris ...) incident.inbound to write and",
        "# incident.inbound.results to read. The broker denies everything else",
        "# (allow.everyone.if.no.acl.found=false). Run with an admin principal:",
        "#   BOOTSTRAP=kafka-1:9092 ADMIN_CONFIG=admin.properties acls.sh User:system-hris",
        "set -eu",
        "acls() {",
        '  kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG" "$@"',
        "}",
    ]
    body = [f"acls {line}" for service in SERVICES for line in service_acls(service)]
    systems = (
        ['for system in "$@"; do']
        + [
            "  acls "
            + line.replace("User:$SYSTEM", '"$system"').replace("$SYSTEM-", '"${system#User:}-"')
            for line in system_acls("User:$SYSTEM")
        ]
        + ["done"]
    )
    return "\n".join([*head, *body, *systems]) + "\n"
