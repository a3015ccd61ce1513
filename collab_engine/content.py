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
import json
from html import escape
from typing import Any
from xml.etree import ElementTree

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from . import json_text
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
        return {"type": "xml", "xml": xml_of(root)}
    raise TypeError(f"not a root type: {type(root).__name__}")


def xml_of(node: Any) -> str:
    """An XmlFragment, XmlElement or XmlText as XML, the way Yjs's `toString` renders
    it (element names lowercased; attributes sorted by name; formatted text as nested
    elements named by mark, sorted), but well-formed: `&`, `<`, `>` and `"` are
    escaped, and the same content always renders the same (pycrdt's own `str` gives
    attributes in hash order)."""
    if isinstance(node, XmlText):
        parts = []
        for insert, attributes in node.diff():
            if not isinstance(insert, str):
                continue  # an embed has no XML form (Yjs renders it as "[object Object]")
            marks = sorted((attributes or {}).items())
            opening = "".join(
                f"<{name}{_xml_attributes(value if isinstance(value, dict) else {})}>"
                for name, value in marks
            )
            closing = "".join(f"</{name}>" for name, _ in reversed(marks))
            parts.append(opening + escape(insert) + closing)
        return "".join(parts)
    children = "".join(xml_of(child) for child in node.children)
    if isinstance(node, XmlFragment):
        return children
    tag = node.tag.lower()
    return f"<{tag}{_xml_attributes(dict(node.attributes))}>{children}</{tag}>"


def _xml_attributes(attributes: dict[str, Any]) -> str:
    return "".join(
        f' {key}="{escape(_js_string(value), quote=True)}"'
        for key, value in sorted(attributes.items())
    )


def _js_string(value: Any) -> str:
    # As JavaScript's String(value), which Yjs uses, for the values Yjs holds.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(jsonable(value), ensure_ascii=False)
    return str(value)


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


def fill(doc: Doc[Any], roots: dict[str, Any]) -> None:
    """Make each root named in `roots` (JSON as `content_of` gives it) hold exactly
    that content, in one transaction: its old content is deleted, the new inserted.
    Roots not named are untouched.

    Text is filled from its delta (formatting and embeds kept), Map and Array from
    their values (nested objects and lists become plain JSON values, not nested
    types), XmlFragment from its XML (elements, attributes and text; formatting
    marks, rendered as elements by `xml_of`, come back as elements). The binary
    Yjs update is the lossless form of a document; this is for content made
    elsewhere.

    Raises:
        ValueError: a root's JSON is not of a known kind or shape, or its XML does
            not parse; nothing is changed then.
    """
    built = {name: _parsed(name, value) for name, value in roots.items()}
    with doc.transaction():
        for name, (kind, value) in built.items():
            root = doc.get(name, type=TYPES[kind])
            if kind == "text":
                del root[0 : len(root)]
                at, previous = 0, dict[str, Any]()
                for insert, attributes in value:
                    # Yrs extends the formatting on the left to unformatted text:
                    # end what the previous run had and this one has not, explicitly.
                    attributes = attributes or {}
                    ended = {key: None for key in previous if key not in attributes}
                    explicit = {**ended, **attributes} or None
                    if isinstance(insert, str):
                        root.insert(at, insert, explicit)
                        at += len(insert.encode("utf-8"))  # Yrs counts UTF-8 bytes
                    else:
                        root.insert_embed(at, insert, explicit)
                        at += 1
                    previous = attributes
            elif kind == "map":
                root.clear()
                for key, item in value.items():
                    root[key] = item
            elif kind == "array":
                root.clear()
                root.extend(value)
            else:
                while len(root.children):
                    del root.children[0]
                for node in value:
                    root.children.append(node)


def _parsed(name: str, value: Any) -> tuple[str, Any]:
    if not isinstance(value, dict) or value.get("type") not in TYPES:
        raise ValueError(
            f"root {name!r}: expected {{'type': 'text' | 'map' | 'array' | 'xml', ...}}"
        )
    kind = value["type"]
    if kind == "text":
        delta = value.get("delta")
        if delta is None:
            delta = [{"insert": value.get("text", "")}]
        if not isinstance(delta, list) or not all(
            isinstance(op, dict) and "insert" in op for op in delta
        ):
            raise ValueError(f"root {name!r}: a text delta is a list of {{'insert': ...}}")
        return kind, [(op["insert"], op.get("attributes")) for op in delta]
    if kind == "map":
        if not isinstance(value.get("value"), dict):
            raise ValueError(f"root {name!r}: a map's value is a JSON object")
        return kind, value["value"]
    if kind == "array":
        if not isinstance(value.get("value"), list):
            raise ValueError(f"root {name!r}: an array's value is a JSON list")
        return kind, value["value"]
    xml = value.get("xml", "")
    if not isinstance(xml, str):
        raise ValueError(f"root {name!r}: an xml root's value is a string of XML")
    try:
        tree = ElementTree.fromstring(f"<root>{xml}</root>")
    except ElementTree.ParseError as exc:
        raise ValueError(f"root {name!r}: the XML does not parse ({exc})") from exc
    if _xml_depth(tree) > MAX_XML_DEPTH:
        raise ValueError(f"root {name!r}: the XML is nested deeper than {MAX_XML_DEPTH} elements")
    return kind, _xml_nodes(tree)


MAX_XML_DEPTH = json_text.MAX_DEPTH
"""The deepest nesting of elements an imported XML root may have: building it
recurses once per level, as reading it back (`xml_of`) does."""


def _xml_depth(tree: ElementTree.Element) -> int:
    # Without recursion: the tree is what is being measured before recursing into it.
    deepest, stack = 0, [(tree, 0)]
    while stack:
        element, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > MAX_XML_DEPTH:
                break
        stack.extend((child, level + 1) for child in element)
    return deepest


def _xml_nodes(element: ElementTree.Element) -> list[Any]:
    nodes: list[Any] = []
    if element.text:
        nodes.append(XmlText(element.text))
    for child in element:
        nodes.append(XmlElement(child.tag, dict(child.attrib), _xml_nodes(child)))
        if child.tail:
            nodes.append(XmlText(child.tail))
    return nodes
