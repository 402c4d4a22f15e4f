"""Escalation of one incident, told as stories on an explicit clock.

Every step goes through `Story`, which checks that the state survives a JSON round trip
(what the service persists) and keeps every effect, so a story can assert on all that
happened. The seed case policy: 1h, 2h, 4h, 24h, then the last level again every 24h.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.domain import escalation as esc
from services.domain.envelope import utc_rfc3339
from services.domain.escalation import (
    Effect,
    EscalationState,
    Step,
)
from services.domain.events import (
    CATALOG,
    AcknowledgementIgnored,
    ChainLevel,
    DeadlineBreached,
    Escalated,
    EscalationCleared,
    EscalationStalled,
    Exclusion,
    Notified,
    ReminderDue,
    Triaged,
    make_event,
)

INCIDENT = "inc-0001"
DIGEST = "sha256:" + "ab" * 32
T0 = datetime(2026, 11, 6, 18, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)

HANDLER, HR_HEAD, ETHICS, BOARD_1, BOARD_2 = "p-hr", "p-hrhead", "p-ethics", "p-board1", "p-board2"
ACCUSED_BOSS = "p-li"


def triaged(
    levels: list[list[str]] | None = None,
    within: list[int] | None = None,
    repeat: int | None = 24 * 3600,
    excluded: list[str] | None = None,
    deadlines: dict[str, datetime] | None = None,
    independent: list[str] | None = None,
    revision: int = 1,
) -> Triaged:
    levels = [[HANDLER], [HR_HEAD], [ETHICS], [BOARD_1, BOARD_2]] if levels is None else levels
    within = within or [3600, 2 * 3600, 4 * 3600, 24 * 3600][: len(levels)]
    roles = ["hr_case_handler", "hr_head", "chief_ethics_officer", "board_audit_committee"]
    return Triaged(
        category="sexual_misconduct",
        severity="critical",
        policy_version="2026-11-01",
        chain=[
            ChainLevel(level=i + 1, role=roles[i % 4], recipients=r, acknowledge_within=w)
            for i, (r, w) in enumerate(zip(levels, within, strict=True))
        ],
        excluded=[Exclusion(principal=p, rule="accused_management_chain") for p in excluded or []],
        deadlines=(
            {"reporter_acknowledgement": T0 + 7 * D, "feedback": T0 + 90 * D}
            if deadlines is None
            else deadlines
        ),
        repeat_last_every=repeat,
        independent=independent or [],
        revision=revision,
    )


def escalated(level: int, recipients: list[str], reason: str, deadline: datetime) -> Escalated:
    return Escalated.model_validate(
        {"level": level, "recipients": recipients, "reason": reason, "deadline": deadline}
    )


def notified(principal: str, level: int) -> Notified:
    return Notified(principal=principal, channel="escalation", level=level, report_digest=DIGEST)


def clock_notice(principal: str, level: int, channel: str) -> Notified:
    return Notified(principal=principal, channel=channel, level=level, report_digest=DIGEST)


def roundtrip(state: EscalationState) -> None:
    encoded = json.dumps(state.to_json())
    assert EscalationState.from_json(json.loads(encoded)) == state


class Story:
    """One incident's escalation, stepped by hand; every state is round-tripped."""

    def __init__(self, decision: Triaged | None = None, **start: Any) -> None:
        self.effects: list[tuple[datetime, Effect]] = []
        self.state, effects = esc.start(decision or triaged(), INCIDENT, T0, DIGEST, **start)
        self._keep(T0, effects)

    def _keep(self, now: datetime, effects: tuple[Effect, ...]) -> tuple[Effect, ...]:
        roundtrip(self.state)
        self.effects.extend((now, e) for e in effects)
        return effects

    def step(self, now: datetime, fn: Callable[..., Step], *args: Any) -> tuple[Effect, ...]:
        before = self.state.version
        self.state, effects = fn(self.state, *args)
        assert self.state.version >= before
        if effects:  # event ids are keyed by (incident, version, index): never reused
            assert self.state.version == before + 1
        return self._keep(now, effects)

    def due(self, now: datetime, *expected: datetime | None) -> tuple[Effect, ...]:
        """Fire `expected` (by default the pending deadline, as a faithful scheduler does)."""
        return self.step(now, esc.due, now, expected[0] if expected else self.state.due_at)

    def ack(self, now: datetime, principal: str) -> tuple[Effect, ...]:
        return self.step(now, esc.acknowledge, principal, now)

    def run_until(self, end: datetime) -> list[tuple[datetime, Effect]]:
        """What a faithful scheduler does: wake at next_wakeup and tick, until `end`."""
        first = len(self.effects)
        while (wake := esc.next_wakeup(self.state)) is not None and wake <= end:
            self.step(wake, esc.tick, wake)
        return self.effects[first:]


def stalled(level: int, every: int) -> EscalationStalled:
    roles = ["hr_case_handler", "hr_head", "chief_ethics_officer", "board_audit_committee"]
    return EscalationStalled(
        level=level, reason="nobody_eligible", roles_tried=roles[: level - 1], repeat_every=every
    )


def ignored(principal: str, level: int, reason: str) -> AcknowledgementIgnored:
    return AcknowledgementIgnored.model_validate(
        {"principal": principal, "level": level, "reason": reason}
    )


def escalations(effects: list[tuple[datetime, Effect]]) -> list[tuple[datetime, Escalated]]:
    return [(at, e) for at, e in effects if isinstance(e, Escalated)]


# The seed case


