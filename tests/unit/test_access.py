"""The handler access rules and the status workflow, as tables."""

from __future__ import annotations

import pytest

from services.domain.access import (
    ACTIONS,
    Allowed,
    Refused,
    Routing,
    RoutingRow,
    decide,
    status_change_refusal,
)

ROUTING = Routing.from_rows(
    [
        RoutingRow("p-chen", level=1, routed=True),
        RoutingRow("p-zhou", level=2, routed=True),
        RoutingRow("p-wang", level=None, routed=False, excluded_rule="accused"),
        # routed by mistake (or by a record that arrived before the exclusion): excluded wins
        RoutingRow("p-li", level=1, routed=True, excluded_rule="accused_management_chain"),
        # removed by a reassignment: no longer routed, and excluded
        RoutingRow("p-ma", level=1, routed=False, excluded_rule="reassigned"),
        # an auditor who is also conflicted
        RoutingRow("p-audit2", level=None, routed=False, excluded_rule="named_in_report"),
    ]
)
AUDITOR = frozenset({"auditor"})
NONE: frozenset[str] = frozenset()

# principal, roles, action -> expected: ("allowed", via, level) or ("refused", reason, rule)
TABLE = [
    *[("p-chen", NONE, a, ("allowed", "routed", 1)) for a in ACTIONS],
    *[("p-zhou", frozenset({"hr_head"}), a, ("allowed", "routed", 2)) for a in ACTIONS],
    # a routed auditor is a routed principal: may do everything
    *[("p-zhou", AUDITOR, a, ("allowed", "routed", 2)) for a in ACTIONS],
    *[("p-wang", NONE, a, ("refused", "excluded", "accused")) for a in ACTIONS],
    *[
        (
            "p-li",
            frozenset({"unit_president"}),
            a,
            ("refused", "excluded", "accused_management_chain"),
        )
        for a in ACTIONS
    ],
    *[("p-ma", NONE, a, ("refused", "excluded", "reassigned")) for a in ACTIONS],
    *[("p-audit2", AUDITOR, a, ("refused", "excluded", "named_in_report")) for a in ACTIONS],
    ("p-audit", AUDITOR, "view", ("allowed", "standing_role", None)),
    *[("p-audit", AUDITOR, a, ("refused", "read_only", None)) for a in ACTIONS if a != "view"],
    *[("p-liu", frozenset({"employee"}), a, ("refused", "not_routed", None)) for a in ACTIONS],
    *[("system:hris", NONE, a, ("refused", "not_routed", None)) for a in ACTIONS],
    # a role held elsewhere gives no access by itself (only standing read roles do)
    *[
        ("p-ma2", frozenset({"hr_case_handler", "admin"}), a, ("refused", "not_routed", None))
        for a in ACTIONS
    ],
]


@pytest.mark.parametrize(("principal", "roles", "action", "expected"), TABLE)
def test_access_rules(
    principal: str, roles: frozenset[str], action: str, expected: tuple[str, str, object]
) -> None:
    verdict = decide(ROUTING, principal, roles, action)  # type: ignore[arg-type]
    kind, how, extra = expected
    if kind == "allowed":
        assert verdict == Allowed(action, how, extra)  # type: ignore[arg-type]
    else:
        assert verdict == Refused(action, how, extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("refusal", "detail", "conceals"),
    [
        (Refused("view", "excluded", "accused"), "excluded:accused", True),
        (Refused("acknowledge", "excluded", "accused"), "excluded:accused", True),
        (Refused("view", "not_routed"), "not_routed", True),
        (Refused("acknowledge", "not_routed"), "not_routed", False),
        (Refused("comment", "read_only"), "read_only", False),
    ],
)
def test_a_refusal_says_how_it_is_recorded_and_whether_it_hides_the_incident(
    refusal: Refused, detail: str, conceals: bool
) -> None:
    assert (refusal.detail, refusal.conceals) == (detail, conceals)


def test_an_unknown_action_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown action"):
        decide(ROUTING, "p-chen", NONE, "delete")  # type: ignore[arg-type]


