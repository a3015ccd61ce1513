"""JSON text with a bound on nesting: like `json.loads` within the bound, refused beyond
it, and nothing but `ProtocolError` for any text at all."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collab_engine.errors import ProtocolError
from collab_engine.json_text import MAX_DEPTH, depth, parse

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)


def nested(value: Any, levels: int, kinds: list[bool]) -> Any:
    """`value` wrapped `levels` times, in arrays or objects as `kinds` says, in turn."""
    for level in range(levels):
        value = [value] if kinds[level % len(kinds)] else {"k": value}
    return value


def nesting(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    return 0


@given(
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=20,
    )
)
def test_any_json_within_the_limit_parses_like_json_loads(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, indent=1, ensure_ascii=False)):
        assert parse(text) == json.loads(text)
        assert parse(text.encode()) == json.loads(text)
        assert depth(text) == nesting(value)


@given(
    scalars,
    st.integers(min_value=0, max_value=MAX_DEPTH + 50),
    st.lists(st.booleans(), min_size=1, max_size=4),
)
def test_nesting_up_to_the_limit_parses_and_beyond_it_is_refused(
    leaf: Any, levels: int, kinds: list[bool]
) -> None:
    value = nested(leaf, levels, kinds)
    text = json.dumps(value)
    if levels <= MAX_DEPTH:
        assert parse(text) == json.loads(text)
        json.dumps(parse(text))  # and what is accepted serialises again
    else:
        with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_DEPTH} levels"):
            parse(text)


@given(st.text() | st.text(alphabet='[]{}"\\,:0 ') | st.binary().map(bytes))
def test_arbitrary_text_raises_nothing_but_protocol_error(text: str | bytes) -> None:
    try:
        parse(text)
    except ProtocolError as error:
        assert error.reason


@pytest.mark.parametrize(
    "text",
    [
        "[" * 30_000 + "]" * 30_000,
        '{"a":' * 30_000 + "1" + "}" * 30_000,
        "[" * 30_000,  # unterminated
        '["' + "[" * 30_000 + '"]' + "[" * (MAX_DEPTH + 1),  # brackets in a string don't count
    ],
    ids=["arrays", "objects", "unterminated", "after-a-string"],
)
def test_deep_text_is_refused_before_json_recurses(text: str) -> None:
    with pytest.raises(ProtocolError, match="nested deeper than"):
        parse(text)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"k": "[" * 1000 + "{" * 1000, "e": '\\"[[[['})
    assert depth(text) == 1
    assert parse(text) == json.loads(text)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}'])
def test_nan_and_infinity_are_refused(text: str) -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        parse(text)


def test_unterminated_strings_full_of_escaped_quotes_scan_in_linear_time() -> None:
    # Were an unterminated string not consumed once, each escaped quote in it would
    # start a rescan to the end: about ten minutes for this text, milliseconds here.
    # No time is asserted: the suite's per-test timeout (120 s) fails a rescan.
    text = '"' + '\\"' * 100_000 + "[" * (MAX_DEPTH + 1)
    assert depth(text) == 0  # the brackets are inside the (unterminated) string
    with pytest.raises(ProtocolError, match="Unterminated string"):
        parse(text)