def test_nobody_acknowledges_the_chain_climbs_and_the_last_level_repeats() -> None:
    story = Story()
    assert story.effects == []  # level 1 was asked by triage
    assert (story.state.current_level, story.state.due_at) == (1, T0 + H)

    happened = story.run_until(T0 + 60 * H)

    assert [(at - T0, e.level, e.reason, e.deadline - T0) for at, e in escalations(happened)] == [
        (1 * H, 2, "not_acknowledged", 1 * H),
        (3 * H, 3, "not_acknowledged", 3 * H),
        (7 * H, 4, "not_acknowledged", 7 * H),
        (31 * H, 4, "not_acknowledged", 31 * H),
        (55 * H, 4, "not_acknowledged", 55 * H),
    ]
    assert [e for _, e in happened[:2]] == [
        escalated(2, [HR_HEAD], "not_acknowledged", T0 + H),
        notified(HR_HEAD, 2),
    ]
    board = [e for at, e in happened if at == T0 + 31 * H]
    assert board == [
        escalated(4, [BOARD_1, BOARD_2], "not_acknowledged", T0 + 31 * H),
        notified(BOARD_1, 4),
        notified(BOARD_2, 4),
    ]
    assert esc.next_wakeup(story.state) == T0 + 79 * H
    assert story.state.routed == {HANDLER, HR_HEAD, ETHICS, BOARD_1, BOARD_2}


def test_acknowledgement_at_level_2_stops_everything() -> None:
    story = Story()
    story.run_until(T0 + 90 * 60 * timedelta(seconds=1))  # +1h30: level 2 asked
    assert story.state.current_level == 2

    cleared = story.ack(T0 + 2 * H, HR_HEAD)

    assert cleared == (EscalationCleared(level=2, principal=HR_HEAD),)
    assert story.state.acknowledged == esc.Acknowledgement(HR_HEAD, T0 + 2 * H, 2)
    assert story.state.due_at is None
    later = story.run_until(T0 + 400 * D)
    asks = [e for _, e in later if isinstance(e, Escalated | EscalationCleared)]
    assert asks + [e for _, e in later if isinstance(e, Notified) and esc.is_ask(e.channel)] == []
    # The reporter was told of receipt; feedback is still owed and still reminded: the
    # acknowledger, then at the breach also level 3.
    assert [(at - T0, e) for at, e in later] == [
        (81 * D, ReminderDue(clock="feedback", due_at=T0 + 90 * D)),
        (81 * D, clock_notice(HR_HEAD, 2, "reminder")),
        (90 * D, DeadlineBreached(clock="feedback", due_at=T0 + 90 * D)),
        (90 * D, clock_notice(HR_HEAD, 2, "breach")),
        (90 * D, clock_notice(ETHICS, 3, "breach")),
    ]
    assert esc.next_wakeup(story.state) is None
    assert story.ack(T0 + 3 * H, HR_HEAD) == ()  # idempotent
    assert story.ack(T0 + 3 * H, HANDLER) == ()  # one acknowledgement stops the chain


def test_acknowledgement_then_the_old_deadline_fires_nothing() -> None:
    story = Story()
    story.due(T0 + H)
    deadline = story.state.due_at
    assert deadline == T0 + 3 * H

    assert story.ack(deadline, HR_HEAD) == (EscalationCleared(level=2, principal=HR_HEAD),)
    assert story.due(deadline, deadline) == ()
    assert story.due(deadline + D, deadline) == ()
    assert story.state.current_level == 2


def test_deadline_then_acknowledgement_clears_the_new_level() -> None:
    story = Story()
    story.due(T0 + H)
    deadline = T0 + 3 * H

    climbed = story.due(deadline, deadline)
    cleared = story.ack(deadline, HR_HEAD)  # HR head acted a moment too late: still routed

    assert climbed == (
        escalated(3, [ETHICS], "not_acknowledged", deadline),
        notified(ETHICS, 3),
    )
    assert cleared == (EscalationCleared(level=3, principal=HR_HEAD),)
    assert story.due(deadline, deadline) == ()
    assert story.due(deadline + 4 * H, deadline + 4 * H) == ()


def test_due_early_twice_or_for_another_deadline_does_nothing() -> None:
    story = Story()
    state = story.state
    assert story.due(T0 + H - timedelta(microseconds=1), T0 + H) == ()
    assert story.due(T0 + 5 * H, T0 + 2 * H) == ()  # not the pending deadline
    assert story.due(T0 + 5 * H, None) == ()
    assert story.state == state

    assert len(story.due(T0 + H, T0 + H)) == 2
    assert story.due(T0 + H, T0 + H) == ()  # the same deadline, redelivered
    assert story.due(T0 + 2 * H, T0 + H) == ()
    assert story.state.current_level == 2


def test_a_late_firing_gives_the_next_level_its_full_time() -> None:
    story = Story()
    story.due(T0 + 10 * H, T0 + H)  # the service was down for nine hours
    assert story.effects[0][1] == escalated(2, [HR_HEAD], "not_acknowledged", T0 + H)
    assert story.state.due_at == T0 + 12 * H
    assert story.due(T0 + 10 * H) == ()  # one step per call


def test_without_repeat_the_last_level_repeats_on_its_own_deadline() -> None:
    story = Story(triaged(levels=[[HANDLER], [HR_HEAD]], repeat=None))  # never silent
    happened = story.run_until(T0 + 9 * H)
    assert [(at - T0, e.level, e.reason) for at, e in escalations(happened)] == [
        (1 * H, 2, "not_acknowledged"),
        (3 * H, 2, "not_acknowledged"),
        (5 * H, 2, "not_acknowledged"),
        (7 * H, 2, "not_acknowledged"),
        (9 * H, 2, "not_acknowledged"),
    ]
    assert story.state.due_at == T0 + 11 * H and not story.state.stalled
    assert story.ack(T0 + 10 * H, HR_HEAD) == (EscalationCleared(level=2, principal=HR_HEAD),)


# Empty levels, exclusions, reassignment


