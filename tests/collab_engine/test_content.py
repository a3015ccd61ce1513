"""Content of a document as JSON: root kinds read from updates, XML rendering, and
filling roots back from the JSON."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

import pytest
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from collab_engine.blocks import root_kinds
from collab_engine.content import content_of, fill, utf16_length, xml_of


def sample() -> Doc[Any]:
    doc: Doc[Any] = Doc()
    body = doc["body"] = Text("héllo 😀 wörld")
    body.format(0, len("héllo".encode()), {"bold": True})
    body.insert_embed(len("héllo 😀".encode()), {"image": "cat.png"})
    doc["meta"] = Map({"title": "T", "nested": {"list": [1, 2]}})
    doc["items"] = Array([1, "two", None, True])
    fragment = doc["prosemirror"] = XmlFragment()
    paragraph = fragment.children.append(XmlElement("Paragraph", {"zeta": "z", "alpha": 1}))
    text = paragraph.children.append(XmlText('a & b <c> "d"'))
    text.format(0, 1, {"link": {"href": "x?a=1&b=2", "title": None}, "bold": True})
    return doc


def test_root_kinds_come_from_the_items_even_when_the_first_is_deleted() -> None:
    """Each root's type is read from its items; a root whose parent-naming items
    are all deleted is found through the origins of the items placed after them."""
    doc = sample()
    emptied = doc["emptied"] = Text("abc")
    del emptied[0:3]
    emptied.insert(0, "z")  # placed by its right origin, a deleted item: names no parent
    keyed = doc["keyed"] = Map({"a": 1})
    del keyed["a"]  # a deleted key still says "map"
    assert root_kinds(doc.get_update()) == {
        "body": "text",
        "meta": "map",
        "items": "array",
        "prosemirror": "xml",
        "emptied": "text",
        "keyed": "map",
    }


def test_xml_renders_like_yjs_but_well_formed_and_always_the_same() -> None:
    """Names lowercased, attributes sorted, marks as nested elements in name order,
    special characters escaped: it parses as XML."""
    xml = xml_of(sample().get("prosemirror", type=XmlFragment))
    assert xml == (
        '<paragraph alpha="1" zeta="z"><bold><link href="x?a=1&amp;b=2" title="null">a'
        "</link></bold> &amp; b &lt;c&gt; &quot;d&quot;</paragraph>"
    )
    ElementTree.fromstring(f"<root>{xml}</root>")


def test_content_of_a_document_and_filling_it_back() -> None:
    """Text (plain, delta with formatting and embed), Map, Array and XML as JSON;
    `fill` makes another document's roots hold the same, replacing what they had."""
    doc = sample()
    content = content_of(doc)
    assert content["body"]["text"] == "héllo 😀\ufffc wörld"
    assert content["body"]["delta"][0] == {"insert": "héllo", "attributes": {"bold": True}}
    assert content["body"]["delta"][2] == {"insert": {"image": "cat.png"}}
    assert content["meta"]["value"] == {"title": "T", "nested": {"list": [1, 2]}}
    assert content["items"]["value"] == [1, "two", None, True]
    other: Doc[Any] = Doc()
    other["body"] = Text("something else entirely")
    other["items"] = Array(["old"])
    other["untouched"] = Text("stays")
    fill(other, content)
    filled = content_of(other)
    # XML marks come back as elements, which render the same.
    assert {name: filled[name] for name in content} == content
    assert filled["untouched"]["text"] == "stays"


@pytest.mark.parametrize(
    "roots",
    [
        {"a": {"type": "set"}},
        {"a": {"type": "map", "value": [1]}},
        {"a": {"type": "text", "delta": [{"retain": 1}]}},
        {"a": {"type": "xml", "xml": "<p>unclosed"}},
    ],
)
def test_bad_content_changes_nothing(roots: dict[str, Any]) -> None:
    doc: Doc[Any] = Doc()
    doc["keep"] = Text("kept")
    before = doc.get_update()
    with pytest.raises(ValueError, match="root 'a'"):
        fill(doc, {"keep": {"type": "text", "text": "replaced"}, **roots})
    assert doc.get_update() == before


def test_utf16_length_counts_as_yjs() -> None:
    assert utf16_length("a😀é") == 4
