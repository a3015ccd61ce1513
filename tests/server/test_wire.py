"""The wire: a connection's frames read and written below ASGI, over real sockets.

Each behaviour is checked on both paths (the wire, and ASGI with `wire=False`): they
must be the same to a client. The raw clients here speak WebSocket through wsproto
over a TCP stream, so that they can send what a well-behaved client library never
would: fragments, frames cut byte by byte, bad frames.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sqlite3
import tempfile
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import SocketAttribute, SocketStream
from hypercorn.asyncio.tcp_server import TCPServer
from pycrdt import Doc, Text
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Pong,
    Request,
)
from wsproto.frame_protocol import FrameProtocol

import server.wire
from collab_engine import protocol
from collab_engine.engine import EngineConfig
from server.settings import Settings
from server.wire import Wire
from storage import sqlite_url
from tests.conftest import TEST_ENGINE, running_server
from tests.timing import eventually
from tests.yclient import yclient

pytestmark = pytest.mark.anyio

paths = pytest.mark.parametrize("wire", [True, False], ids=["wire", "asgi"])


@dataclass
class RawClient:
    """A WebSocket client by hand: wsproto for the framing, bytes sent as given."""

    stream: SocketStream
    ws: WSConnection
    events: list[Event] = field(default_factory=list)

    async def send_raw(self, data: bytes, *, piece: int | None = None) -> None:
        """Send `data` as is, in pieces of `piece` bytes (each its own write)."""
        step = piece or len(data) or 1
        for start in range(0, len(data), step):
            await self.stream.send(data[start : start + step])
            if piece:
                await anyio.lowlevel.checkpoint()

    async def next_event(self, kind: type[Event], timeout: float = 5.0) -> Event:
        """The next event of `kind` (earlier ones of other kinds are kept)."""
        with anyio.fail_after(timeout):
            while True:
                for index, event in enumerate(self.events):
                    if isinstance(event, kind):
                        return self.events.pop(index)
                data = await self.stream.receive()
                self.ws.receive_data(data)
                self.events.extend(self.ws.events())

    async def closed(self, timeout: float = 5.0) -> bool:
        """Whether the server ends the TCP connection within `timeout` seconds."""
        with anyio.move_on_after(timeout):
            try:
                while await self.stream.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return True
        return False


@asynccontextmanager
async def raw_client(url: str, name: str) -> AsyncIterator[RawClient]:
    """Open `url/name`."""
    host, port = url.removeprefix("ws://").split(":")
    ws = WSConnection(ConnectionType.CLIENT)
    async with await anyio.connect_tcp(host, int(port)) as stream:
        client = RawClient(stream, ws)
        await stream.send(ws.send(Request(host=host, target=f"/{name}")))
        await client.next_event(AcceptConnection)
        yield client


def masked(payload: bytes, *, fin: bool = True, first: bool = True) -> bytes:
    """A client's binary frame (or continuation) carrying `payload`."""
    proto = FrameProtocol(client=True, extensions=[])
    if not first:
        proto.send_data(b"", fin=False)  # a message in progress: the next is a continuation
    return proto.send_data(payload, fin=fin)


def update_frame(text: str) -> bytes:
    """A y-websocket update message inserting `text` into a fresh document's "t"."""
    doc: Doc = Doc()
    doc.get("t", type=Text).insert(0, text)
    return protocol.encode_sync_update(doc.get_update())


def wires() -> list[Wire]:
    """The wires now reading an open socket (`type`, not `isinstance`: weak proxies
    to freed objects raise on the latter)."""
    return [
        o
        for o in gc.get_objects()
        if type(o) is Wire and o._reading and not o.transport.is_closing()
    ]


@paths
async def test_the_wire_reads_what_it_can(wire: bool) -> None:
    """With the wire on, a plain connection's socket is read by the wire (the
    transport's protocol); with it off, by hypercorn."""
    async with running_server(Settings(ping_interval=None, engine=TEST_ENGINE, wire=wire)) as (
        _,
        url,
    ):
        async with yclient(url, "who-reads"):
            reading = wires()
            assert len(reading) == (1 if wire else 0)
            if wire:
                assert reading[0].transport.get_protocol() is reading[0]


