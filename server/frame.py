"""WebSocket frames (RFC 6455, section 5) on the server's side: pure, no I/O.

A server's frames are not masked, so the frame that carries one payload is the same
bytes for every receiver (`framed`). A client's frames are masked, and may split a
message into fragments with control frames between them: `ClientFrames` turns the
bytes a client sends, cut anywhere, back into whole messages and control frames.

Nothing was negotiated (the server declines permessage-deflate unless configured,
and then reads through hypercorn instead), so a reserved bit set is an error, as is
everything else RFC 6455 forbids of a client: `BadFrame` (1002). A message over the
size limit is refused from its header, before its payload is buffered
(`MessageTooBig`, 1009).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Final

from collab_engine.errors import BadFrame, MessageTooBig
from collab_engine.types import Frame

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

_FIN: Final = 0x80
_RESERVED: Final = 0x70
_MASKED: Final = 0x80


def header(length: int, opcode: int = BINARY) -> bytes:
    """The header of a server's final, unmasked frame of `length` payload bytes."""
    first = _FIN | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


@lru_cache(maxsize=256)
def framed(payload: Frame) -> bytes:
    """`payload` as one whole binary frame from the server.

    One broadcast hands the same payload object to every receiver: its frame is
    built once (bytes cache their hash, so the lookup is cheap after the first)."""
    return header(len(payload)) + payload


SPLIT: Final = 64 * 1024
"""Payloads at least this large are written after their header, not copied behind it."""


def writes(payloads: Sequence[Frame]) -> list[bytes]:
    """What to write to the socket for `payloads`, in order, as binary frames: each
    run of payloads under `SPLIT` bytes joined into one buffer (one write, so one
    system call, however many frames), a larger payload after its own header."""
    out: list[bytes] = []
    small: list[bytes] = []
    for payload in payloads:
        if len(payload) < SPLIT:
            small.append(framed(payload))
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(header(len(payload)))
        out.append(payload)
    if small:
        out.append(b"".join(small))
    return out


def joined(payloads: tuple[Frame, ...]) -> Sequence[bytes]:
    """`writes` for a tuple of payloads, cached by the payloads themselves when they
    are under `SPLIT` bytes in all: the receivers of one broadcast get the same
    frames in a turn, and their bytes are then built once for all of them."""
    if sum(map(len, payloads)) < SPLIT:
        return _joined(payloads)
    return writes(payloads)


@lru_cache(maxsize=256)
def _joined(payloads: tuple[Frame, ...]) -> tuple[bytes, ...]:
    return tuple(writes(payloads))


PING_FRAME: Final = bytes((_FIN | PING, 0))
"""A server's keepalive ping, with no payload."""


def pong(payload: bytes) -> bytes:
    """The answer to a ping that carried `payload` (at most 125 bytes)."""
    return bytes((_FIN | PONG, len(payload))) + payload


class ClientFrames:
    """The frames a client sends, parsed from its bytes as they arrive.

    `feed` the bytes, then call `next` until it returns None. Each call returns the
    next whole message, its fragments joined (`TEXT` or `BINARY`, payload), or the
    next ping or pong (payload), in the order the client sent them. A close frame
    is not parsed: `next` returns (`CLOSE`, b"") on its first byte, every call
    after, and `rest()` gives the bytes from the close frame on, for whoever does
    the closing handshake.

    Args:
        max_message: the largest message accepted, in payload bytes (fragments
            summed).
    """

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = bytearray()
        self._start = 0
        """Where the next frame begins in `_buffer` (what is before it is parsed)."""
        self._opcode = 0
        """The opcode of the fragmented message in progress; 0 when there is none."""
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        """Add bytes received from the client."""
        buffer = self._buffer
        if self._start:
            del buffer[: self._start]
            self._start = 0
        buffer += data

    def next(self) -> tuple[int, bytes] | None:
        """The next message or control frame, or None until more bytes are fed.

        Raises:
            BadFrame: the client broke RFC 6455; nothing after it can be parsed.
            MessageTooBig: a message is over `max_message` bytes.
        """
        buffer = self._buffer
        while True:
            start = self._start
            available = len(buffer) - start
            if available < 2:
                return None
            first = buffer[start]
            second = buffer[start + 1]
            opcode = first & 0x0F
            if opcode == CLOSE:
                return CLOSE, b""
            if first & _RESERVED:
                raise BadFrame("reserved bits set, but no extension was negotiated")
            if not second & _MASKED:
                raise BadFrame("a client's frames must be masked")
            length = second & 0x7F
            at = start + 2
            if length == 126:
                if available < 4:
                    return None
                length = int.from_bytes(buffer[at : at + 2], "big")
                at += 2
            elif length == 127:
                if available < 10:
                    return None
                length = int.from_bytes(buffer[at : at + 8], "big")
                at += 8
                if length >> 63:
                    raise BadFrame("frame length with its most significant bit set")
            final = first & _FIN
            if opcode >= CLOSE:
                if opcode != PING and opcode != PONG:
                    raise BadFrame(f"unknown control opcode {opcode:#x}")
                if length > 125 or not final:
                    raise BadFrame("control frames carry at most 125 bytes and are not fragmented")
            else:
                if opcode == CONTINUATION:
                    if not self._opcode:
                        raise BadFrame("continuation frame with no message to continue")
                elif opcode == TEXT or opcode == BINARY:
                    if self._opcode:
                        raise BadFrame("new message before the fragmented one ended")
                else:
                    raise BadFrame(f"unknown data opcode {opcode:#x}")
                if self._size + length > self.max_message:
                    raise MessageTooBig(
                        f"frame of {self._size + length} bytes is over {self.max_message}"
                    )
            end = at + 4 + length
            if len(buffer) < end:
                return None
            payload = _unmask(buffer[at : at + 4], buffer[at + 4 : end])
            self._start = end
            if opcode >= CLOSE:
                return opcode, payload
            if final and not self._opcode:
                return opcode, payload
            self._parts.append(payload)
            self._size += length
            if opcode:
                self._opcode = opcode
            if final:
                kind, parts = self._opcode, self._parts
                self._opcode, self._parts, self._size = 0, [], 0
                return kind, b"".join(parts)

    def rest(self) -> bytes:
        """The bytes fed and not parsed, from the start of the next frame."""
        return bytes(self._buffer[self._start :])


def _unmask(mask: bytearray, data: bytearray) -> bytes:
    # XOR as one big integer: a few C loops over the payload, not one Python step
    # per byte (wsproto does the same).
    length = len(data)
    if not length:
        return b""
    key = (bytes(mask) * ((length + 3) // 4))[:length]
    value = int.from_bytes(data, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(length, "little")
