"""One WebSocket connection: frames to the core's `Connection`, errors to close codes.

Every frame goes to `collab_engine.connection.Connection.receive`, the one seam:
the room decides what each message does. This module only carries frames.

Where the connection allows it (hypercorn, HTTP/1.1, no compression), the wire
(`server.wire`) serves it below ASGI: it parses the client's frames as they arrive
and hands each to the connection in the loop's callback, writes what the room
queues for the peer at the end of each event-loop turn, and closes the peer when
the client leaves: such a connection has no task of its own. A frame whose handling
must wait (the journal is full, a version is being stored) pauses the wire, and the
connection's one waiting task (`_catch_up`, started the first time one must wait)
awaits it; the wire resumes when it is done.

Elsewhere a reader task receives through ASGI (`_read`) and a writer task drains the
peer's outbox through ASGI's `send`, in order. No task wakes per message either way.

Whatever ends the connection closes the peer: the client leaving, a bad frame,
the room evicting a slow reader, the engine shutting down. Its tasks, if any are
still running, are then cancelled and the close frame goes out with the error's code
and reason. A bad frame ends this connection only.
"""
from __future__ import annotations

import logging
from functools import partial

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from collab_engine import names
from collab_engine.connection import Connection, Later
from collab_engine.engine import Engine
from collab_engine.errors import CollabError, Forbidden, ProtocolError, StorageError, close_reason
from collab_engine.peer import Peer
from collab_engine.permissions import refusal

from .auth import credentials_for
from .settings import Settings
from .types import Receive, Scope, Send, path_of
from .wire import Wire

log = logging.getLogger("server.websocket")

CLOSE_TIMEOUT = 1.0
"""Seconds to try sending the close frame before giving up on the client."""


def document_name(scope: Scope, max_length: int) -> str:
    """The document a WebSocket addresses: the whole path after the first `/`, read
    and checked as `collab_engine.names.document_name` says (strict UTF-8, NFC, no
    control characters).

    Raises:
        InvalidDocumentName: the path is not UTF-8, or the name is empty, holds a
            control character, or is longer than `max_length` UTF-8 bytes (4400).
    """
    return names.document_name(path_of(scope)[1:], max_length)