async def test_a_closed_connection_is_freed_at_once_with_pings_on() -> None:
    """The wire's pings are a timer that ends with the connection: once the client
    has gone, nothing of hypercorn's for it stays alive. (Hypercorn's own ping task,
    which the wire replaces, kept every closed connection's objects for up to a
    whole ping interval.)"""

    def hypercorn_connections() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is TCPServer)

    settings = Settings(ping_interval=30.0, engine=TEST_ENGINE)
    async with running_server(settings) as (_, url):
        before = hypercorn_connections()
        for index in range(3):
            async with yclient(url, f"freed-{index}"):
                pass
        await eventually(lambda: hypercorn_connections() <= before, what="connections gone")


@paths
async def test_a_closed_connection_and_its_room_are_freed_without_the_collector(
    wire: bool,
) -> None:
    """When a client leaves, its peer and wire (and, once unloaded, its room) are
    freed by reference counting: nothing of ours is left in a reference cycle that
    only a full collection would free (a cancelled task's traceback, a callback
    holding its owner). The collector is off while this waits."""
    async with running_server(Settings(ping_interval=None, engine=TEST_ENGINE, wire=wire)) as (
        app,
        url,
    ):
        async with yclient(url, "refcounted"):
            room = app.engine.rooms["refcounted"]
            refs = [weakref.ref(room), *(weakref.ref(p) for p in room.peers.values())]
            refs += [weakref.ref(w) for w in wires()]
            assert len(refs) == (3 if wire else 2)
            del room
        gc.disable()
        try:
            with anyio.fail_after(5):
                while any(ref() is not None for ref in refs):
                    await anyio.sleep(0.02)
        finally:
            gc.enable()


@paths
async def test_a_wire_connection_runs_no_task_of_its_own(wire: bool) -> None:
    """On the wire, an editing connection has no reader, writer or catch-up task
    (each is memory, and objects for the collector to scan, times every idle
    client); on ASGI it has a reader and a writer."""

    def ours() -> list[str]:
        names = [task.get_name() for task in asyncio.all_tasks()]
        prefixes = ("server.websocket.", "server.asgi.", "server.wire.")
        return sorted(name for name in names if name.startswith(prefixes))

    async with running_server(Settings(ping_interval=None, engine=TEST_ENGINE, wire=wire)) as (
        _,
        url,
    ):
        async with yclient(url, "tasks") as first, yclient(url, "tasks") as second:
            first.doc.get("t", type=Text).insert(0, "hello")
            await first.flush()
            await second.wait_for(lambda: str(second.doc.get("t", type=Text)) == "hello")
            asgi = ["server.asgi.ASGITransport._read", "server.asgi.ASGITransport._write"]
            expected = [] if wire else asgi * 2
            assert ours() == sorted(expected)


@paths
async def test_fragments_cut_byte_by_byte_with_a_ping_between(wire: bool) -> None:
    """An update sent as three fragments with a ping among them, written one byte at
    a time, is applied whole; the ping is answered with its payload."""
    async with running_server(Settings(ping_interval=None, engine=TEST_ENGINE, wire=wire)) as (
        _,
        url,
    ):
        async with yclient(url, "frag") as observer, raw_client(url, "frag") as raw:
            message = update_frame("fragmented ✓")
            proto = FrameProtocol(client=True, extensions=[])
            data = (
                proto.send_data(message[:3], fin=False)
                + proto.ping(b"are you there")
                + proto.send_data(message[3:10], fin=False)
                + proto.send_data(message[10:], fin=True)
            )
            await raw.send_raw(data, piece=1)
            pong = await raw.next_event(Pong)
            assert isinstance(pong, Pong) and pong.payload == b"are you there"
            await observer.wait_for(lambda: str(observer.doc.get("t", type=Text)) == "fragmented ✓")


