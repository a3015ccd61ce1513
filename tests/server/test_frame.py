"""The frame codec against wsproto, hypercorn's own: what it encodes, ours parses."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from collab_engine.errors import BadFrame, MessageTooBig
from server.frame import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    SPLIT,
    TEXT,
    ClientFrames,
    framed,
    header,
    joined,
    writes,
)


@given(st.binary(max_size=300) | st.integers(0, 70_000).map(bytes))
def test_frames_match_wsproto(payload: bytes) -> None:
    """Header and payload, for every length class (7, 16 and 64 bits), as a server's
    unmasked, final, binary frame."""
    expected = FrameProtocol(client=False, extensions=[]).send_data(payload, fin=True)
    assert framed(payload) == expected
    assert header(len(payload)) + payload == expected


_payload = st.binary(max_size=200) | st.sampled_from([SPLIT - 1, SPLIT, SPLIT + 5]).map(
    lambda n: b"y" * n
)


@given(st.lists(_payload, min_size=1, max_size=8))
def test_writes_are_the_frames_in_as_few_buffers_as_small_runs(payloads: list[bytes]) -> None:
    """Written one after the other, the buffers are exactly the frames in order; each
    run of small payloads is one buffer (one system call), a large payload is its
    header and itself, never copied."""
    out = writes(payloads)
    assert b"".join(out) == b"".join(framed(p) for p in payloads)
    large = [p for p in payloads if len(p) >= SPLIT]
    runs = 0
    previous_small = False
    for payload in payloads:
        small = len(payload) < SPLIT
        runs += small and not previous_small
        previous_small = small
    assert len(out) == runs + 2 * len(large)
    for payload in large:
        assert any(buffer is payload for buffer in out)


def test_an_edit_and_a_cursor_move_are_one_write() -> None:
    update, awareness = b"\x00\x02" + b"u" * 30, b"\x01" + b"a" * 90
    assert writes([update, awareness]) == [framed(update) + framed(awareness)]
    assert writes([update]) == [framed(update)]


def test_a_turns_frames_are_joined_once_for_every_receiver() -> None:
    """The receivers of a room's broadcasts get the same frames in a turn: their
    buffers are built once (the same objects come back); large ones are not kept."""
    update, awareness = b"\x00\x02" + b"u" * 30, b"\x01" + b"a" * 90
    first = joined((update, awareness))
    assert list(first) == writes([update, awareness])
    assert joined((update, awareness)) is first
    large = (update, b"\x00\x02" + b"x" * SPLIT)
    assert list(joined(large)) == writes(list(large))
    assert joined(large) is not joined(large)


# A client's traffic: messages (binary or text, cut in fragments) with pings and
# pongs between them and between a message's fragments.
_binary = st.binary(max_size=200) | st.integers(0, 70_000).map(lambda n: b"x" * n)
_text = st.text(max_size=100).map(str.encode)
_message = st.tuples(st.just(BINARY), st.lists(_binary, min_size=1, max_size=4)) | st.tuples(
    st.just(TEXT), st.lists(_text, min_size=1, max_size=4)
)
_control = st.tuples(st.sampled_from([PING, PONG]), st.binary(max_size=125))
_traffic = st.lists(st.tuples(_message, st.lists(_control, max_size=2)), max_size=6)


def _encode(
    traffic: list[tuple[tuple[int, list[bytes]], list[tuple[int, bytes]]]],
) -> tuple[bytes, list[tuple[int, bytes]]]:
    """wsproto's client bytes for `traffic` (each message's control frames go after
    its first fragment), and what a parser must give back."""
    proto = FrameProtocol(client=True, extensions=[])
    data = b""
    expected: list[tuple[int, bytes]] = []
    for (opcode, parts), controls in traffic:
        for index, part in enumerate(parts):
            body: bytes | str = part.decode() if opcode == TEXT else part
            final = index == len(parts) - 1
            data += proto.send_data(body, fin=final)
            if final:
                expected.append((opcode, b"".join(parts)))
            if index == 0:
                for control, payload in controls:
                    data += proto.ping(payload) if control == PING else proto.pong(payload)
                    expected.append((control, payload))
    return data, expected


@given(_traffic, st.lists(st.integers(1, 70_000), max_size=20))
def test_client_frames_parse_whatever_the_cuts(
    traffic: list[tuple[tuple[int, list[bytes]], list[tuple[int, bytes]]]], cuts: list[int]
) -> None:
    """wsproto's client frames, fed in pieces cut anywhere, come back as the same
    messages (fragments joined) and control frames, in order, and nothing is left."""
    data, expected = _encode(traffic)
    frames = ClientFrames(max_message=1 << 20)
    got: list[tuple[int, bytes]] = []
    position = 0
    for cut in [*cuts, len(data)]:
        frames.feed(data[position : position + cut])
        position += cut
        while (item := frames.next()) is not None:
            got.append(item)
        if position >= len(data):
            break
    frames.feed(data[position:])
    while (item := frames.next()) is not None:
        got.append(item)
    assert got == expected
    assert frames.rest() == b""


def test_close_frame_is_left_for_the_closing_handshake() -> None:
    """A close frame stops the parser, with the close frame's bytes in `rest`."""
    proto = FrameProtocol(client=True, extensions=[])
    before = proto.send_data(b"abc", fin=True)
    close = proto.close(1000, "bye")
    frames = ClientFrames(max_message=100)
    frames.feed(before + close[:3])
    assert frames.next() == (BINARY, b"abc")
    assert frames.next() == (CLOSE, b"")
    frames.feed(close[3:])
    assert frames.next() == (CLOSE, b"")
    assert frames.rest() == close


