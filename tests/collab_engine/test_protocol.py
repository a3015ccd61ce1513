"""The y-websocket codec: round-trips, the exact bytes of known messages, and a
decoder that turns any input into a message or a ProtocolError, never anything else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Text

from collab_engine import protocol
from collab_engine.errors import ProtocolError
from collab_engine.protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    LockReply,
    LockRequest,
    PermissionDenied,
    Persisted,
    QueryAwareness,
    RequestPersisted,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    VersionReply,
    VersionRequest,
    decode,
    encode,
)
from collab_engine.types import ClientId

var_uints = st.integers(min_value=0, max_value=protocol.MAX_VAR_UINT)
json_objects = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=4,
)
entries = st.builds(
    AwarenessEntry,
    var_uints.map(ClientId),
    var_uints,
    st.none() | json_objects.map(lambda value: json.dumps(value, separators=(",", ":"))),
)
messages = st.one_of(
    st.builds(SyncStep1, st.binary(max_size=64)),
    st.builds(SyncStep2, st.binary(max_size=64)),
    st.builds(SyncUpdate, st.binary(max_size=64)),
    st.builds(AwarenessUpdate, st.lists(entries, max_size=5).map(tuple)),
    st.builds(PermissionDenied, st.text(max_size=40)),
    st.just(QueryAwareness()),
    st.just(RequestPersisted()),
    st.builds(Persisted, var_uints),
    st.builds(LockRequest, json_objects.map(json.dumps)),
    st.builds(LockReply, json_objects.map(json.dumps)),
    st.builds(VersionRequest, json_objects.map(json.dumps)),
    st.builds(VersionReply, json_objects.map(json.dumps)),
)


@given(messages)
def test_round_trip(message: protocol.Message) -> None:
    """Every message decodes back to itself from its encoding."""
    assert decode(encode(message)) == message


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    """Arbitrary bytes give a message or ProtocolError; nothing else escapes."""
    try:
        message = decode(data)
    except ProtocolError:
        return
    # What decodes must encode back to the very same bytes (no lenient parsing).
    assert encode(message) == data


@given(messages, st.integers(min_value=0, max_value=1000), st.binary(min_size=1, max_size=4))
def test_mutated_messages_never_escape(message: protocol.Message, at: int, junk: bytes) -> None:
    """Valid messages with bytes cut, appended or overwritten still decode safely."""
    frame = encode(message)
    at %= len(frame) + 1
    for variant in (frame[:at], frame + junk, frame[:at] + junk + frame[at + len(junk) :]):
        try:
            decode(variant)
        except ProtocolError:
            pass


def test_known_bytes_match_y_protocols() -> None:
    """The encodings are byte for byte those of y-protocols (lib0) for known inputs."""
    doc = Doc()
    doc["t"] = text = Text()
    text += "hi"
    update = doc.get_update()
    assert encode(SyncUpdate(update)) == b"\x00\x02" + bytes([len(update)]) + update
    assert encode(SyncStep1(b"\x00")) == b"\x00\x00\x01\x00"
    assert encode(QueryAwareness()) == b"\x03"
    assert encode(PermissionDenied("no")) == b"\x02\x00\x02no"
    entry = AwarenessEntry(ClientId(300), 2, '{"a":1}')
    # 300 = 0b1_0010_1100 → 0xAC 0x02 in LEB128.
    body = b"\x01" + b"\xac\x02" + b"\x02" + b"\x07" + b'{"a":1}'
    assert encode(AwarenessUpdate((entry,))) == b"\x01" + bytes([len(body)]) + body


def test_our_messages_bytes() -> None:
    """Our own messages, as the README documents them."""
    assert encode(RequestPersisted()) == b"\x64\x00"
    assert encode(Persisted(300)) == b"\x64\x01\xac\x02"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        pytest.param(b"", "truncated", id="empty"),
        pytest.param(b"\x07", "unknown message type 7", id="unknown-type"),
        pytest.param(b"\x00\x05\x00", "unknown sync message type 5", id="unknown-sync"),
        pytest.param(b"\x00\x02\x05ab", "5 bytes announced", id="short-payload"),
        pytest.param(b"\x03\x00", "unexpected bytes", id="trailing"),
        pytest.param(b"\x02\x01", "unknown auth message type", id="unknown-auth"),
        pytest.param(b"\x64\x09", "unknown collab-engine message type 9", id="unknown-ours"),
        pytest.param(b"\x64\x01", "truncated", id="persisted-without-count"),
        pytest.param(b"\x00\x02" + b"\xff" * 9 + b"\x01", "53 bits", id="huge-varuint"),
        pytest.param(b"\x01\x06\x01\x01\x01\x02\xc3\x28", "UTF-8", id="bad-utf8"),
        pytest.param(b"\x01\x06\x01\x01\x01\x02[]", "object or null", id="not-object"),
        pytest.param(b"\x01\x07\x01\x01\x01\x03NaN", "not valid JSON", id="nan"),
        pytest.param(b"\x01\x03\xff\xff\x03", "announces", id="impossible-count"),
    ],
)
def test_malformed_frames_name_the_problem(frame: bytes, reason: str) -> None:
    """Each kind of malformed frame is refused with a reason that says what is wrong."""
    with pytest.raises(ProtocolError, match=reason):
        decode(frame)


@given(st.lists(entries, min_size=1, max_size=5).map(tuple))
def test_decoded_awareness_states_come_parsed(items: tuple[AwarenessEntry, ...]) -> None:
    """The codec hands on each state it parsed to check it (`value`, what the presence
    policy reads), equal to the state's JSON; it takes no part in equality."""
    decoded = decode(encode(AwarenessUpdate(items)))
    assert isinstance(decoded, AwarenessUpdate) and decoded == AwarenessUpdate(items)
    for entry in decoded.entries:
        assert entry.value == (None if entry.state is None else json.loads(entry.state))


def test_null_state_is_a_removal() -> None:
    """An awareness state `null` decodes as a removal (state None)."""
    frame = encode(AwarenessUpdate((AwarenessEntry(ClientId(1), 3, None),)))
    assert decode(frame) == AwarenessUpdate((AwarenessEntry(ClientId(1), 3, None),))