@paths
@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        pytest.param(b"\x82\x03abc", "masked", id="unmasked"),
        pytest.param(b"\xc2\x80\x00\x00\x00\x00", "reserved", id="reserved-bits"),
        pytest.param(b"\x83\x80\x00\x00\x00\x00", "opcode", id="unknown-opcode"),
    ],
)
async def test_a_bad_frame_closes_only_its_connection_with_1002(
    wire: bool, bad: bytes, reason: str
) -> None:
    """A frame that breaks RFC 6455 ends that connection: the wire closes it with 1002
    and says why (hypercorn, on the ASGI path, drops the TCP connection without a
    close frame). What the client sent before it stands; the room's other client goes on."""
    async with running_server(Settings(ping_interval=None, engine=TEST_ENGINE, wire=wire)) as (
        app,
        url,
    ):
        async with yclient(url, "bad") as good, raw_client(url, "bad") as raw:
            await raw.send_raw(masked(update_frame("kept")) + bad)
            if wire:
                close = await raw.next_event(CloseConnection)
                assert isinstance(close, CloseConnection) and close.code == 1002
                assert reason in close.reason
            assert await raw.closed()
            await good.wait_for(lambda: str(good.doc.get("t", type=Text)) == "kept")
            good.doc.get("t", type=Text).insert(4, "!")
            await good.flush()
            async with yclient(url, "bad") as fresh:
                await fresh.wait_for(lambda: str(fresh.doc.get("t", type=Text)) == "kept!")
            assert not good.closed.is_set()
            assert len(app.engine.rooms["bad"].peers) == 1  # the bad one is gone


@paths
async def test_the_clients_close_is_answered_and_the_peer_leaves(wire: bool) -> None:
    """A client's close frame gets the server's close back (same code), the TCP
    connection ends, and the room forgets the peer."""
    async with running_server(Settings(ping_interval=None, engine=TEST_ENGINE, wire=wire)) as (
        app,
        url,
    ):
        async with raw_client(url, "bye") as raw:
            await raw.send_raw(masked(update_frame("before")))
            proto = FrameProtocol(client=True, extensions=[])
            await raw.send_raw(proto.close(1000, "done"))
            close = await raw.next_event(CloseConnection)
            assert isinstance(close, CloseConnection) and close.code == 1000
            assert await raw.closed()
        await eventually(
            lambda: not (app.engine.rooms.get("bye") and app.engine.rooms["bye"].peers),
            what="the peer gone",
        )
        async with yclient(url, "bye") as fresh:
            assert str(fresh.doc.get("t", type=Text)) == "before"


@paths
async def test_updates_wait_while_the_journal_is_full_and_none_is_lost(wire: bool) -> None:
    """With the disk held, the journal fills and a client's further updates wait
    unread (the wire pauses); once the disk is free, all arrive, in order."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "held.db"
        engine = EngineConfig(
            unload_grace=0.2, sweep_interval=0.05, journal_max_pending=5, journal_linger=0
        )
        settings = Settings(
            ping_interval=None, engine=engine, wire=wire, database_url=sqlite_url(str(path))
        )
        async with running_server(settings) as (app, url):
            async with yclient(url, "held") as writer, yclient(url, "held") as reader:
                text = writer.doc.get("t", type=Text)
                text.insert(0, "0;")
                await writer.flush()
                await reader.wait_for(lambda: str(reader.doc.get("t", type=Text)) == "0;")
                # (No write may be under way: the blocker blocks the loop until it has the lock.)
                await app.engine.rooms["held"].flush()
                blocker = sqlite3.connect(path, isolation_level=None, timeout=5)
                try:
                    blocker.execute("BEGIN IMMEDIATE")
                    for index in range(1, 40):
                        text.insert(len(str(text)), f"{index};")
                        await writer.flush()
                    journal = app.engine.journal
                    assert journal is not None
                    await eventually(journal.full, what="the journal full")
                    await anyio.wait_all_tasks_blocked()
                    room = app.engine.rooms["held"]
                    held = str(room.doc.get("t", type=Text))
                    assert held != str(text)  # some updates wait, unread
                    blocker.execute("ROLLBACK")
                finally:
                    blocker.close()
                expected = str(text)
                await reader.wait_for(lambda: str(reader.doc.get("t", type=Text)) == expected)
                assert expected == "".join(f"{i};" for i in range(40))


@pytest.mark.parametrize("receivers", [1, 2], ids=["few", "many"])
async def test_a_reads_frames_for_few_connections_are_written_before_the_turn_ends(
    receivers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frames an edit's read queues for few connections are written when that
    read is done, not at the end of the loop's turn: an edit read first does not wait
    for the other sockets' reads of the same turn. Frames for more connections than
    `FLUSH_AFTER_READ` (set to 1 here) wait for the turn's end, where the room's later
    frames of the turn join them. The read is handed to the sender's wire as the
    transport would (`data_received`), and the receivers' sockets are looked at
    before the loop runs anything else, then after it has."""
    monkeypatch.setattr(server.wire, "FLUSH_AFTER_READ", 1)
    marker = b"read-then-written"
    async with running_server(Settings(ping_interval=None, engine=TEST_ENGINE)) as (_, url):
        async with AsyncExitStack() as stack:
            sender = await stack.enter_async_context(raw_client(url, "prompt"))
            others = [
                await stack.enter_async_context(raw_client(url, "prompt")) for _ in range(receivers)
            ]
            await eventually(
                lambda: len(wires()) >= receivers + 1 and all(w.peer is not None for w in wires()),
                what="every connection on the wire",
            )
            address = sender.stream.extra(SocketAttribute.local_address)
            (wire,) = [w for w in wires() if w.transport.get_extra_info("peername") == address]
            socks = [duplicate(other.stream.extra(SocketAttribute.raw_socket)) for other in others]
            try:
                wire.data_received(masked(update_frame(marker.decode())))
                at_once = [marker in waiting_without_the_loop(sock, marker) for sock in socks]
                await anyio.lowlevel.checkpoint()
                after_the_turn = [
                    marker in waiting_without_the_loop(sock, marker) for sock in socks
                ]
            finally:
                for sock in socks:
                    sock.close()
            assert at_once == [receivers == 1] * receivers
            assert after_the_turn == [True] * receivers


