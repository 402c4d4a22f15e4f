"""verify's fast proofs that a leaf is canonical JSON (`_canonical_body` into dicts,
`_canonical_leaf` into structs) must never accept what the exact one refuses:
`canonical_json` (the standard library's encoder) is the definition."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.audit.verify import _Bad, _canonical_body, _canonical_leaf, _leaf_body
from services.domain.envelope import canonical_json

LEAF = {"v": 1, "index": 7, "recorded_at": "2026-11-25T10:00:00.000001Z", "topic": "t"}


def _as_struct(leaf: bytes) -> dict[str, Any] | None:
    """`_canonical_leaf`'s reading as the JSON value it stands for, or None."""
    body = _canonical_leaf(leaf, bytearray())
    return None if body is None else msgspec.to_builtins(body)  # type: ignore[no-any-return]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400)
@given(json_values)
def test_the_fast_path_only_accepts_what_canonical_json_writes(value: Any) -> None:
    body = {**LEAF, "event": {"data": value}}
    for leaf in {canonical_json(body), _orjson_or_none(body)} - {None}:
        for read in (_canonical_body, _as_struct):
            fast = read(leaf)  # type: ignore[arg-type]
            if fast is not None:
                assert leaf == canonical_json(fast)
                assert fast == json.loads(leaf)


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    )
)
def test_a_canonical_leaf_without_floats_takes_the_fast_path(value: Any) -> None:
    body = {**LEAF, "event": {"data": value}}
    assert _canonical_body(canonical_json(body)) == body
    assert _as_struct(canonical_json(body)) == body


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12) | st.sampled_from([*sorted(LEAF), "event", "raw"]),
        st.integers(-3, 3) | st.text(max_size=3) | st.none(),
        max_size=5,
    ),
    st.dictionaries(
        st.text(min_size=1, max_size=12)
        | st.sampled_from(["actor", "data", "id", "signature", "time", "type"]),
        st.integers(-3, 3) | st.text(max_size=3),
        max_size=5,
    ),
)
def test_the_struct_path_reads_only_what_canonical_json_writes(
    top: dict[str, Any], event: dict[str, Any]
) -> None:
    """Any keys, known to the structs or not: what is read is the leaf's whole value,
    and an unknown key, at the top or in the event, is never read this way."""
    body = {"index": 7, "recorded_at": LEAF["recorded_at"], **top, "event": event}
    leaf = canonical_json(body)
    fast = _as_struct(leaf)
    if fast is not None:
        assert fast == body == json.loads(leaf)
    fields = set(LEAF) | {"event", "offset", "partition", "raw", "reason"}
    attributes = {"actor", "data", "id", "signature", "time", "type"}
    typed = type(body["index"]) is int and type(body["recorded_at"]) is str
    if set(top) <= fields and set(event) <= attributes and typed:
        assert fast == body  # a canonical leaf of known keys takes the fast path


@pytest.mark.parametrize(
    "text",
    [
        '{"event":{"x":0.00001},"index":7,"recorded_at":"2026-11-25T10:00:00.000001Z","v":1}',
        '{"event":{"x":[1,0.00001]},"index":7,"recorded_at":"2026-11-25T10:00:00.000001Z","v":1}',
        '{"event":{"x":1E+16},"index":7,"recorded_at":"2026-11-25T10:00:00.000001Z","v":1}',
        '{"event":{"x":1},"index":7,"v":1,"recorded_at":"2026-11-25T10:00:00.000001Z"}',
        '{"event":{"x":1}, "index":7,"recorded_at":"2026-11-25T10:00:00.000001Z","v":1}',
        '{"event":{"x":"\\u00e9"},"index":7,"recorded_at":"2026-11-25T10:00:00.000001Z","v":1}',
        '{"event":{"x":1,"x":1},"index":7,"recorded_at":"2026-11-25T10:00:00.000001Z","v":1}',
        '{"event":{"x":{"b":1,"a":2}},"index":7,"recorded_at":"2026-11-25T10:00:00.000001Z","v":1}',
    ],
    ids=[
        "orjson float",
        "orjson float in a list",
        "upper-case E",
        "unsorted",
        "space",
        "escape",
        "duplicate key",
        "unsorted inside",
    ],
)
def test_a_leaf_that_is_not_canonical_is_refused(text: str) -> None:
    leaf = text.encode()
    assert canonical_json(json.loads(leaf)) != leaf  # the definition refuses it
    assert _canonical_body(leaf) is None
    # the same in an attribute the struct path reads (it never reads "x")
    assert _as_struct(text.replace('"x"', '"data"').encode()) is None
    assert (
        _as_struct(text.replace('"x"', '"data"').replace('"v":1', '"v":1,"zz":0').encode()) is None
    )
    with pytest.raises(_Bad, match="not canonical JSON"):
        _leaf_body(leaf, 7)


def test_a_canonical_leaf_with_a_float_is_still_accepted_the_exact_way() -> None:
    body = {**LEAF, "event": {"x": 1e-05, "y": [0.5]}}
    leaf = canonical_json(body)
    assert _canonical_body(leaf) is None  # floats never take the fast path
    assert _as_struct(leaf) is None
    assert _leaf_body(leaf, 7) == body


def _orjson_or_none(body: dict[str, Any]) -> bytes | None:
    try:
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # integers beyond 64 bits
        return None
