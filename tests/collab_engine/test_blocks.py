"""Reading a client's blocks out of a Yjs update."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from collab_engine.blocks import client_blocks
from collab_engine.errors import ProtocolError
from collab_engine.protocol import decode_state_vector

edits = st.lists(
    st.tuples(
        st.sampled_from(["text", "delete", "map", "array", "xml"]), st.text(min_size=1, max_size=5)
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=50, deadline=None)
@given(edits)
def test_blocks_cover_each_clients_clock_range(script: list[tuple[str, str]]) -> None:
    """Whatever the content (strings with astral characters, maps of any values,
    arrays, XML), a client's blocks tile its clock range [0, state) without a gap."""
    doc: Doc = Doc()
    text = doc.get("t", type=Text)
    table = doc.get("m", type=Map)
    array = doc.get("a", type=Array)
    xml = doc.get("x", type=XmlFragment)
    for kind, value in script:
        if kind == "text":
            text.insert(0, value)
        elif kind == "delete" and len(str(text)):
            first = str(text)[0]
            del text[0 : len(first.encode())]
        elif kind == "map":
            table[value] = {"n": 1.5, "list": [value, None, True], "big": 2**40}
        elif kind == "array":
            array.append(value)
            array.append(b"bytes")
        else:
            xml.children.append(XmlElement("p", {"k": value}, [XmlText(value)]))
    blocks = client_blocks(doc.get_update(), doc.client_id)
    clock = 0
    for start, length in blocks.starts:
        assert start == clock and length > 0
        clock += length
    assert clock == decode_state_vector(doc.get_state())[doc.client_id]
    assert client_blocks(doc.get_update(), doc.client_id + 1).starts == []


def test_deleted_ranges_are_read() -> None:
    doc: Doc = Doc()
    text = doc.get("t", type=Text)
    text += "ab😀cd"
    del text[1:6]  # "b😀" in UTF-8 bytes
    blocks = client_blocks(doc.get_update(), doc.client_id)
    assert blocks.is_deleted(1) and blocks.is_deleted(3) and not blocks.is_deleted(4)
    assert blocks.block_of(2) is not None and blocks.block_of(99) is None


@pytest.mark.parametrize("data", [b"", b"\x01\x01", b"\x01\x01\x05\x00\x1f"])
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        client_blocks(data, 5)
