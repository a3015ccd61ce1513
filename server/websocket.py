"""One WebSocket connection: from ASGI frames to room calls, and errors to close codes.

Each connection runs a reader task (receive, decode, `Room.receive`). What the room
queues for the peer goes out by the wire (`server.wire`: written to the socket at the
end of each event-loop turn, no task) where the connection allows it, else by a
writer task that drains the peer's outbox through ASGI's `send`, in order.
Whatever ends the connection closes the peer: the client leaving, a bad frame,
the room evicting a slow reader, the engine shutting down. Its tasks are then
cancelled and the close frame goes out with the error's code and reason. A bad
frame ends this connection only.
"""

from __future__ import annotations

import json
import logging

import anyio

from collab_engine.engine import Engine
from collab_engine.errors import (
    CollabError,
    Forbidden,
    InvalidDocumentName,
    MessageTooBig,
    ProtocolError,
    StorageError,
    close_reason,
)
from collab_engine.history import History
from collab_engine.journal import Journal
from collab_engine.peer import Peer
from collab_engine.protocol import (
    SyncStep2,
    SyncUpdate,
    VersionRequest,
    decode,
    encode_version_reply,
)
from collab_engine.room import Room

from .auth import credentials_for
from .settings import Settings
from .types import Receive, Scope, Send
from .wire import Wire

log = logging.getLogger("server.websocket")

CLOSE_TIMEOUT = 1.0
"""Seconds to try sending the close frame before giving up on the client."""


def document_name(scope: Scope, max_length: int) -> str:
    """The document a WebSocket addresses: the whole path after the first `/`.

    Raises:
        InvalidDocumentName: the name is empty or longer than `max_length` UTF-8 bytes.
    """
    name: str = scope["path"][1:]
    if not name:
        raise InvalidDocumentName("no document name in the URL: use ws://host:port/<name>")
    if len(name.encode()) > max_length:
        raise InvalidDocumentName(f"document name longer than {max_length} bytes")
    return name


async def serve_websocket(
    engine: Engine, settings: Settings, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve one y-websocket connection until either side ends it."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    client = scope.get("client") or ("?", 0)
    try:
        name = document_name(scope, settings.max_name_length)
    except CollabError as error:
        log.info("refusing %s:%s: %s", client[0], client[1], error.reason)
        await _refuse(receive, send, error)
        return
    label = f"{client[0]}:{client[1]} {name!r}"
    try:
        # Who it is and what it may do, before anything of the document is sent.
        peer = await _admit(engine, settings, scope, name, label)
    except CollabError as error:
        log.info("refusing %s: %s (%d)", label, error.reason, error.close_code)
        await _refuse(receive, send, error)
        return
    try:
        async with engine.room(name) as room:
            history = engine.history if engine.store is not None else None
            await _attend(room, peer, receive, send, settings, engine.journal, history)
    except StorageError as error:
        # The document could not be loaded: refuse it whole rather than serve part.
        peer.close(error)
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
    credentials = credentials_for(settings.secret, scope)
    if credentials is None:
        return Peer(outbox_size=size, label=label)  # open mode: anonymous, owner
    role = await engine.role(name, credentials)
    if role is None:
        raise Forbidden(f"{credentials.identity.user_id} may not read {name!r}")
    return Peer(
        outbox_size=size,
        label=f"{label} {credentials.identity.user_id}",
        identity=credentials.identity,
        role=role,
        expires_at=credentials.expires_at,
        credentials=credentials,
    )


async def _attend(
    room: Room,
    peer: Peer,
    receive: Receive,
    send: Send,
    settings: Settings,
    journal: Journal | None,
    history: History | None,
) -> None:
    wire = Wire.under(send, peer, settings.max_buffered) if settings.wire else None
    room.join(peer)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read, room, peer, receive, settings.max_frame_size, journal, history)
            if wire is None:
                tg.start_soon(_write, peer, send)
            # Whoever closes the peer (reader, room, engine) ends the connection,
            # even while the writer is stuck on a client that stopped reading.
            await peer.wait_closed()
            tg.cancel_scope.cancel()
    finally:
        room.leave(peer)


async def _read(
    room: Room,
    peer: Peer,
    receive: Receive,
    max_frame_size: int,
    journal: Journal | None,
    history: History | None,
) -> None:
    """Receive, decode and hand frames to the room until the client leaves or errs.

    While the journal is full, an update waits here before the room takes it: the
    client's later frames stay unread, and TCP slows the client down. A version
    request is answered here, in order: the frames after it wait until the version
    (which holds everything the client sent before) is stored.
    """
    try:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                break
            if kind != "websocket.receive":
                continue
            data = message.get("bytes")
            if data is None:
                raise ProtocolError("text frames are not part of the y-websocket protocol")
            if len(data) > max_frame_size:
                raise MessageTooBig(f"frame of {len(data)} bytes is over {max_frame_size}")
            decoded = decode(data)
            if journal is not None and isinstance(decoded, SyncUpdate | SyncStep2):
                await journal.room_for_more()
            if isinstance(decoded, VersionRequest) and history is not None:
                reply = await history.answer(
                    room.name, decoded.body, author=peer.author, role=peer.role
                )
                peer.send(encode_version_reply(json.dumps(reply)))
                continue
            room.receive(peer, decoded)
            # receive() returns at once while frames are buffered: let the writers run.
            await anyio.lowlevel.checkpoint()
    except CollabError as error:
        peer.close(error)
    else:
        peer.close()


async def _write(peer: Peer, send: Send) -> None:
    """Send the peer's frames in order, one at a time; when several wait, runs of
    updates go merged (`Peer.batches`): a send is a system call, and under load they
    are what the server spends its time on."""
    async for batch in peer.batches():
        for frame in batch:
            await send({"type": "websocket.send", "bytes": frame})


async def _refuse(receive: Receive, send: Send, error: CollabError) -> None:
    """Close a connection that was never served, and let the close frame arrive.

    A client sends its first frames (sync step 1, awareness) as soon as it is
    accepted: were the socket dropped right after our close frame, those unread
    frames would make the kernel reset it, and the client would see 1006 instead of
    the code that says why. So wait, briefly, for the client's own close.
    """
    await _close(send, error)
    with anyio.move_on_after(CLOSE_TIMEOUT):
        while (await receive())["type"] != "websocket.disconnect":
            pass


async def _close(send: Send, error: CollabError) -> None:
    await send(
        {"type": "websocket.close", "code": error.close_code, "reason": close_reason(error.reason)}
    )