def test_empty_levels_are_recorded_and_skipped_at_once() -> None:
    story = Story(triaged(levels=[[], [HR_HEAD], [], [BOARD_1]]))

    assert [e for _, e in story.effects] == [
        escalated(1, [], "nobody_eligible", T0),
        escalated(2, [HR_HEAD], "nobody_eligible", T0),
        notified(HR_HEAD, 2),
    ]
    assert story.state.due_at == T0 + 2 * H

    skipped = story.due(T0 + 2 * H)

    assert skipped == (
        escalated(3, [], "nobody_eligible", T0 + 2 * H),
        escalated(4, [BOARD_1], "nobody_eligible", T0 + 2 * H),
        notified(BOARD_1, 4),
    )
    assert story.state.due_at == T0 + 26 * H


def test_nobody_eligible_anywhere_raises_a_stall_that_repeats() -> None:
    story = Story(
        triaged(levels=[[ACCUSED_BOSS], [], [ACCUSED_BOSS]], excluded=[ACCUSED_BOSS], repeat=3600)
    )

    assert [e for _, e in story.effects] == [
        *(escalated(k, [], "nobody_eligible", T0) for k in (1, 2, 3)),
        stalled(4, 3600),
    ]
    assert story.state.stalled and story.state.current_level == 4
    assert esc.next_wakeup(story.state) == T0 + H
    assert story.due(T0 + H) == (stalled(4, 3600),)
    assert story.due(T0 + H) == ()  # once per interval
    assert [
        at - T0 for at, e in story.run_until(T0 + 4 * H) if isinstance(e, EscalationStalled)
    ] == [
        2 * H,
        3 * H,
        4 * H,
    ]
    assert story.ack(T0 + 4 * H, ACCUSED_BOSS) == (ignored(ACCUSED_BOSS, 4, "excluded"),)


def test_excluded_principals_are_never_notified_nor_accepted() -> None:
    story = Story(
        triaged(
            levels=[[HANDLER, ACCUSED_BOSS], [ACCUSED_BOSS, HR_HEAD], [ETHICS], [BOARD_1]],
            excluded=[ACCUSED_BOSS],
        )
    )
    assert story.ack(T0, ACCUSED_BOSS) == (ignored(ACCUSED_BOSS, 1, "excluded"),)
    story.run_until(T0 + 40 * H)

    named = [p for _, e in story.effects for p in named_in(e)]
    assert ACCUSED_BOSS not in named
    assert ACCUSED_BOSS not in story.state.routed
    assert story.ack(T0 + 40 * H, ACCUSED_BOSS) == (ignored(ACCUSED_BOSS, 4, "excluded"),)


def test_reassignment_excludes_for_good_and_moves_on_when_the_level_empties() -> None:
    story = Story(triaged(levels=[[HANDLER], [HR_HEAD], [ETHICS, HR_HEAD], [BOARD_1, HR_HEAD]]))
    story.due(T0 + H)

    moved = story.step(T0 + 2 * H, esc.reassign, [HR_HEAD], [], T0 + 2 * H)

    assert moved == (escalated(3, [ETHICS], "nobody_eligible", T0 + 2 * H), notified(ETHICS, 3))
    assert story.state.due_at == T0 + 6 * H
    assert story.ack(T0 + 2 * H, HR_HEAD) == (ignored(HR_HEAD, 3, "excluded"),)
    story.run_until(T0 + 20 * H)
    assert escalations(story.effects)[-1][1] == escalated(
        4, [BOARD_1], "not_acknowledged", T0 + 6 * H
    )
    after = [e for at, e in story.effects if at >= T0 + 2 * H]
    assert all(HR_HEAD not in named_in(e) for e in after)


def test_reassignment_adds_to_the_current_level_and_ignores_excluded_additions() -> None:
    story = Story(triaged(excluded=[ACCUSED_BOSS]))
    assert story.step(T0, esc.reassign, [], ["p-new", ACCUSED_BOSS], T0) == ()
    assert story.state.level(1).recipients == (HANDLER, "p-new")
    assert story.state.due_at == T0 + H  # the pending deadline stands
    assert story.ack(T0 + H, "p-new") == (EscalationCleared(level=1, principal="p-new"),)


def test_reassignment_of_the_acknowledger_reopens_the_chain() -> None:
    story = Story(triaged(levels=[[HANDLER, "p-hr2"], [HR_HEAD]]))
    story.ack(T0 + 10 * timedelta(minutes=1), HANDLER)

    assert story.step(T0 + H, esc.reassign, [HANDLER], [], T0 + H) == ()

    assert story.state.acknowledged is None
    assert story.state.due_at == T0 + 2 * H  # level 1 asked again, with its full time
    assert story.ack(T0 + H, HANDLER) == (ignored(HANDLER, 1, "excluded"),)
    assert story.due(T0 + 2 * H) == (
        escalated(2, [HR_HEAD], "not_acknowledged", T0 + 2 * H),
        notified(HR_HEAD, 2),
    )


def test_emptying_the_last_level_stalls_and_an_addition_resumes() -> None:
    story = Story(triaged(levels=[[HANDLER], [BOARD_1]]))
    story.due(T0 + H)

    assert story.step(T0 + 2 * H, esc.reassign, [BOARD_1], [], T0 + 2 * H) == (
        stalled(3, 24 * 3600),
    )
    assert story.state.stalled
    assert story.step(T0 + 3 * H, esc.reassign, ["p-other"], [], T0 + 3 * H) == ()

    assert story.step(T0 + 4 * H, esc.reassign, [], [BOARD_2], T0 + 4 * H) == ()
    assert not story.state.stalled
    assert story.state.due_at == T0 + 6 * H  # the last level's time, at the independent level
    assert story.ack(T0 + 5 * H, BOARD_2) == (EscalationCleared(level=3, principal=BOARD_2),)


