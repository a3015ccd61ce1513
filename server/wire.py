"""The wire: a connection's frames read from and written to its socket, below ASGI.

Through ASGI, every frame for every receiver is one `await send(...)` that passes
hypercorn's stream, wsproto's frame encoder, an asyncio lock and a drain, in the
receiver's own writer task, woken for it. In a busy room that chain is most of what
the server does: in a large room, profiles put most of the server's CPU in it and in
waking the writers (`benchmarks/results/server_fanout_profiles/`).
Reading is the mirror image: hypercorn's read task takes the bytes, wsproto parses
them, an asyncio queue hands each message to the connection's reader task: two task
wake-ups and two loop turns per message before the room sees it.

Writing. A server's WebSocket frames are not masked, so the frame for one payload is
the same bytes for every receiver. The wire takes a peer's outbox over
(`Peer.deliver_to`): when the outbox stops being empty the wire joins the loop's list
of wires to flush. That list is written at the end of each read from a client after
which it holds at most `FLUSH_AFTER_READ` wires (what the read's messages made a
small room send), and otherwise, as for frames queued anywhere else, by one callback
at the end of the loop's turn. For each wire, everything queued meanwhile, runs of
updates merged (`Peer.take`), goes to the socket's transport in one write
(`server.frame.writes`): an edit and the cursor move that follows it cost one system
call, not two. The frame header is encoded once per payload, whatever the number of
receivers. No task, no lock, no await.

Reading. Once the WebSocket is accepted, the wire becomes the transport's protocol
(`transport.set_protocol`): bytes come to `data_received`, in the loop's own callback,
are parsed there (`server.frame.ClientFrames`), and each message goes to the
connection's `on_message` at once, as Node's `ws` does. Pings are answered there;
pongs are dropped. The client's close frame, and everything after it, go back to
hypercorn (`release`), which does the closing handshake and ends the ASGI connection
as usual; that frame, the end of the client's stream and a lost connection close the
peer (the client left), so no task needs to wait on ASGI's `receive` meanwhile.
`pause` and `resume` stop and restart the messages (and the socket's reading, so TCP
slows the client down) while the connection awaits something for one of them. The
takeover is only done where hypercorn has nothing of the client's buffered (what any
client that waits for the handshake's answer leaves): anywhere else the connection
stays on ASGI, both ways.

The wire is a fast path for what the server runs on: hypercorn (pinned), HTTP/1.1
WebSockets, asyncio, no permessage-deflate, no read timeout. `Wire.under(send,
receive)` finds the transport through hypercorn's objects, checking each one's type,
and returns None for anything else (an HTTP/2 WebSocket, compression, another ASGI
server): those connections keep ASGI. Frames are whole when written, and hypercorn's
own writes (the handshake, pings, the close frame) are whole frames as well, all from
the loop's thread: they never interleave within a frame.

Slow readers: the kernel's socket buffer fills first, then the transport's. A
connection that still holds more than `max_buffered` bytes its client has not taken
when new frames come is closed with `PeerTooSlow` (1013), as a full outbox would be:
the room never waits for one client.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import logging
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.protocol.ws_stream import WSStream
from wsproto.connection import Connection as WSConnection
from wsproto.frame_protocol import FrameDecoder, FrameProtocol

from collab_engine.connection import Carried, Later
from collab_engine.errors import CollabError, PeerTooSlow, ProtocolError
from collab_engine.peer import Peer
from collab_engine.types import Frame

from .asgi import until_disconnect
from .frame import (
    BINARY,
    CLOSE,
    PING,
    PING_FRAME,
    SPLIT,
    TEXT,
    ClientFrames,
    framed,
    joined,
    pong,
)
from .types import Receive, Send

log = logging.getLogger("server.wire")

FLUSH_AFTER_READ = 64
"""A read that leaves at most this many connections with frames to write has them
written at once; more wait for the end of the loop's turn (see `Wire.data_received`)."""