def duplicate(raw: socket.socket) -> socket.socket:
    """A socket object of one's own on `raw`'s connection (asyncio's wrapper has no
    `recv`); closing it leaves `raw` open."""
    return socket.fromfd(raw.fileno(), raw.family, raw.type)


def waiting_without_the_loop(sock: socket.socket, marker: bytes) -> bytes:
    """What waits to be read on `sock`, looked at without returning to the event loop
    (synchronous: the loop runs nothing meanwhile) until `marker` is among it or 50
    ms have passed (loopback hands bytes over within the send; the rest is margin)."""
    waiting = b""
    for _ in range(50):
        try:
            waiting = sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            waiting = b""
        if marker in waiting:
            break
        time.sleep(0.001)
    return waiting


def test_the_wire_checks_the_objects_it_reads() -> None:
    """The installed hypercorn and wsproto are the pinned ones, with every attribute the
    wire reads; another version, or an object without one, is named as the reason."""
    assert server.wire.check() is None
    assert server.wire.check(pinned={"hypercorn": "0.0.1"}) == (
        "hypercorn 0.18.0 is not the 0.0.1 the wire reads"
    )

    class Stream:
        def __init__(self) -> None:
            self.send = None

    reason = server.wire.check(expected=((Stream, ("send", "buffer")),))
    assert reason is not None and reason.endswith("Stream has no buffer")


async def test_a_server_whose_wire_cannot_serve_falls_back_to_asgi(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With hypercorn not the version the wire reads, the server says so with a
    WARNING at start-up and serves every connection through ASGI."""
    monkeypatch.setattr(server.wire, "PINNED", {"hypercorn": "0.0.1"})
    caplog.set_level(logging.INFO, logger="server")
    async with running_server() as (app, url):
        assert app.settings.wire is False
        async with yclient(url, "fallback") as a, yclient(url, "fallback") as b:
            a.doc.get("t", type=Text).insert(0, "through ASGI")
            await a.flush()
            await b.wait_for(lambda: str(b.doc.get("t", type=Text)) == "through ASGI")
            names = {task.get_name() for task in asyncio.all_tasks()}
            assert "server.asgi.ASGITransport._read" in names
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "WebSockets are served through ASGI only: hypercorn 0.18.0 is not the 0.0.1" in (
        " ".join(warnings)
    )