# Never silent: the independent level and the stall


def test_a_chain_with_nobody_left_asks_the_independent_people() -> None:
    story = Story(
        triaged(
            levels=[[ACCUSED_BOSS], [ACCUSED_BOSS]],
            within=[3600, 7200],
            excluded=[ACCUSED_BOSS],
            independent=[ETHICS, ACCUSED_BOSS],  # exclusion wins here too
        )
    )

    assert [e for _, e in story.effects] == [
        escalated(1, [], "nobody_eligible", T0),
        escalated(2, [], "nobody_eligible", T0),
        escalated(3, [ETHICS], "nobody_eligible", T0),
        notified(ETHICS, 3),
    ]
    assert story.state.current_level == story.state.fallback_level == 3
    assert story.state.due_at == T0 + 2 * H  # the last level's acknowledge_within
    # unanswered, the independent level is the top one and repeats
    assert story.due(T0 + 2 * H) == (
        escalated(3, [ETHICS], "not_acknowledged", T0 + 2 * H),
        notified(ETHICS, 3),
    )
    assert story.state.due_at == T0 + 26 * H
    assert story.ack(T0 + 3 * H, ETHICS) == (EscalationCleared(level=3, principal=ETHICS),)


def test_the_independent_level_is_asked_only_when_the_chain_ran_out_of_people() -> None:
    story = Story(triaged(levels=[[HANDLER], [HR_HEAD]], independent=[ETHICS]))
    happened = story.run_until(T0 + 30 * H)
    assert {e.level for _, e in escalations(happened)} == {2}  # HR_HEAD is asked again


def test_an_emptied_last_level_goes_to_the_independent_level_and_then_stalls() -> None:
    story = Story(triaged(levels=[[HANDLER], [HR_HEAD]], within=[3600, 7200], independent=[ETHICS]))
    story.due(T0 + H)

    assert story.step(T0 + 2 * H, esc.reassign, [HR_HEAD], [], T0 + 2 * H) == (
        escalated(3, [ETHICS], "nobody_eligible", T0 + 2 * H),
        notified(ETHICS, 3),
    )
    assert story.step(T0 + 3 * H, esc.reassign, [ETHICS], [], T0 + 3 * H) == (
        stalled(3, 24 * 3600),
    )
    assert story.state.stalled and story.state.due_at == T0 + 27 * H


def test_a_stall_repeats_until_someone_acts() -> None:
    decision = triaged(levels=[[HANDLER], [ACCUSED_BOSS]], excluded=[ACCUSED_BOSS], repeat=600)
    story = Story(decision)

    assert story.due(T0 + H) == (escalated(2, [], "nobody_eligible", T0 + H), stalled(3, 600))
    alerts = story.run_until(T0 + H + timedelta(minutes=30))
    assert [e for _, e in alerts] == [stalled(3, 600)] * 3

    # (a) someone earlier in the chain, still routed, acknowledges: the alert stops
    acked = Story(decision)
    acked.due(T0 + H)
    assert acked.ack(T0 + 2 * H, HANDLER) == (EscalationCleared(level=3, principal=HANDLER),)
    assert acked.state.due_at is None and not acked.state.stalled

    # (b) a reassignment adds someone: asked at the independent level, the alert stops
    story.step(T0 + 2 * H, esc.reassign, [], [ETHICS], T0 + 2 * H)
    assert not story.state.stalled and story.state.due_at == T0 + 4 * H  # 2 h, the last level's
    assert ETHICS in story.state.routed

    # (c) a new revision of the decision restarts the chain
    revised = Story(decision)
    revised.due(T0 + H)
    restarted = revised.step(
        T0 + 2 * H, esc.redecide, triaged(levels=[[HR_HEAD]], revision=2), T0 + 2 * H
    )
    assert restarted == () and not revised.state.stalled
    assert revised.state.due_at == T0 + 3 * H


# Revisions


def test_a_new_revision_replaces_the_chain_and_restarts_it_from_level_1() -> None:
    first = triaged(levels=[[ETHICS], [BOARD_1]], excluded=[ACCUSED_BOSS])  # conflict-unresolved
    story = Story(first)
    story.ack(T0 + 10 * timedelta(minutes=1), ETHICS)
    second = triaged(
        levels=[[HANDLER], [HR_HEAD], [ETHICS]],
        excluded=[HR_HEAD],
        deadlines={"level_1_acknowledge": T0 + 3 * H},
        revision=2,
    )

    assert story.step(T0 + 2 * H, esc.redecide, second, T0 + 2 * H) == ()  # triage asks level 1

    state = story.state
    assert (state.revision, state.current_level, state.due_at) == (2, 1, T0 + 3 * H)
    assert state.acknowledged is None  # the old chain's acknowledgement does not carry over
    assert state.excluded == {ACCUSED_BOSS, HR_HEAD}  # exclusions are the union
    assert story.ack(T0 + 2 * H, BOARD_1) == (ignored(BOARD_1, 1, "not_routed"),)
    assert story.due(T0 + 3 * H) == (  # HR_HEAD excluded: level 2 is empty
        escalated(2, [], "nobody_eligible", T0 + 3 * H),
        escalated(3, [ETHICS], "nobody_eligible", T0 + 3 * H),
        notified(ETHICS, 3),
    )
    # the reporter's clock stays satisfied by the first acknowledgement
    assert state.clock("reporter_acknowledgement").satisfied_at is not None  # type: ignore[union-attr]


def test_a_revision_not_higher_than_the_current_is_a_no_op() -> None:
    story = Story(triaged(revision=2))
    before = story.state
    for revision in (1, 2):
        again = triaged(levels=[[BOARD_1]], revision=revision)
        assert story.step(T0 + H, esc.redecide, again, T0 + H) == ()
        assert story.state == before