async def serve_websocket(
    engine: Engine, settings: Settings, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve one y-websocket connection until either side ends it."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    wire = None
    if settings.wire:
        wire = Wire.under(
            send,
            receive,
            settings.max_buffered,
            settings.max_frame_size,
            settings.ping_interval if settings.wire_pings else None,
        )
    client = scope.get("client") or ("?", 0)
    try:
        name = document_name(scope, settings.max_name_length)
    except CollabError as error:
        log.info("refusing %s:%s: %s", client[0], client[1], error.reason)
        await _refuse(receive, send, error, wire)
        return
    label = f"{client[0]}:{client[1]} {name!r}"
    try:
        # Who it is and what it may do, before anything of the document is sent.
        peer = await _admit(engine, settings, scope, name, label)
    except CollabError as error:
        log.info("refusing %s: %s (%d)", label, error.reason, error.close_code)
        await _refuse(receive, send, error, wire)
        return
    try:
        async with engine.room(name) as room:
            await _attend(Connection(room, peer, settings.max_frame_size), receive, send, wire)
    except StorageError as error:
        # The document could not be loaded: refuse it whole rather than serve part.
        peer.close(error)
    finally:
        if wire is not None:
            # Hypercorn reads the rest: the client's answer to our close frame.
            wire.release()
    if wire is not None and peer.error is None:
        # The client left (the wire saw its close frame or the end of the socket):
        # return once hypercorn has seen it too, or hypercorn, finding the connection
        # still open when the app returns, would close it with 1011.
        await _until_disconnect(receive)
    if peer.error is not None:
        log.info("closing %s: %s (%d)", peer.label, peer.error.reason, peer.error.close_code)
        # A client that stopped reading may never take the close frame: don't wait on it.
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await _close(send, peer.error)


async def _admit(engine: Engine, settings: Settings, scope: Scope, name: str, label: str) -> Peer:
    """The peer for this connection, with its identity and role.

    Raises:
        Unauthenticated: a secret is set and the token is missing, bad or expired (4401).
        Forbidden: the token gives no right to read this document (4403).
        StorageError: the grants cannot be read (1011).
    """
    size = engine.config.outbox_size
    credentials = credentials_for(settings.secret, scope, engine.clock.wall())
    if credentials is None:
        return Peer(outbox_size=size, label=label)  # open mode: anonymous, owner
    role = await engine.role(name, credentials)
    if role is None:
        raise Forbidden(refusal(credentials, name, await engine.grants(name)))
    return Peer(
        outbox_size=size,
        label=f"{label} {credentials.identity.user_id}",
        identity=credentials.identity,
        role=role,
        expires_at=credentials.expires_at,
        credentials=credentials,
    )


async def _attend(connection: Connection, receive: Receive, send: Send, wire: Wire | None) -> None:
    peer = connection.peer
    connection.join()
    try:
        async with anyio.create_task_group() as tg:
            backlog = None
            if wire is None:
                tg.start_soon(_read, connection, receive)
                tg.start_soon(_write, peer, send)
            else:
                # No task while nothing waits: the wire reads and writes in the loop's
                # callbacks, and closes the peer when the client leaves.
                backlog = _Backlog(connection, wire, tg)
                wire.attach(peer, partial(_on_message, connection, backlog))
            # Whoever closes the peer (the client, a bad frame, the room, the engine)
            # ends the connection, even while the writer is stuck on a client that
            # stopped reading.
            await peer.wait_closed()
            if backlog is not None:
                backlog.close()
            # End what can end by itself first: the writer, and `_catch_up` with nothing
            # in hand, return within this one checkpoint. A task cancelled in an anyio
            # task group keeps its frames (and through them the wire, the peer and the
            # connection) in a reference cycle of its CancelledError's traceback, freed
            # only by a full collection.
            await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    finally:
        connection.leave()


class _Backlog:
    """What a wire connection's frame must wait for (the journal is full, a version is
    being stored): the wire pauses, and one task (`_catch_up`, started the first time
    it is needed: most connections never need it) awaits it and resumes the wire.
    One at a time: nothing more is read until it is done."""

    def __init__(self, connection: Connection, wire: Wire, tg: TaskGroup) -> None:
        self._connection = connection
        self._wire = wire
        self._tg = tg
        self._waiting: MemoryObjectSendStream[Later] | None = None

    def put(self, later: Later) -> None:
        """Pause the wire and hand `later` to the catch-up task."""
        if self._waiting is None:
            self._waiting, taken = anyio.create_memory_object_stream[Later](1)
            self._tg.start_soon(_catch_up, self._connection, taken, self._wire)
        self._wire.pause()
        self._waiting.send_nowait(later)  # never full: the wire stays paused until taken

    def close(self) -> None:
        """Nothing more: the catch-up task ends once it has nothing in hand."""
        if self._waiting is not None:
            self._waiting.close()


def _on_message(connection: Connection, backlog: _Backlog, data: bytes) -> None:
    """A frame the wire read: to the room now, or (the wire paused) to the backlog."""
    later = connection.receive(data)
    if later is not None:
        backlog.put(later)


async def _catch_up(
    connection: Connection, taken: MemoryObjectReceiveStream[Later], wire: Wire
) -> None:
    """Await what frames had to wait for, each before the wire reads on."""
    async with taken:
        async for later in taken:
            await connection.catch_up(later)
            if connection.peer.closed:
                return
            wire.resume()


async def _read(connection: Connection, receive: Receive) -> None:
    """Receive frames through ASGI and hand them to the connection until the client
    leaves or errs (connections the wire does not serve)."""
    peer = connection.peer
    while not peer.closed:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.disconnect":
            break
        if kind != "websocket.receive":
            continue
        data = message.get("bytes")
        if data is None:
            peer.close(ProtocolError("text frames are not part of the y-websocket protocol"))
            return
        later = connection.receive(data)
        if later is not None:
            await connection.catch_up(later)
        # receive() returns at once while frames are buffered: let the writers run.
        await anyio.lowlevel.checkpoint()
    peer.close()


async def _write(peer: Peer, send: Send) -> None:
    """Send the peer's frames in order, one at a time; when several wait, runs of
    updates go merged (`Peer.batches`): a send is a system call, and under load they
    are what the server spends its time on."""
    async for batch in peer.batches():
        for frame in batch:
            await send({"type": "websocket.send", "bytes": frame})


async def _refuse(receive: Receive, send: Send, error: CollabError, wire: Wire | None) -> None:
    """Close a connection that was never served, and let the close frame arrive.

    A client sends its first frames (sync step 1, awareness) as soon as it is
    accepted: were the socket dropped right after our close frame, those unread
    frames would make the kernel reset it, and the client would see 1006 instead of
    the code that says why. So wait, briefly, for the client's own close (read
    through ASGI: the wire gives its reading back).
    """
    if wire is not None:
        wire.release()
    await _close(send, error)
    await _until_disconnect(receive)


async def _until_disconnect(receive: Receive) -> None:
    """Read through ASGI until the client has gone, for `CLOSE_TIMEOUT` at most."""
    with anyio.move_on_after(CLOSE_TIMEOUT):
        while (await receive())["type"] != "websocket.disconnect":
            pass


async def _close(send: Send, error: CollabError) -> None:
    await send(
        {"type": "websocket.close", "code": error.close_code, "reason": close_reason(error.reason)}
    )
