"""Content: what a document holds, as JSON, root by root.

    {"body":  {"type": "text", "text": "Hello", "delta": [{"insert": "Hello"}]},
     "meta":  {"type": "map", "value": {"title": "Notes"}},
     "items": {"type": "array", "value": [1, 2]},
     "prosemirror": {"type": "xml", "xml": "<paragraph>Hello</paragraph>"}}

A Yjs update does not say which type each root is; `blocks.root_kinds` reads it
from the items. A root whose content was all deleted (and garbage-collected) has no
kind left to read: it is reported with the kind a `hint` gives (the newest state,
say), or as {"type": null} when nothing tells. Text positions in Yjs count UTF-16
code units; `utf16_length` is that count for a Python string. Pure: a document in,
values out.
"""

from __future__ import annotations

import base64
from typing import Any

from pycrdt import Array, Doc, Map, Text, XmlFragment

from .blocks import root_kinds

TYPES: dict[str, type[Any]] = {"text": Text, "map": Map, "array": Array, "xml": XmlFragment}
"""The pycrdt type of each root kind."""

EMBED = "\ufffc"
"""How an embed (an image in Quill, say) stands in a Text's plain text: one unit, as in Yjs."""


def utf16_length(text: str) -> int:
    """The length of `text` in UTF-16 code units: how Yjs counts text positions."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def kinds_of(doc: Doc[Any], hint: dict[str, str] | None = None) -> dict[str, str]:
    """The kind of each root of `doc` ("text", "map", "array", "xml"); `hint` gives the
    kind of roots `doc` no longer tells (every item deleted)."""
    kinds = root_kinds(doc.get_update())
    for name in doc.keys():
        if name not in kinds and hint is not None and name in hint:
            kinds[name] = hint[name]
    return kinds


def typed_roots(doc: Doc[Any], kinds: dict[str, str]) -> dict[str, Any]:
    """The roots of `doc` named in `kinds`, as their pycrdt types."""
    return {name: doc.get(name, type=TYPES[kind]) for name, kind in sorted(kinds.items())}


def content_of(doc: Doc[Any], hint: dict[str, str] | None = None) -> dict[str, Any]:
    """Every root of `doc` as JSON (see the module's docstring)."""
    kinds = kinds_of(doc, hint)
    roots: dict[str, Any] = {}
    for name, root in typed_roots(doc, kinds).items():
        roots[name] = root_json(root)
    for name in sorted(set(doc.keys()) - set(kinds)):
        roots[name] = {"type": None}
    return roots


def root_json(root: Any) -> dict[str, Any]:
    """One root (a pycrdt Text, Map, Array or XmlFragment) as JSON."""
    if isinstance(root, Text):
        delta = text_delta(root)
        plain = "".join(op["insert"] if isinstance(op["insert"], str) else EMBED for op in delta)
        return {"type": "text", "text": plain, "delta": delta}
    if isinstance(root, Map):
        return {"type": "map", "value": jsonable(root.to_py())}
    if isinstance(root, Array):
        return {"type": "array", "value": jsonable(root.to_py())}
    if isinstance(root, XmlFragment):
        return {"type": "xml", "xml": str(root)}
    raise TypeError(f"not a root type: {type(root).__name__}")


def text_delta(text: Text) -> list[dict[str, Any]]:
    """`text` as a Yjs delta: [{"insert": str | embed, "attributes": {...}}, ...]."""
    delta: list[dict[str, Any]] = []
    for insert, attributes in text.diff():
        op: dict[str, Any] = {"insert": insert if isinstance(insert, str) else jsonable(insert)}
        if attributes:
            op["attributes"] = jsonable(attributes)
        delta.append(op)
    return delta


def jsonable(value: Any) -> Any:
    """`value` (as pycrdt's `to_py` gives it) with what JSON cannot hold made so:
    bytes as {"$bytes": base64}, nested types as their JSON."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Text | Map | Array | XmlFragment):
        return root_json(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # Yjs numbers are doubles; 1.0 reads better as 1
    return value