def test_a_revision_whose_level_1_is_empty_moves_on_at_once() -> None:
    story = Story(triaged(levels=[[HANDLER]]))
    second = triaged(levels=[[HANDLER], [HR_HEAD]], excluded=[HANDLER], revision=2)
    assert story.step(T0 + H, esc.redecide, second, T0 + H) == (
        escalated(1, [], "nobody_eligible", T0 + H),
        escalated(2, [HR_HEAD], "nobody_eligible", T0 + H),
        notified(HR_HEAD, 2),
    )


# Defence in depth: ignored acknowledgements and recusals


def test_acknowledgements_by_excluded_or_unrouted_principals_are_recorded_as_ignored() -> None:
    story = Story(triaged(excluded=[ACCUSED_BOSS]))
    assert story.ack(T0, ACCUSED_BOSS) == (ignored(ACCUSED_BOSS, 1, "excluded"),)
    assert story.ack(T0, HR_HEAD) == (ignored(HR_HEAD, 1, "not_routed"),)  # level 2 not asked
    assert story.state.acknowledged is None and story.state.due_at == T0 + H
    assert story.ack(T0, HANDLER) == (EscalationCleared(level=1, principal=HANDLER),)
    assert story.ack(T0, HANDLER) == ()  # a second valid one is no news
    assert story.ack(T0, ACCUSED_BOSS) == (ignored(ACCUSED_BOSS, 1, "excluded"),)


def test_a_recused_handler_cannot_acknowledge_even_before_the_reassignment() -> None:
    story = Story(triaged(levels=[[HANDLER], [HR_HEAD]]))
    assert story.step(T0, esc.recuse, HANDLER, T0) == ()
    assert story.state.due_at == T0 + H  # no replacement yet: the deadline stands
    assert story.ack(T0, HANDLER) == (ignored(HANDLER, 1, "excluded"),)
    assert story.due(T0 + H) == (  # if triage's reassignment never came, it moves on
        escalated(2, [HR_HEAD], "not_acknowledged", T0 + H),
        notified(HR_HEAD, 2),
    )


def test_a_recused_acknowledger_reopens_her_level() -> None:
    story = Story(triaged(levels=[[HANDLER], [HR_HEAD]]))
    story.ack(T0, HANDLER)
    story.step(T0 + H, esc.recuse, HANDLER, T0 + H)
    assert story.state.acknowledged is None and story.state.due_at == T0 + 2 * H


@pytest.mark.parametrize("acknowledged_first", [False, True])
@pytest.mark.parametrize("alone", [False, True])
def test_a_recusal_and_its_reassignment_end_in_the_same_state_in_either_order(
    acknowledged_first: bool, alone: bool
) -> None:
    levels = [[HANDLER] if alone else [HANDLER, "p-hr2"], [HR_HEAD]]
    at = T0 + 10 * timedelta(minutes=1)
    ends = []
    for order in ("recusal first", "reassignment first"):
        story = Story(triaged(levels=levels))
        if acknowledged_first:
            story.ack(T0, HANDLER)
        steps = [
            lambda s=story: s.step(at, esc.recuse, HANDLER, at),
            lambda s=story: s.step(at, esc.reassign, [HANDLER], ["p-new"], at),
        ]
        for step in steps if order == "recusal first" else reversed(steps):
            step()
        assert story.ack(at, HANDLER) == (ignored(HANDLER, 1, "excluded"),)
        ends.append(replace(story.state, version=0))
    assert ends[0] == ends[1]
    assert "p-new" in ends[0].routed and HANDLER not in ends[0].routed


# Stored format


def test_a_format_1_state_is_read_and_a_silent_stop_is_woken() -> None:
    old = Story(triaged(levels=[[HANDLER], [HR_HEAD]], excluded=[HR_HEAD])).state.to_json()
    for key in ("revision", "independent", "stalled"):
        del old[key]
    old.update(format=1, current_level=2, due_at=None, asked_at=utc_rfc3339(T0 + H))

    state = EscalationState.from_json(old)

    assert (state.revision, state.independent, state.stalled) == (1, (), False)
    assert state.due_at == T0 + H and esc.next_wakeup(state) == T0 + H
    state, effects = esc.tick(state, T0 + 2 * H)
    assert effects == (stalled(3, 24 * 3600),)
    with pytest.raises(ValueError, match="format"):
        EscalationState.from_json({**old, "format": 3})


# Failed deliveries


def test_the_next_level_is_asked_once_every_recipient_failed() -> None:
    story = Story(triaged(levels=[[HANDLER, "p-hr2"], [HR_HEAD], [ETHICS]]))
    at = T0 + timedelta(minutes=5)

    assert story.step(at, esc.delivery_failed, HANDLER, 1, at) == ()
    assert story.step(at, esc.delivery_failed, HANDLER, 1, at) == ()
    assert story.step(at, esc.delivery_failed, HR_HEAD, 2, at) == ()  # not the current level
    assert story.step(at, esc.delivery_failed, "p-hr2", 1, at) == (
        escalated(2, [HR_HEAD], "delivery_failed", at),
        notified(HR_HEAD, 2),
    )
    assert story.state.due_at == at + 2 * H and story.state.undelivered == frozenset()
    assert story.due(T0 + H, T0 + H) == ()  # level 1's deadline is gone


def test_a_removal_that_leaves_only_failed_recipients_moves_on() -> None:
    story = Story(triaged(levels=[[HANDLER, "p-hr2"], [HR_HEAD]]))
    story.step(T0, esc.delivery_failed, HANDLER, 1, T0)
    assert story.step(T0, esc.reassign, ["p-hr2"], [], T0) == (
        escalated(2, [HR_HEAD], "delivery_failed", T0),
        notified(HR_HEAD, 2),
    )