def _frame(first: int, second: int, rest: bytes = b"\x00\x00\x00\x00") -> bytes:
    return bytes((first, second)) + rest


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_frame(0x82, 0x00, b""), "masked"),
        (_frame(0xC2, 0x80), "reserved bits"),
        (_frame(0x83, 0x80), "unknown data opcode"),
        (_frame(0x8B, 0x80), "unknown control opcode"),
        (_frame(0x80, 0x80), "no message to continue"),
        (_frame(0x09, 0x80), "not fragmented"),
        (_frame(0x89, 0xFE, b"\x00\x7e"), "at most 125 bytes"),
        (_frame(0x02, 0x81, b"\x00\x00\x00\x00a") + _frame(0x82, 0x80), "before the fragmented"),
        (bytes((0x82, 0xFF)) + b"\x80" + b"\x00" * 7, "most significant bit"),
    ],
)
def test_frames_that_break_rfc_6455_raise_bad_frame(data: bytes, reason: str) -> None:
    """Each thing a client must not send raises BadFrame (1002), naming it."""
    frames = ClientFrames(max_message=1000)
    frames.feed(data)
    with pytest.raises(BadFrame, match=reason) as caught:
        while frames.next() is not None:
            pass
    assert caught.value.close_code == 1002


def test_a_message_over_the_limit_is_refused_from_its_header() -> None:
    """The size is checked from the header, before the payload arrives, and counts
    every fragment of the message."""
    frames = ClientFrames(max_message=100)
    frames.feed(struct.pack("!BBH", 0x82, 0x80 | 126, 101))
    with pytest.raises(MessageTooBig) as caught:
        frames.next()
    assert caught.value.close_code == 1009
    proto = FrameProtocol(client=True, extensions=[])
    frames = ClientFrames(max_message=100)
    frames.feed(proto.send_data(b"a" * 60, fin=False))
    assert frames.next() is None
    frames.feed(proto.send_data(b"a" * 41, fin=True)[:4])
    with pytest.raises(MessageTooBig):
        frames.next()
    frames = ClientFrames(max_message=100)
    frames.feed(proto.send_data(b"a" * 100, fin=True))
    assert frames.next() == (Opcode.BINARY.value, b"a" * 100)