def test_nobody_routed_means_only_standing_readers_may_view() -> None:
    empty = Routing.from_rows([])
    assert isinstance(decide(empty, "p-audit", AUDITOR, "view"), Allowed)
    assert isinstance(decide(empty, "p-chen", NONE, "view"), Refused)


@pytest.mark.parametrize(
    ("current", "new", "acknowledged", "outcome", "refused"),
    [
        ("submitted", "investigating", False, None, "acknowledged before"),
        ("acknowledged", "investigating", True, None, None),
        ("acknowledged", "resolved", True, None, None),
        ("acknowledged", "closed", True, "unfounded", None),
        ("acknowledged", "closed", True, None, "requires an outcome"),
        ("acknowledged", "closed", True, "  ", "requires an outcome"),
        ("investigating", "investigating", True, None, "already investigating"),
        ("investigating", "resolved", True, None, None),
        ("investigating", "closed", True, "disciplinary action", None),
        ("resolved", "investigating", True, None, None),  # reopened
        ("resolved", "closed", True, "done", None),
        ("closed", "investigating", True, None, "cannot go from closed to investigating"),
        ("closed", "resolved", True, None, "cannot go from closed to resolved"),
        ("closed", "closed", True, "again", "already closed"),
    ],
)
def test_status_workflow(
    current: str, new: str, acknowledged: bool, outcome: str | None, refused: str | None
) -> None:
    answer = status_change_refusal(current, new, acknowledged=acknowledged, outcome=outcome)
    if refused is None:
        assert answer is None
    else:
        assert answer is not None and refused in answer


# Exclusions known at once (before triage decides): triage's own rules ---------------


def test_exclusions_known_at_once_are_triages_exclusions() -> None:
    from datetime import UTC, datetime
    from pathlib import Path

    import services
    from services.domain.access import CONFLICT, conflicted, implicated
    from services.domain.directory import DirectoryFile
    from services.domain.envelope import Envelope
    from services.domain.org import OrgSnapshot
    from services.domain.policy import Policy
    from services.domain.triage import decide as triage
    from services.infra.config import load_yaml_model

    data = Path(services.__file__).parent / "data"
    org = OrgSnapshot.from_directory(load_yaml_model(data / "directory.yaml", DirectoryFile))
    policy = load_yaml_model(data / "policy.yaml", Policy)
    submitted = Envelope.model_validate(
        {
            "id": "0b8f7c2e-6f0a-4a59-9a43-0f3c1c3b2a11",
            "source": "test",
            "type": "incident.report.submitted.v1",
            "subject": "i1",
            "time": "2026-11-02T09:00:00Z",
            "data": {
                "category": "sexual_misconduct",
                "summary": "s",
                "description": "d",
                "accused": ["p-wang", "enc:v1:not-a-person"],
                "named": ["p-audit"],
                "report_digest": "sha256:" + "0" * 64,
            },
        }
    )
    amended = submitted.model_copy(
        update={
            "id": "0b8f7c2e-6f0a-4a59-9a43-0f3c1c3b2a12",
            "type": "incident.report.amended.v1",
            "data": {"accused_added": ["p-chen"], "report_digest": "sha256:" + "1" * 64},
        }
    )
    found = implicated([submitted, amended])
    assert found.accused == ("p-wang", "p-chen") and found.named == ("p-audit",)
    at_once = conflicted(found, "p-liu", org, policy)
    from services.domain.events import ReportSubmitted

    report = ReportSubmitted.model_validate(
        {**submitted.data, "accused": list(found.accused), "named": list(found.named)}
    )
    decided = triage(report, org, policy, datetime.now(UTC), reporter_person="p-liu")
    assert set(at_once) == decided.excluded_ids  # managers too, independent roles not
    assert {"p-wang", "p-chen", "p-li", "p-audit", "p-liu"} <= set(at_once)
    assert set(at_once.values()) == {CONFLICT}
    routing = ROUTING.excluding(at_once)
    assert routing.excluded["p-wang"] == "accused"  # a rule already recorded is kept
    assert decide(routing, "p-audit", AUDITOR, "view") == Refused("view", "excluded", CONFLICT)