def test_failed_delivery_at_the_last_level_waits_for_the_repeat() -> None:
    story = Story(triaged(levels=[[HANDLER]]))
    assert story.step(T0, esc.delivery_failed, HANDLER, 1, T0) == ()
    assert story.state.due_at == T0 + H
    assert story.due(T0 + H) == (
        escalated(1, [HANDLER], "not_acknowledged", T0 + H),
        notified(HANDLER, 1),
    )


# Legal clocks


def test_legal_clocks_remind_before_and_breach_at_the_deadline() -> None:
    story = Story(triaged(levels=[[HANDLER]], repeat=60 * 24 * 3600))
    assert story.state.reporter_acknowledgement_due == T0 + 7 * D
    assert story.state.feedback_due == T0 + 90 * D

    happened = story.run_until(T0 + 100 * D)

    legal = (ReminderDue, DeadlineBreached)
    assert [(at - T0, e) for at, e in happened if isinstance(e, legal)] == [
        (
            7 * D - timedelta(hours=16.8),
            ReminderDue(clock="reporter_acknowledgement", due_at=T0 + 7 * D),
        ),
        (7 * D, DeadlineBreached(clock="reporter_acknowledgement", due_at=T0 + 7 * D)),
        (81 * D, ReminderDue(clock="feedback", due_at=T0 + 90 * D)),
        (90 * D, DeadlineBreached(clock="feedback", due_at=T0 + 90 * D)),
    ]
    assert esc.reminders(story.state, T0 + 200 * D) == (story.state, ())


def test_acknowledgement_satisfies_the_reporter_clock_and_feedback_can_be_satisfied() -> None:
    story = Story(reminder_lead=timedelta(days=1))
    story.ack(T0 + 30 * timedelta(minutes=1), HANDLER)
    story.step(T0 + 10 * D, esc.clock_satisfied, "feedback", T0 + 10 * D)

    assert story.run_until(T0 + 400 * D) == []
    assert esc.next_wakeup(story.state) is None
    clock = story.state.clock("feedback")
    assert clock is not None and clock.satisfied_at == T0 + 10 * D


def test_a_fixed_reminder_lead_and_a_late_wakeup_skip_the_stale_reminder() -> None:
    story = Story(triaged(levels=[[HANDLER]], repeat=None), reminder_lead=timedelta(days=1))
    clock = story.state.clock("reporter_acknowledgement")
    assert clock is not None and clock.remind_at == T0 + 6 * D

    late = story.step(T0 + 8 * D, esc.reminders, T0 + 8 * D)  # down from day 5 to day 8

    assert late == (
        DeadlineBreached(clock="reporter_acknowledgement", due_at=T0 + 7 * D),
        clock_notice(HANDLER, 1, "breach"),
    )


def test_level_1_keeps_the_deadline_triage_set() -> None:
    late_start = T0 + 3 * H  # escalation was down when triage decided at T0
    decision = triaged(deadlines={"level_1_acknowledge": T0 + H})
    state, effects = esc.start(decision, INCIDENT, late_start, DIGEST)
    assert effects == () and state.due_at == T0 + H and state.clocks == ()
    state, effects = esc.tick(state, late_start)
    assert effects == (
        escalated(2, [HR_HEAD], "not_acknowledged", T0 + H),
        notified(HR_HEAD, 2),
    )
    assert state.due_at == late_start + 2 * H


def test_deadlines_other_than_the_legal_clocks_are_ignored() -> None:
    story = Story(triaged(deadlines={"whatever": T0 + D}))
    assert story.state.clocks == ()
    assert esc.next_wakeup(story.state) == T0 + H


def test_next_wakeup_is_the_earliest_of_the_deadline_and_the_clocks() -> None:
    story = Story(triaged(deadlines={"reporter_acknowledgement": T0 + 10 * timedelta(minutes=1)}))
    assert esc.next_wakeup(story.state) == T0 + 9 * timedelta(minutes=1)
    story.step(T0 + 9 * timedelta(minutes=1), esc.reminders, T0 + 9 * timedelta(minutes=1))
    assert esc.next_wakeup(story.state) == T0 + 10 * timedelta(minutes=1)


# Edges and shape


def test_effects_are_catalog_payloads_with_their_event_types() -> None:
    story = Story(triaged(levels=[[HANDLER], [HR_HEAD]]))
    story.due(T0 + H)
    story.ack(T0 + H, HR_HEAD)
    story.run_until(T0 + 100 * D)
    for at, effect in story.effects:
        name = esc.effect_type(effect)
        event = make_event(name, subject=INCIDENT, data=effect, source="/services/test", time=at)
        assert CATALOG[event.type].data is type(effect)
    assert {esc.effect_type(e) for _, e in story.effects} == {
        "incident.escalated.v1",
        "incident.notified.v1",
        "incident.escalation.cleared.v1",
        "incident.reminder.due.v1",
        "incident.deadline.breached.v1",
    }


def test_amended_report_digest_goes_into_later_notifications() -> None:
    story = Story()
    amended = "sha256:" + "cd" * 32
    story.state = esc.report_amended(story.state, amended)
    assert esc.report_amended(story.state, amended) is story.state
    roundtrip(story.state)
    assert story.due(T0 + H)[1] == Notified(
        principal=HR_HEAD, channel="escalation", level=2, report_digest=amended
    )


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        esc.start(triaged(), INCIDENT, T0.replace(tzinfo=None), DIGEST)
    with pytest.raises(ValueError, match=r"levels 1\.\.n"):
        esc.start(triaged(levels=[]), INCIDENT, T0, DIGEST)
    gap = triaged().model_copy(
        update={"chain": [ChainLevel(level=2, role="x", recipients=[], acknowledge_within=1)]}
    )
    with pytest.raises(ValueError, match=r"levels 1\.\.n"):
        esc.start(gap, INCIDENT, T0, DIGEST)
    with pytest.raises(ValueError, match="fraction"):
        esc.start(triaged(), INCIDENT, T0, DIGEST, reminder_lead=1.5)
    state, _ = esc.start(triaged(), INCIDENT, T0, DIGEST)
    with pytest.raises(ValueError, match="naive"):
        esc.due(state, datetime(2026, 11, 7), state.due_at)
    with pytest.raises(ValueError, match="format"):
        EscalationState.from_json({**state.to_json(), "format": 99})
    with pytest.raises(ValueError, match="not an escalation state"):
        EscalationState.from_json({"format": 1})


