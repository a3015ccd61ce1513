"""JSON text from clients, parsed with a bound on its nesting. Pure.

Python's `json` recurses once per array or object it enters, in `loads` and in
`dumps` alike: a small body nested 30,000 deep raises `RecursionError` (or, on a
deep stack, worse) in whatever code happens to read it. `parse` is how every JSON
text a client sends is read (HTTP bodies, lock and version messages, awareness
states): it measures the nesting first, with a scan that does not recurse, and
refuses text nested deeper than `MAX_DEPTH` before `json` sees it. What it
accepts can be parsed and serialised again anywhere without recursing deeply.

The JSON is RFC 8259's: `NaN` and `Infinity` are refused (browsers' `JSON.parse`
cannot read them, so they must never be forwarded), bytes must be UTF-8.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from .errors import ProtocolError

MAX_DEPTH: Final = 100
"""The deepest nesting of arrays and objects accepted: `[[1]]` is 2 deep, a scalar 0.
Room for any document content or presence state we have seen (a few levels), far from
the interpreter's recursion limit (1,000 frames) on any stack."""

# One token: a string (its closing quote optional, so that an unterminated one is
# consumed once, rather than rescanned from each escaped quote inside it), or a bracket.
_TOKENS: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_DECODER: Final = json.JSONDecoder(parse_constant=_refuse_constant)
"""One decoder for every call (`json.loads` with an option builds a new one per call)."""


def depth(text: str, limit: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in `text`, counting brackets outside strings,
    without recursion; the count stops once it passes `limit` (it returns `limit + 1`).

    For JSON text it is the exact nesting. For any other text it is at least the
    nesting `json` reaches before it finds the error: `json` reads strings and
    brackets as this scan does up to that point.
    """
    deepest = level = 0
    for token in _TOKENS.finditer(text):
        first = token.group()[0]
        if first == '"':
            continue
        if first in "[{":
            level += 1
            if level > deepest:
                deepest = level
                if deepest > limit:
                    return deepest
        else:
            level -= 1
    return deepest


def parse(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The value of the JSON text `text` (bytes are read as UTF-8).

    For every `text` that `json.loads` accepts, nested at most `max_depth` deep and
    free of NaN and Infinity, the result equals `json.loads(text)`.

    Raises:
        ProtocolError: `text` is not JSON, is nested deeper than `max_depth`, or
            (bytes) is not UTF-8; the reason says which. Nothing else is raised,
            whatever the input (property-tested).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("not UTF-8") from None
    # Counting the brackets, in C, settles most texts (every small one) without a scan.
    if text.count("[") + text.count("{") > max_depth and depth(text, max_depth) > max_depth:
        raise ProtocolError(f"JSON nested deeper than {max_depth} levels")
    try:
        return _DECODER.decode(text)
    except ValueError as error:  # JSONDecodeError, NaN and Infinity
        raise ProtocolError(f"not JSON: {error}") from None
