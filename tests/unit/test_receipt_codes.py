"""Receipts and secrets, request digests, failure budgets and the reporter's view (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.domain.envelope import Envelope
from services.domain.events import make_event
from services.domain.receipts import (
    ALPHABET,
    RECEIPT_GROUPS,
    SECRET_GROUPS,
    FailureBudget,
    code_bits,
    idempotency_key_digest,
    new_code,
    new_receipt,
    new_secret,
    normalize_receipt,
    normalize_secret,
    reporter_view,
    request_digest,
    retry_after_seconds,
)

CROCKFORD = re.compile(r"^[0-9A-HJKMNP-TV-Z]{5}(-[0-9A-HJKMNP-TV-Z]{5})*$")


def test_the_alphabet_is_crockfords_base32() -> None:
    assert len(ALPHABET) == len(set(ALPHABET)) == 32
    assert not set("ILOU") & set(ALPHABET)


def test_a_receipt_is_four_groups_of_five_with_100_bits() -> None:
    receipt = new_receipt()
    assert CROCKFORD.match(receipt) and len(receipt.split("-")) == RECEIPT_GROUPS == 4
    assert code_bits(RECEIPT_GROUPS) == 100


def test_a_secret_is_six_groups_of_five_with_150_bits() -> None:
    secret = new_secret()
    assert CROCKFORD.match(secret) and len(secret.split("-")) == SECRET_GROUPS == 6
    assert code_bits(SECRET_GROUPS) >= 128


def test_codes_draw_every_symbol_from_the_random_source() -> None:
    calls: list[int] = []

    def counting(n: int) -> int:
        calls.append(n)
        return len(calls) % n

    code = new_code(2, counting)
    assert calls == [32] * 10
    assert code == "12345-6789A"
    assert len({new_receipt() for _ in range(2000)}) == 2000


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("7K3QZ-M0XRT-4HB9C-PWD2E", "7K3QZ-M0XRT-4HB9C-PWD2E"),
        ("7k3qz-m0xrt-4hb9c-pwd2e", "7K3QZ-M0XRT-4HB9C-PWD2E"),
        ("7K3QZM0XRT4HB9CPWD2E", "7K3QZ-M0XRT-4HB9C-PWD2E"),
        (" 7K3QZ M0XRT 4HB9C PWD2E ", "7K3QZ-M0XRT-4HB9C-PWD2E"),
        ("7K3QZ-MOXRT-4HB9C-PWD2E", "7K3QZ-M0XRT-4HB9C-PWD2E"),  # O reads as 0
        ("lK3QZ-M0XRT-4HB9C-PWD2E", "1K3QZ-M0XRT-4HB9C-PWD2E"),  # l reads as 1
        ("IK3QZ-M0XRT-4HB9C-PWD2E", "1K3QZ-M0XRT-4HB9C-PWD2E"),  # I reads as 1
    ],
)
def test_a_typed_receipt_is_read_forgivingly(typed: str, canonical: str) -> None:
    assert normalize_receipt(typed) == canonical


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "7K3QZ-M0XRT-4HB9C",  # too short
        "7K3QZ-M0XRT-4HB9C-PWD2E-A",  # too long
        "UK3QZ-M0XRT-4HB9C-PWD2E",  # U is not a symbol
        "7K3QZ-M0XRT-4HB9C-PWD2!",
        "-" * 10_000,
        "é" * 20,
    ],
)
def test_what_cannot_be_a_receipt_is_none(typed: str) -> None:
    assert normalize_receipt(typed) is None


def test_a_secret_is_not_a_receipt_and_back() -> None:
    assert normalize_secret(new_receipt()) is None
    assert normalize_receipt(new_secret()) is None


@given(st.lists(st.sampled_from(ALPHABET), min_size=30, max_size=30))
def test_a_secret_reads_back_as_itself(symbols: list[str]) -> None:
    secret = "-".join("".join(symbols[i : i + 5]) for i in range(0, 30, 5))
    assert normalize_secret(secret) == secret
    assert normalize_secret(secret.lower().replace("-", "")) == secret


BODY: dict[str, Any] = {"category": "harassment", "summary": "s", "accused": ["p-wang"]}


def test_the_request_digest_is_of_the_canonical_body_and_the_route() -> None:
    digest = request_digest("reports", BODY)
    assert re.match(r"^sha256:[0-9a-f]{64}$", digest)
    assert request_digest("reports", dict(reversed(list(BODY.items())))) == digest
    assert request_digest("harassment", BODY) != digest
    assert request_digest("reports", {**BODY, "summary": "t"}) != digest
    assert request_digest("reports", {**BODY, "accused": []}) != digest


def test_only_a_digest_of_an_idempotency_key_is_kept() -> None:
    digest = idempotency_key_digest("my-key-123")
    assert digest.startswith("sha256:") and "my-key-123" not in digest
    assert digest == idempotency_key_digest("my-key-123") != idempotency_key_digest("my-key-124")


@pytest.mark.parametrize(
    ("remaining", "seconds"), [(0.1, 1), (1.0, 1), (1.2, 2), (899.5, 900), (-3.0, 1)]
)
def test_retry_after_is_whole_seconds_and_at_least_one(remaining: float, seconds: int) -> None:
    assert retry_after_seconds(remaining) == seconds


def test_a_failure_budget_is_a_sliding_window() -> None:
    budget = FailureBudget(limit=3, window=60)
    for t in (0.0, 10.0, 20.0):
        assert budget.retry_after(t) is None
        budget.record(t)
    assert budget.retry_after(30.0) == 30  # the failure at 0 leaves the window at 60
    assert budget.retry_after(59.5) == 1
    assert budget.retry_after(60.0) is None
    budget.record(60.0)
    assert budget.retry_after(61.0) == 9  # now the one at 10 is the oldest


# -- the reporter's view ----------------------------------------------------------

INCIDENT = "inc-0001"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def event(type_: str, minutes: int, **data: Any) -> Envelope:
    return make_event(
        type_, subject=INCIDENT, data=data, source="/tests", time=T0 + timedelta(minutes=minutes)
    )


SUBMITTED = event(
    "incident.report.submitted.v1",
    0,
    category="harassment",
    summary="s",
    description="d",
    report_digest="sha256:00",
)


def test_a_new_report_is_submitted_and_not_acknowledged_with_the_policy_deadline() -> None:
    view = reporter_view(INCIDENT, [SUBMITTED], acknowledgement_within=7 * 86400)
    assert view.status == "submitted" and not view.acknowledged
    assert view.submitted_at == T0
    assert view.acknowledgement_due_at == T0 + timedelta(days=7)
    assert view.to_json() == {
        "incident_id": INCIDENT,
        "status": "submitted",
        "submitted_at": "2026-11-01T09:00:00.000000Z",
        "acknowledged": False,
        "acknowledged_at": None,
        "acknowledgement_due_at": "2026-11-08T09:00:00.000000Z",
        "messages": [],
        "status_label": "submitted",
        "level": None,
        "stalled": False,
        "outcome": None,
        "closed_at": None,
        "feedback_due_at": None,
        "clocks": [
            {
                "clock": "reporter_acknowledgement",
                "due_at": "2026-11-08T09:00:00.000000Z",
                "met_at": None,
                "breached": False,
            }
        ],
    }


def test_the_view_shows_acknowledgement_status_and_messages_but_no_handler() -> None:
    events = [
        SUBMITTED,
        event(
            "incident.reporter.message.v1",
            5,
            direction="from_reporter",
            author="reporter",
            text="More",
        ),
        event("incident.acknowledged.v1", 30, principal="p-chen", level=1),
        event("incident.commented.v1", 31, principal="p-chen", text="internal note"),
        event(
            "incident.reporter.message.v1",
            40,
            direction="to_reporter",
            author="p-chen",
            text="Thanks",
        ),
        event("incident.status.changed.v1", 50, principal="p-chen", status="investigating"),
    ]
    view = reporter_view(INCIDENT, events, acknowledgement_within=None)
    assert view.acknowledged and view.acknowledged_at == T0 + timedelta(minutes=30)
    assert view.status == "investigating"
    assert view.acknowledgement_due_at is None
    body = view.to_json()
    assert [(m["direction"], m["text"]) for m in body["messages"]] == [
        ("from_reporter", "More"),
        ("to_reporter", "Thanks"),
    ]
    assert "p-chen" not in str(body) and "internal note" not in str(body)


def test_triages_reporter_acknowledgement_deadline_wins_over_the_policy() -> None:
    decided = T0 + timedelta(days=3)
    triaged = event(
        "incident.triaged.v1",
        1,
        category="harassment",
        severity="high",
        policy_version="v",
        chain=[],
        deadlines={"reporter_acknowledgement": decided.isoformat()},
    )
    view = reporter_view(INCIDENT, [SUBMITTED, triaged], acknowledgement_within=7 * 86400)
    assert view.acknowledgement_due_at == decided


def test_nothing_known_gives_an_empty_view() -> None:
    view = reporter_view(INCIDENT, [], acknowledgement_within=86400)
    assert (view.status, view.submitted_at, view.acknowledgement_due_at) == ("new", None, None)