def test_levels_out_of_order_in_the_decision_are_sorted() -> None:
    decision = triaged(levels=[[HANDLER], [HR_HEAD]])
    shuffled = decision.model_copy(update={"chain": list(reversed(decision.chain))})
    state, _ = esc.start(shuffled, INCIDENT, T0, DIGEST)
    assert [lv.level for lv in state.chain] == [1, 2]
    assert state.eligible(1) == (HANDLER,)


def test_the_version_grows_with_every_change_only() -> None:
    story = Story()
    v = story.state.version
    story.due(T0)  # early: no change
    assert story.state.version == v
    story.due(T0 + H)
    assert story.state.version == v + 1
    assert story.ack(T0 + H, "p-stranger") == (ignored("p-stranger", 2, "not_routed"),)
    assert story.state.version == v + 2  # the ignored acknowledgement's event needs its key


# Properties

PRINCIPALS = [f"p-{i}" for i in range(6)]

chains = st.lists(
    st.tuples(
        st.lists(st.sampled_from(PRINCIPALS), max_size=3),
        st.integers(min_value=1, max_value=10_000),
    ),
    min_size=1,
    max_size=5,
)
due_op = st.tuples(
    st.just("due"),
    st.integers(min_value=0, max_value=20_000),  # seconds the clock advances first
    st.sampled_from(["pending", "stale", "random"]),
)
ack_op = st.tuples(
    st.just("ack"), st.integers(min_value=0, max_value=5_000), st.sampled_from(PRINCIPALS)
)


def decision_of(
    chain: list[tuple[list[str], int]],
    repeat: int | None,
    excluded: set[str],
    independent: set[str] | None = None,
    revision: int = 1,
) -> Triaged:
    return triaged(
        levels=[r for r, _ in chain],
        within=[w for _, w in chain],
        repeat=repeat,
        excluded=sorted(excluded),
        deadlines={},
        independent=sorted(independent or ()),
        revision=revision,
    )


def named_in(effect: Effect) -> list[str]:
    """Who an effect routes the report to (an ignored acknowledgement routes nothing)."""
    if isinstance(effect, AcknowledgementIgnored):
        return []
    if isinstance(effect, Escalated):
        return list(effect.recipients)
    principal = getattr(effect, "principal", None)
    return [principal] if principal else []


@settings(max_examples=300, deadline=None)
@given(
    chain=chains,
    repeat=st.none() | st.integers(min_value=1, max_value=10_000),
    excluded=st.sets(st.sampled_from(PRINCIPALS), max_size=2),
    ops=st.lists(due_op | ack_op, max_size=30),
    data=st.data(),
)
def test_due_and_acknowledgements_in_any_order(
    chain: list[tuple[list[str], int]],
    repeat: int | None,
    excluded: set[str],
    ops: list[tuple[str, int, str]],
    data: st.DataObject,
) -> None:
    story = Story(decision_of(chain, repeat, excluded))
    now = T0
    seen_deadlines: list[datetime] = []
    for kind, advance, arg in ops:
        now += timedelta(seconds=advance)
        level_before = story.state.current_level
        if kind == "ack":
            story.ack(now, arg)
        else:
            if story.state.due_at is not None:
                seen_deadlines.append(story.state.due_at)
            if arg == "pending" or not seen_deadlines:
                expected = story.state.due_at
            elif arg == "stale":
                expected = data.draw(st.sampled_from(seen_deadlines))
            else:
                expected = now - timedelta(seconds=data.draw(st.integers(0, 20_000)))
            story.due(now, expected)
        assert story.state.current_level >= level_before  # (d)

    # an ignored acknowledgement is a record, not a step of the chain
    effects = [e for _, e in story.effects if not isinstance(e, AcknowledgementIgnored)]
    raised = [e for e in effects if isinstance(e, Escalated)]
    # (a) at most one escalation per (level, missed deadline)
    keys = [(e.level, e.deadline) for e in raised]
    assert len(keys) == len(set(keys))
    # (b) nothing after a valid acknowledgement, and one clear at most
    clears = [i for i, e in enumerate(effects) if isinstance(e, EscalationCleared)]
    assert len(clears) <= 1
    if clears:
        assert clears[0] == len(effects) - 1
        cleared = effects[clears[0]]
        assert isinstance(cleared, EscalationCleared)
        # never an escalation away from the level that was cleared
        assert all(e.level <= cleared.level for e in raised)
        assert cleared.principal in story.state.routed
    # (c) no excluded principal in any effect
    assert not {p for e in effects for p in named_in(e)} & excluded
    # (d) levels never go backwards
    levels = [e.level for e in raised]
    assert levels == sorted(levels)
    # every notification belongs to the escalation just before it
    for i, e in enumerate(effects):
        if isinstance(e, Notified):
            owner = next(x for x in reversed(effects[:i]) if isinstance(x, Escalated))
            assert e.principal in owner.recipients and e.level == owner.level
    # never silent: an unacknowledged chain always has a pending deadline (an ask, a
    # repeat or the stall alert)
    state = story.state
    if state.acknowledged is None:
        assert state.due_at is not None


