"""The wire: a connection's frames written straight to its socket, below ASGI.

Through ASGI, every frame for every receiver is one `await send(...)` that passes
hypercorn's stream, wsproto's frame encoder, an asyncio lock and a drain, in the
receiver's own writer task, woken for it. In a busy room that chain is most of what
the server does: with 500 clients in one room, a profile put 60% of the server's CPU
in it and 14% more in waking the writers (`benchmarks/results/server_fanout_profiles/`).

A server's WebSocket frames are not masked, so the frame for one payload is the same
bytes for every receiver. The wire takes a peer's outbox over (`Peer.deliver_to`):
when the outbox stops being empty the wire joins the loop's list of wires to flush,
and one callback at the end of the turn writes, for each of them, everything queued
in that turn, runs of updates merged (`Peer.take`), to the socket's transport. The
frame header is encoded once per payload, whatever the number of receivers. No
task, no lock, no await.

The wire is a fast path for what the server runs on: hypercorn (pinned), HTTP/1.1
WebSockets, asyncio, no permessage-deflate. `Wire.under(send)` finds the transport
through hypercorn's objects, checking each one's type, and returns None for anything
else (an HTTP/2 WebSocket, compression, another ASGI server): those connections keep
the ASGI writer. Frames are whole when written, and hypercorn's own writes (the
handshake, pings, the close frame) are whole frames as well, all from the loop's
thread: they never interleave within a frame.

Slow readers: the kernel's socket buffer fills first, then the transport's. A
connection that still holds more than `max_buffered` bytes its client has not taken
when new frames come is closed with `PeerTooSlow` (1013), as a full outbox would be:
the room never waits for one client.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import weakref
from functools import lru_cache
from typing import Any, Protocol

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream

from collab_engine.errors import CollabError, PeerTooSlow
from collab_engine.peer import Peer
from collab_engine.types import Frame

from .types import Send

log = logging.getLogger("server.wire")

_BINARY = 0x82
"""FIN and opcode 2: a whole binary message in one frame."""

_SPLIT = 64 * 1024
"""Payloads at least this large are written after their header, not copied behind it."""


class Transport(Protocol):
    """What the wire needs of a transport: asyncio's and uvloop's have it (uvloop's
    are not `asyncio.WriteTransport` instances)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...


class Wire:
    """Writes one peer's frames to its connection's transport, once per loop turn.

    Args:
        transport: the connection's asyncio transport (after the handshake).
        peer: the peer whose outbox the wire takes over.
        max_buffered: bytes written but not yet taken by the client above which the
            peer is closed as too slow when more frames come.
    """

    def __init__(self, transport: Transport, peer: Peer, max_buffered: int) -> None:
        self.transport = transport
        self.peer = peer
        self.max_buffered = max_buffered
        self._turn = _Turn.of(asyncio.get_running_loop())
        self._scheduled = False
        peer.deliver_to(self._ready)

    @classmethod
    def under(cls, send: Send, peer: Peer, max_buffered: int) -> Wire | None:
        """The wire for the WebSocket that ASGI `send` belongs to, once accepted;
        None when it is not one the wire can write to (see the module docstring)."""
        transport = _transport_of(send)
        if transport is None:
            return None
        return cls(transport, peer, max_buffered)

    def _ready(self) -> None:
        # Called by Peer.send, inside the room's broadcast: only schedule.
        if not self._scheduled:
            self._scheduled = True
            self._turn.add(self)

    def flush(self) -> None:
        """Write what the peer has queued. Whatever goes wrong ends this connection,
        never the caller (the loop's callback, flushing every wire of the turn)."""
        self._scheduled = False
        peer = self.peer
        if peer.closed:
            return
        try:
            self._write(peer.take())
        except (OSError, RuntimeError) as exc:
            log.debug("writing to %s failed: %s", peer.label, exc)
            peer.close()
        except Exception:  # a bug: say so, and end this connection only
            log.exception("sending to %s failed", peer.label)
            peer.close(CollabError("internal error while sending"))

    def _write(self, frames: list[Frame]) -> None:
        transport = self.transport
        if transport.is_closing():
            return  # the client is gone: the connection's reader sees it and ends
        if transport.get_write_buffer_size() > self.max_buffered:
            self.peer.close(
                PeerTooSlow(f"more than {self.max_buffered} bytes sent and not yet read")
            )
            return
        for frame in frames:
            if len(frame) < _SPLIT:
                transport.write(_framed(frame))
            else:
                transport.write(_header(len(frame)))
                transport.write(frame)


class _Turn:
    """The wires with frames to write at the end of this event-loop turn: one loop
    callback for all of them, not one per connection."""

    _of: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turn] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._wires: list[Wire] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Turn:
        """The loop's one `_Turn`."""
        turn = cls._of.get(loop)
        if turn is None:
            turn = cls._of[loop] = cls(loop)
        return turn

    def add(self, wire: Wire) -> None:
        if not self._wires:
            self._loop.call_soon(self._flush)
        self._wires.append(wire)

    def _flush(self) -> None:
        wires, self._wires = self._wires, []
        for wire in wires:
            wire.flush()


def _header(length: int) -> bytes:
    if length < 126:
        return bytes((_BINARY, length))
    if length < 65536:
        return struct.pack("!BBH", _BINARY, 126, length)
    return struct.pack("!BBQ", _BINARY, 127, length)


@lru_cache(maxsize=256)
def _framed(payload: Frame) -> bytes:
    # One broadcast hands the same payload object to every receiver: its frame is
    # built once (bytes cache their hash, so the lookup is cheap after the first).
    return _header(len(payload)) + payload


def _transport_of(send: Send) -> Transport | None:
    # ASGI's `send` here is hypercorn's WSStream.app_send; the stream sends through
    # its H11Protocol, which sends through the connection's TCPServer, which owns the
    # StreamWriter. Each hop is type-checked: anything else keeps the ASGI path.
    stream: Any = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None
    protocol: Any = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None  # HTTP/2 WebSockets frame their data inside h2 frames
    server: Any = getattr(protocol.send, "__self__", None)
    if not isinstance(server, TCPServer):
        return None
    connection = getattr(stream, "connection", None)
    if connection is None or any(ext.enabled() for ext in connection._proto.extensions):
        return None  # permessage-deflate: frames must be compressed
    transport = server.writer.transport
    needed = ("write", "is_closing", "get_write_buffer_size")
    return transport if all(hasattr(transport, name) for name in needed) else None
