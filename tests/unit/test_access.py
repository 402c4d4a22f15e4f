"""The handler access rules and the status workflow, as tables."""

from __future__ import annotations

import pytest

from services.domain.access import (
    ACTIONS,
    READ_ACTIONS,
    Allowed,
    Implicated,
    Refused,
    Roles,
    Routing,
    RoutingRow,
    answers_to_accused,
    conflict_unresolved,
    conflicted,
    decide,
    implicated,
    reassignment_refusals,
    roles_of,
    status_change_refusal,
)
from services.domain.envelope import Envelope
from services.domain.org import OrgSnapshot
from services.domain.policy import Policy

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
HANDLING = tuple(a for a in ACTIONS if a not in ("recuse", "reassign", "confirm_people"))
"""What a routed handler does with an incident (the conflict actions are tested below)."""
NONE: frozenset[str] = frozenset()

# principal, roles, action -> expected: ("allowed", via, level) or ("refused", reason, rule)
TABLE = [
    *[("p-chen", NONE, a, ("allowed", "routed", 1)) for a in HANDLING],
    *[("p-zhou", frozenset({"hr_head"}), a, ("allowed", "routed", 2)) for a in HANDLING],
    # a routed auditor is a routed principal: may do everything
    *[("p-zhou", AUDITOR, a, ("allowed", "routed", 2)) for a in HANDLING],
    *[("p-wang", NONE, a, ("refused", "excluded", "accused")) for a in HANDLING],
    *[
        (
            "p-li",
            frozenset({"unit_president"}),
            a,
            ("refused", "excluded", "accused_management_chain"),
        )
        for a in HANDLING
    ],
    *[("p-ma", NONE, a, ("refused", "excluded", "reassigned")) for a in HANDLING],
    *[("p-audit2", AUDITOR, a, ("refused", "excluded", "named_in_report")) for a in HANDLING],
    *[("p-audit", AUDITOR, a, ("allowed", "standing_role", None)) for a in sorted(READ_ACTIONS)],
    *[
        ("p-audit", AUDITOR, a, ("refused", "read_only", None))
        for a in HANDLING
        if a not in READ_ACTIONS
    ],
    *[("p-liu", frozenset({"employee"}), a, ("refused", "not_routed", None)) for a in HANDLING],
    *[("system:hris", NONE, a, ("refused", "not_routed", None)) for a in HANDLING],
    # a role held elsewhere gives no access by itself (only standing read roles do)
    *[
        ("p-ma2", frozenset({"hr_case_handler", "admin"}), a, ("refused", "not_routed", None))
        for a in HANDLING
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
        assert isinstance(verdict, Refused)
        assert (verdict.action, verdict.reason, verdict.rule) == (action, how, extra)
        # an excluded auditor's write is answered as any auditor's write (403 read_only)
        standing_write = how == "excluded" and "auditor" in roles and action not in READ_ACTIONS
        assert verdict.answered_as == ("read_only" if standing_write else None)


@pytest.mark.parametrize(
    ("refusal", "detail", "conceals"),
    [
        # one recorded reason for every rule: the record never tells the reporter apart
        (Refused("view", "excluded", "accused"), "excluded", True),
        (Refused("acknowledge", "excluded", "reporter"), "excluded", True),
        (Refused("view", "not_routed"), "not_routed", True),
        # an unrelated caller's write is answered like an unknown id too
        (Refused("acknowledge", "not_routed"), "not_routed", True),
        # only a caller who knows of the incident anyway is told "forbidden"
        (Refused("comment", "read_only"), "read_only", False),
        # an excluded standing reader's write: recorded as excluded, answered as any
        # standing reader's write, on a real incident or an unknown id alike
        (Refused("comment", "excluded", "accused", "read_only"), "excluded", False),
        (Refused("reassign", "role_required"), "role_required", False),
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
    assert at_once["p-liu"] == "reporter" and CONFLICT not in at_once.values()
    routing = ROUTING.excluding(at_once)
    assert routing.excluded["p-wang"] == "accused"  # a rule already recorded is kept
    assert decide(routing, "p-audit", AUDITOR, "view") == Refused(
        "view", "excluded", "named_in_report"
    )


# Issue 18: the conflict actions, ambiguous names, people answering to an accused ------

GRANTS = Roles(reassign=frozenset({"chief_ethics_officer"}), independent=frozenset({"ceo_x"}))


@pytest.mark.parametrize(
    ("principal", "roles", "action", "expected"),
    [
        ("p-chen", NONE, "recuse", Allowed("recuse", "routed", 1)),
        ("p-liu", NONE, "recuse", Refused("recuse", "not_routed")),
        ("p-audit", AUDITOR, "recuse", Refused("recuse", "read_only")),
        ("p-wang", NONE, "recuse", Refused("recuse", "excluded", "accused")),
        # a reassigner needs the role, not the routing; an excluded one is refused
        ("p-sun", {"chief_ethics_officer"}, "reassign", Allowed("reassign", "standing_role")),
        ("p-chen", NONE, "reassign", Refused("reassign", "role_required")),
        ("p-liu", NONE, "reassign", Refused("reassign", "not_routed")),
        (
            "p-ma",
            {"chief_ethics_officer"},
            "reassign",
            Refused("reassign", "excluded", "reassigned"),
        ),
        # confirming the people needs the routing and an independent role
        ("p-chen", {"ceo_x"}, "confirm_people", Allowed("confirm_people", "routed", 1)),
        ("p-chen", NONE, "confirm_people", Refused("confirm_people", "role_required")),
        ("p-sun", {"ceo_x"}, "confirm_people", Refused("confirm_people", "not_routed")),
    ],
)
def test_conflict_actions(
    principal: str, roles: set[str], action: str, expected: Allowed | Refused
) -> None:
    assert decide(ROUTING, principal, roles, action, GRANTS) == expected  # type: ignore[arg-type]


def test_roles_default_when_the_policy_is_silent() -> None:
    policy = _policy()
    assert "chief_ethics_officer" in roles_of(policy).reassign
    assert roles_of(policy).independent == frozenset(policy.conflicts.independent_roles)


def _policy() -> Policy:
    from pathlib import Path

    import services
    from services.infra.config import load_yaml_model

    return load_yaml_model(Path(services.__file__).parent / "data" / "policy.yaml", Policy)


def _event(type_: str, data: dict[str, object], n: int = 0) -> Envelope:
    return Envelope.model_validate(
        {
            "id": f"0b8f7c2e-6f0a-4a59-9a43-0f3c1c3b2a{n:02d}",
            "source": "test",
            "type": type_,
            "subject": "i1",
            "time": "2026-11-02T09:00:00Z",
            "data": data,
        }
    )


DIGEST = "sha256:" + "0" * 64
SEALED = "enc:v1:bm90LWEtcGVyc29u"


def _submitted(accused: list[str], matches: list[dict[str, object]]) -> Envelope:
    return _event(
        "incident.report.submitted.v1",
        {
            "category": "harassment",
            "summary": "s",
            "description": "d",
            "accused": accused,
            "report_digest": DIGEST,
            "people_matches": matches,
        },
    )


def test_ambiguous_names_leave_the_report_unresolved_until_confirmed() -> None:
    ambiguous = {"field": "accused", "text": SEALED, "how": "ambiguous"}
    submitted = _submitted([SEALED], [{**ambiguous, "candidates": ["p-wang", "p-chen"]}])
    known = {"p-wang", "p-chen", "p-li"}.__contains__
    found = implicated([submitted])
    assert found.accused == () and found.candidates == ("p-wang", "p-chen")
    assert conflict_unresolved([submitted], known)
    confirmed = _event(
        "incident.people.confirmed.v1", {"principal": "p-sun", "accused": ["p-wang"]}, 1
    )
    assert not conflict_unresolved([submitted, confirmed], known)
    assert implicated([submitted, confirmed]).accused == ("p-wang",)  # candidates kept too
    # an amendment naming an unknown id afterwards reopens it
    amended = _event(
        "incident.report.amended.v1", {"named_added": ["p-nobody"], "report_digest": DIGEST}, 2
    )
    assert conflict_unresolved([submitted, confirmed, amended], known)
    org = _org()
    at_once = conflicted(found, None, org, _policy())
    assert {"p-wang", "p-chen"} <= set(at_once)  # every candidate is conflicted


def _org() -> OrgSnapshot:
    from pathlib import Path

    import services
    from services.domain.directory import DirectoryFile
    from services.infra.config import load_yaml_model

    path = Path(services.__file__).parent / "data" / "directory.yaml"
    return OrgSnapshot.from_directory(load_yaml_model(path, DirectoryFile))


def test_people_answering_to_an_accused_are_excluded_in_every_category() -> None:
    found = Implicated(accused=("p-li",))  # p-wang, p-chen and p-liu answer to him
    org, policy = _org(), _policy()
    assert answers_to_accused("p-liu", found, org)  # through p-wang
    assert not answers_to_accused("p-ma", found, org)
    # the principal asking is a candidate of triage's `accused_reports`, in every category
    on = conflicted(found, None, org, policy, category="harassment", candidates=["p-chen"])
    assert on["p-chen"] == "accused_reports"
    fraud = conflicted(found, None, org, policy, category="fraud", candidates=["p-chen"])
    assert fraud["p-chen"] == "accused_reports"


def test_an_excluded_auditor_cannot_tell_the_incident_from_an_unknown_id() -> None:
    """Review finding: her write on an incident that excludes her answered 404 and on an
    unknown id 403 (read_only), so a 404 said 'a report excludes you'."""
    excluded = Routing(excluded={"p-audit": "accused"})
    for action in sorted(set(ACTIONS) - READ_ACTIONS - {"reassign"}):
        on_hers = decide(excluded, "p-audit", AUDITOR, action)
        on_unknown = decide(Routing(), "p-audit", AUDITOR, action)
        assert isinstance(on_hers, Refused) and isinstance(on_unknown, Refused)
        assert on_hers.conceals == on_unknown.conceals is False, action
        assert on_hers.detail == "excluded"  # the record still says why
    for action in sorted(READ_ACTIONS):  # a read: 404, as an unknown id's (no_such_incident)
        refused = decide(excluded, "p-audit", AUDITOR, action)
        assert isinstance(refused, Refused) and refused.conceals


def test_a_reassignment_names_only_people_who_may_hold_the_incident() -> None:
    found = Implicated(accused=("p-wang",))
    routing = ROUTING.excluding({"p-zhou": "recused"})
    refusals = reassignment_refusals(
        ["p-sun", "p-zhou", "p-liu", "p-nobody", "p-wang"], routing, found, _org()
    )
    assert refusals == {
        "p-zhou": "excluded",  # recused
        "p-liu": "excluded",  # answers to the accused
        "p-nobody": "unknown",
        "p-wang": "excluded",
    }