reassign_op = st.tuples(
    st.just("reassign"),
    st.integers(min_value=0, max_value=5_000),
    st.tuples(
        st.sets(st.sampled_from(PRINCIPALS), max_size=2),
        st.sets(st.sampled_from(PRINCIPALS), max_size=2),
    ),
)
failed_op = st.tuples(
    st.just("failed"),
    st.integers(min_value=0, max_value=5_000),
    st.tuples(st.sampled_from(PRINCIPALS), st.integers(min_value=1, max_value=5)),
)
tick_op = st.tuples(st.just("tick"), st.integers(min_value=0, max_value=20_000), st.just(None))
recuse_op = st.tuples(
    st.just("recuse"), st.integers(min_value=0, max_value=5_000), st.sampled_from(PRINCIPALS)
)
redecide_op = st.tuples(
    st.just("redecide"),
    st.integers(min_value=0, max_value=5_000),
    st.tuples(
        chains,
        st.sets(st.sampled_from(PRINCIPALS), max_size=2),
        st.sets(st.sampled_from(PRINCIPALS), max_size=2),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    chain=chains,
    repeat=st.none() | st.integers(min_value=1, max_value=10_000),
    excluded=st.sets(st.sampled_from(PRINCIPALS), max_size=2),
    independent=st.sets(st.sampled_from(PRINCIPALS), max_size=2),
    ops=st.lists(tick_op | ack_op | reassign_op | failed_op | recuse_op | redecide_op, max_size=30),
)
def test_reassignments_recusals_and_revisions_never_reach_an_excluded_principal(
    chain: list[tuple[list[str], int]],
    repeat: int | None,
    excluded: set[str],
    independent: set[str],
    ops: list[tuple[str, int, Any]],
) -> None:
    story = Story(decision_of(chain, repeat, excluded, independent))
    now = T0
    banned = set(excluded)
    restarted = False
    for kind, advance, arg in ops:
        now += timedelta(seconds=advance)
        level_before = story.state.current_level
        count_before = len(story.effects)
        acked_by = story.state.acknowledged.by if story.state.acknowledged else None
        if kind == "tick":
            produced = story.step(now, esc.tick, now)
        elif kind == "ack":
            produced = story.ack(now, arg)
        elif kind == "reassign":
            removed, added = arg
            produced = story.step(now, esc.reassign, sorted(removed), sorted(added), now)
            banned |= removed
        elif kind == "recuse":
            produced = story.step(now, esc.recuse, arg, now)
            banned.add(arg)
        elif kind == "redecide":
            new_chain, new_excluded, new_independent = arg
            revision = story.state.revision + 1
            again = decision_of(new_chain, repeat, new_excluded, new_independent, revision)
            produced = story.step(now, esc.redecide, again, now)
            banned |= new_excluded
            restarted = True
            level_before, acked_by = 0, None  # a new chain from its level 1
        else:
            principal, level = arg
            produced = story.step(now, esc.delivery_failed, principal, level, now)
        assert len(story.effects) == count_before + len(produced)
        # (c) nobody ever excluded so far is named, routed, or acknowledging
        assert not {p for e in produced for p in named_in(e)} & banned
        assert not story.state.routed & banned
        # (d)
        assert story.state.current_level >= level_before
        # (b) an acknowledgement that still counts stops everything
        if acked_by is not None and acked_by not in banned:
            assert all(isinstance(e, AcknowledgementIgnored) for e in produced)
        # never silent, whatever was removed
        assert story.state.acknowledged is not None or story.state.due_at is not None
    levels = [e.level for _, e in story.effects if isinstance(e, Escalated)]
    assert restarted or levels == sorted(levels)


# Reminders that remind (issue 22)


def test_a_reminder_tells_the_current_level_and_a_breach_also_the_next_and_the_independent() -> (
    None
):
    decision = triaged(excluded=[ETHICS], independent=["p-ombuds", HR_HEAD])
    story = Story(decision)
    story.due(T0 + H)  # level 2 (HR_HEAD) asked; level 3 (ETHICS) is excluded
    assert story.state.current_level == 2

    reminded = story.step(T0 + 6 * D, esc.reminders, T0 + 6 * D + 8 * H)
    breached = story.step(T0 + 7 * D, esc.reminders, T0 + 7 * D)

    assert reminded == (
        ReminderDue(clock="reporter_acknowledgement", due_at=T0 + 7 * D),
        clock_notice(HR_HEAD, 2, "reminder"),
    )
    # the next level with anyone eligible: 3 is all excluded, so the board (4)
    assert breached == (
        DeadlineBreached(clock="reporter_acknowledgement", due_at=T0 + 7 * D),
        clock_notice(HR_HEAD, 2, "breach"),
        clock_notice(BOARD_1, 4, "breach"),
        clock_notice(BOARD_2, 4, "breach"),
        clock_notice("p-ombuds", 5, "breach"),
    )
    assert esc.clock_recipients(story.state, breach=False) == ((HR_HEAD, 2),)


def test_a_failed_reminder_or_breach_notice_never_moves_the_chain() -> None:
    story = Story(triaged(levels=[[HANDLER], [HR_HEAD]]))
    for channel in ("reminder", "breach"):
        assert esc.delivery_failed(story.state, HANDLER, 1, T0, channel) == (story.state, ())
    assert esc.is_ask("triage") and esc.is_ask("escalation") and not esc.is_ask("breach")
    moved = story.step(T0, esc.delivery_failed, HANDLER, 1, T0, "triage")
    assert moved[0] == escalated(2, [HR_HEAD], "delivery_failed", T0)


def test_a_stalled_chain_has_nobody_to_remind() -> None:
    story = Story(triaged(levels=[[HANDLER]], excluded=[HANDLER]))
    assert story.state.stalled
    assert esc.clock_recipients(story.state, breach=True) == ()