class Transport(Protocol):
    """What the wire needs of a transport: asyncio's have it (uvloop's too, but they
    are not `asyncio.Transport` instances)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...

    def get_protocol(self) -> asyncio.BaseProtocol: ...

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Wire(asyncio.Protocol):
    """One WebSocket connection's socket: frames read from it and written to it.

    Made by `under`, once the WebSocket is accepted: from then on the connection's
    bytes come to the wire, and wait (unread, in the kernel) until `attach` names the
    peer and where its messages go, or `release` gives the reading back to hypercorn.

    Args:
        transport: the connection's asyncio transport.
        protocol: hypercorn's protocol on it (its stream reader), given the close
            frame and what follows it.
        max_buffered: bytes written but not yet taken by the client above which the
            peer is closed as too slow when more frames come.
        max_message: the largest message read, in bytes (larger closes with 1009).
        ping_interval: seconds between keepalive pings while the wire reads the
            socket (None: no pings). One timer per connection, not a task: hypercorn's
            ping task sleeps out a whole interval after the connection closed, and
            keeps all of hypercorn's objects for it alive until then.
    """

    def __init__(
        self,
        transport: Transport,
        protocol: asyncio.Protocol,
        max_buffered: int,
        max_message: int,
        ping_interval: float | None = None,
    ) -> None:
        self.transport = transport
        self.max_buffered = max_buffered
        self._hypercorn = protocol
        self._frames = ClientFrames(max_message)
        self._turn = _Turn.of(asyncio.get_running_loop())
        self._scheduled = False
        self.peer: Peer | None = None
        self._on_message: Callable[[bytes], None] | None = None
        self._paused = True
        self._reading = True
        """Whether the wire reads the socket (False once given back to hypercorn)."""
        self._broken = False
        """Whether a bad frame was read: what follows is dropped, unparsed."""
        self.ping_interval = ping_interval
        self._ping_timer: asyncio.TimerHandle | None = None
        transport.pause_reading()
        transport.set_protocol(self)
        self._arm()

    @classmethod
    def under(
        cls,
        send: Send,
        receive: Receive,
        max_buffered: int,
        max_message: int,
        ping_interval: float | None = None,
    ) -> Wire | None:
        """The wire for the accepted WebSocket that ASGI's `send` and `receive` belong
        to; None when it is not one the wire can serve (see the module docstring)."""
        found = _transport_of(send, receive)
        if found is None:
            return None
        transport, protocol = found
        return cls(transport, protocol, max_buffered, max_message, ping_interval)

    def _arm(self) -> None:
        if self.ping_interval is not None:
            loop = asyncio.get_running_loop()
            self._ping_timer = loop.call_later(self.ping_interval, self._ping)

    def _ping(self) -> None:
        # While the wire reads: once hypercorn has the socket back, the connection is
        # closing, and needs no keepalive.
        self._ping_timer = None
        if not self._reading or self.transport.is_closing():
            return
        self.transport.write(PING_FRAME)
        self._arm()

    def attach(self, peer: Peer, on_message: Callable[[bytes], None]) -> None:
        """Write `peer`'s outbox, and read the client's messages into `on_message`,
        called in order, one at a time, from the loop (it must not block; it may
        `pause`, and whatever it raises ends this connection only). The peer is
        closed (without an error) when the client leaves: its close frame, the end of
        its stream, or the connection lost."""
        self.peer = peer
        self._on_message = on_message
        peer.deliver_to(self._ready)
        self.resume()

    def pause(self) -> None:
        """Give `on_message` nothing more until `resume`; stop reading the socket."""
        self._paused = True
        if self._reading:
            self.transport.pause_reading()

    def resume(self) -> None:
        """Hand `on_message` what was read meanwhile, and read the socket again."""
        self._paused = False
        if self._reading:
            self.transport.resume_reading()
            self._parse()

    def release(self) -> None:
        """Give the reading back to hypercorn, with what was read and not parsed: for
        a connection refused before it is served, or ending. After a bad frame the
        wire keeps reading and dropping what comes: hypercorn could not parse it.

        From then on the wire holds neither the peer nor `on_message`: they hold the
        wire (the peer's outbox callback, the message callback's arguments), and
        those cycles would keep the connection's objects until the collector's next
        full pass instead of freeing them when the connection ends."""
        self._paused = True
        self.peer = None
        self._on_message = None
        if not self._reading:
            return
        if self._broken:
            self.transport.resume_reading()
            return
        self._give_back()

    def _restore(self) -> None:
        # Hypercorn's protocol reads the socket again; the wire only writes.
        self._reading = False
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        self.transport.set_protocol(self._hypercorn)

    def _give_back(self) -> None:
        self._restore()
        self.transport.resume_reading()
        rest = self._frames.rest()
        if rest:
            self._hypercorn.data_received(rest)

    # asyncio.Protocol: called by the transport, in the loop.

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        self._frames.feed(data)
        if not self._paused:
            self._parse()
        # What this read made the rooms send goes out now, not at the end of the
        # loop's turn, when it is for few connections: when the loop hands over many
        # sockets' reads at once, an edit read first then does not wait for the reads
        # after it (Node's `ws` sends at once too), and the next reads of the turn
        # seldom share its receivers. Frames for many (a large room) wait for the
        # turn's end, so that the room's further frames of the turn join the same
        # writes: at 500 clients in a room, flushing every read cost CPU and p99.
        # Either way, what one read queued for one receiver (an edit and the cursor
        # move sent with it) goes in one write.
        if self._turn.pending() <= FLUSH_AFTER_READ:
            self._turn.flush()

    def eof_received(self) -> bool | None:
        self._restore()
        keep_open = self._hypercorn.eof_received()
        self._left()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self._restore()
        self._hypercorn.connection_lost(exc)
        self._left()

    def _left(self) -> None:
        # The client is gone, or going: hypercorn has what it sent last (and answers
        # a close frame). Closing the peer ends the connection's service.
        if self.peer is not None:
            self.peer.close()

    def pause_writing(self) -> None:
        self._hypercorn.pause_writing()

    def resume_writing(self) -> None:
        self._hypercorn.resume_writing()

    def _parse(self) -> None:
        frames = self._frames
        try:
            while not self._paused:
                item = frames.next()
                if item is None:
                    return
                opcode, payload = item
                if opcode == BINARY:
                    self._on_message(payload)  # type: ignore[misc]
                elif opcode == PING:
                    self.transport.write(pong(payload))
                elif opcode == CLOSE:
                    self._give_back()
                    self._left()
                    return
                elif opcode == TEXT:
                    raise ProtocolError("text frames are not part of the y-websocket protocol")
                # A pong: nothing to do.
        except CollabError as error:
            self._fail(error)
        except Exception:  # a bug: say so, and end this connection only
            log.exception("reading from %s failed", self.peer.label if self.peer else "?")
            self._fail(CollabError("internal error while reading"))

    def _fail(self, error: CollabError) -> None:
        self._paused = True
        self._broken = True
        self.transport.resume_reading()  # read and drop, so that the close is clean
        if self.peer is not None:
            self.peer.close(error)

    # Writing.

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
        if peer is None or peer.closed:
            return
        try:
            self._write(peer.take())
        except (OSError, RuntimeError) as exc:
            log.debug("writing to %s failed: %s", peer.label, exc)
            peer.close()
        except Exception:  # a bug: say so, and end this connection only
            log.exception("sending to %s failed", peer.label)
            peer.close(CollabError("internal error while sending"))

    def _write(self, frames: Sequence[Frame]) -> None:
        transport = self.transport
        if transport.is_closing():
            return  # the client is gone: the connection's reader sees it and ends
        if transport.get_write_buffer_size() > self.max_buffered:
            assert self.peer is not None
            self.peer.close(
                PeerTooSlow(f"more than {self.max_buffered} bytes sent and not yet read")
            )
            return
        if len(frames) == 1 and len(frames[0]) < SPLIT:
            # One receiver of a broadcast, 499 of them per edit at 500 clients: the
            # frame's bytes are built once for all (`framed` caches them).
            transport.write(framed(frames[0]))
            return
        # Several frames for one receiver in one turn (most often an edit and the
        # cursor move its author sent right after it) go in one write: at 100 clients
        # with cursors, two thirds of the writes carried two frames, and the system
        # calls are most of what fan-out costs.
        # The same frames go to every receiver of the room's broadcasts in this turn:
        # their bytes are joined once (`joined` caches them).
        for data in joined(tuple(frames)):
            transport.write(data)


class _Turn:
    """The wires with frames to write: written at the end of the read that queued
    them when they are few (`Wire.data_received`), otherwise, as frames queued
    elsewhere (timers, the engine's own edits, a room's load), at the end of this
    event-loop turn: one loop callback for all of them, not one per connection."""

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
            self._loop.call_soon(self.flush)
        self._wires.append(wire)

    def pending(self) -> int:
        """How many wires have frames to write."""
        return len(self._wires)

    def flush(self) -> None:
        """Write what every wire has queued, now (the end of a read, or of the turn)."""
        if not self._wires:
            return
        wires, self._wires = self._wires, []
        for wire in wires:
            wire.flush()


PINNED = {"hypercorn": "0.18.0", "wsproto": "1.3.2"}
"""The versions whose objects the wire reads (pinned in pyproject.toml)."""

EXPECTED: tuple[tuple[type, tuple[str, ...]], ...] = (
    (WSStream, ("app_send", "send", "connection", "buffer")),
    (H11Protocol, ("send", "connection")),
    (TCPServer, ("reader", "writer", "config")),
    (H11WSConnection, ("buffer",)),
    (WSConnection, ("_proto",)),
    (FrameProtocol, ("_frame_decoder", "extensions")),
    (FrameDecoder, ("buffer", "header")),
)
"""The attributes of hypercorn's and wsproto's objects that `_transport_of` reads."""


def check(
    pinned: dict[str, str] | None = None,
    expected: tuple[tuple[type, tuple[str, ...]], ...] | None = None,
) -> str | None:
    """Why the wire cannot serve with the hypercorn and wsproto installed (a version
    other than the pinned one, or an object without an attribute the wire reads);
    None when it can. The server asks once, at start-up, and serves every connection
    through ASGI when it cannot. (Defaults: `PINNED` and `EXPECTED`.)"""
    for distribution, version in (PINNED if pinned is None else pinned).items():
        try:
            found = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return f"{distribution} is not installed"
        if found != version:
            return f"{distribution} {found} is not the {version} the wire reads"
    for kind, names in EXPECTED if expected is None else expected:
        try:
            source = inspect.getsource(kind)
        except (OSError, TypeError):
            return f"the source of {kind.__qualname__} cannot be read"
        missing = [
            name for name in names if not hasattr(kind, name) and f"self.{name}" not in source
        ]
        if missing:
            return f"{kind.__module__}.{kind.__qualname__} has no {', '.join(missing)}"
    return None


def _transport_of(send: Send, receive: Receive) -> tuple[Transport, asyncio.Protocol] | None:
    # Whatever hypercorn's objects turn out to be, this never fails a connection: it
    # is the ASGI path then (and the server says so once).
    try:
        return _find_transport(send, receive)
    except Exception as exc:  # noqa: BLE001 - anything unexpected means: not the wire
        global _warned
        if not _warned:
            _warned = True
            log.warning("the wire cannot serve a connection, ASGI does: %r", exc)
        return None


_warned = False


def _find_transport(send: Send, receive: Receive) -> tuple[Transport, asyncio.Protocol] | None:
    # ASGI's `send` here is hypercorn's WSStream.app_send; the stream sends through
    # its H11Protocol, which sends through the connection's TCPServer, which owns the
    # StreamReader and StreamWriter. Each hop is type-checked: anything else keeps
    # the ASGI path.
    stream: Any = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None
    protocol: Any = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None  # HTTP/2 WebSockets frame their data inside h2 frames
    server: Any = getattr(protocol.send, "__self__", None)
    if not isinstance(server, TCPServer) or server.config.read_timeout is not None:
        return None  # (hypercorn would time out a connection it no longer reads)
    connection = getattr(stream, "connection", None)
    if connection is None or any(ext.enabled() for ext in connection._proto.extensions):
        return None  # permessage-deflate: frames are compressed
    transport: Any = server.writer.transport
    reader = transport.get_protocol()
    if not isinstance(reader, asyncio.StreamReaderProtocol):
        return None
    # Nothing of the client's may be held above the socket: no byte in the stream
    # reader, hypercorn's HTTP/1.1 connection or wsproto, no message in the ASGI
    # queue. Otherwise those would come before the wire's and be read by others.
    queue: Any = getattr(receive, "__self__", None)
    decoder = connection._proto._frame_decoder
    if not (
        isinstance(queue, asyncio.Queue)
        and queue.empty()
        and getattr(server.reader, "_buffer", None) == b""
        and isinstance(protocol.connection, H11WSConnection)
        and not protocol.connection.buffer
        and not decoder.buffer
        and decoder.header is None
        and stream.buffer.value is None
    ):
        return None
    needed = ("write", "is_closing", "get_write_buffer_size", "pause_reading", "set_protocol")
    if not all(hasattr(transport, name) for name in needed):
        return None
    return transport, reader


class WireTransport:
    """The fast path (see the module docstring): carries a connection's frames on its
    `Wire`. No task while nothing waits; a frame whose handling must wait pauses the
    wire, and one task (`_catch_up`, started the first time it is needed: most
    connections never need it) awaits it and resumes the wire. One at a time: nothing
    more is read until it is done."""

    name = "wire"

    def __init__(self, wire: Wire, receive: Receive) -> None:
        self.wire = wire
        self._receive = receive
        self._waiting: MemoryObjectSendStream[Later] | None = None

    async def carry(self, connection: Carried) -> None:
        peer = connection.peer
        async with anyio.create_task_group() as tg:
            self.wire.attach(peer, partial(self._on_message, connection, tg))
            # Whoever closes the peer (the client, a bad frame, the room, the engine)
            # ends the connection.
            await peer.wait_closed()
            if self._waiting is not None:
                self._waiting.close()
                self._waiting = None
            # `_catch_up` with nothing in hand returns within this checkpoint; a task
            # cancelled in an anyio task group keeps its frames (the wire, the peer,
            # the connection) in a reference cycle of its traceback.
            await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()

    def release(self) -> None:
        self.wire.release()

    async def finish(self, left: bool) -> None:
        if left:
            # The wire saw the client's close frame or the end of the socket: return
            # once hypercorn has seen it too, or hypercorn, finding the connection
            # still open when the app returns, would close it with 1011.
            await until_disconnect(self._receive)

    def _on_message(self, connection: Carried, tg: TaskGroup, data: bytes) -> None:
        later = connection.receive(data)
        if later is None:
            return
        if self._waiting is None:
            self._waiting, taken = anyio.create_memory_object_stream[Later](1)
            tg.start_soon(self._catch_up, connection, taken)
        self.wire.pause()
        self._waiting.send_nowait(later)  # never full: the wire stays paused until taken

    async def _catch_up(self, connection: Carried, taken: MemoryObjectReceiveStream[Later]) -> None:
        async with taken:
            async for later in taken:
                await connection.catch_up(later)
                if connection.peer.closed:
                    return
                self.wire.resume()
