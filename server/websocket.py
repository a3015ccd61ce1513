"""One WebSocket connection: admitted, joined to its room, carried, closed.

Every frame goes to `collab_engine.connection.Connection.receive`, the one seam:
the room decides what each message does. A `Transport` carries the frames: the wire
(`server.wire`, below ASGI) where hypercorn serves the connection over HTTP/1.1
without compression, ASGI (`server.asgi`) anywhere else. This module admits the
connection (its identity and rights, before anything of the document is sent),
joins it to its room, and turns the error that ended it into the close frame.

Whatever ends the connection closes the peer: the client leaving, a bad frame,
the room evicting a slow reader, the engine shutting down. A bad frame ends this
connection only.
"""

from __future__ import annotations

import logging

import anyio

from collab_engine import names
from collab_engine.cluster import Cluster
from collab_engine.connection import Connection
from collab_engine.engine import Engine
from collab_engine.errors import CollabError, Forbidden, StorageError, close_reason
from collab_engine.ownership import Elsewhere
from collab_engine.peer import Peer
from collab_engine.permissions import refusal

from .asgi import CLOSE_TIMEOUT, ASGITransport, until_disconnect
from .auth import credentials_for
from .settings import Settings
from .transport import Transport
from .types import Receive, Scope, Send, path_of
from .wire import Wire, WireTransport

log = logging.getLogger("server.websocket")


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
    engine: Engine,
    settings: Settings,
    scope: Scope,
    receive: Receive,
    send: Send,
    cluster: Cluster | None = None,
) -> None:
    """Serve one y-websocket connection until either side ends it. On a node of a
    `cluster`, a client of a document another node owns is relayed there."""
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
    transport: Transport = (
        ASGITransport(receive, send) if wire is None else WireTransport(wire, receive)
    )
    client = scope.get("client") or ("?", 0)
    try:
        name = document_name(scope, settings.max_name_length)
    except CollabError as error:
        log.info("refusing %s:%s: %s", client[0], client[1], error.reason)
        await _refuse(receive, send, error, transport)
        return
    label = f"{client[0]}:{client[1]} {name!r}"
    try:
        # Who it is and what it may do, before anything of the document is sent.
        peer = await _admit(engine, settings, scope, name, label)
    except CollabError as error:
        log.info("refusing %s: %s (%d)", label, error.reason, error.close_code)
        await _refuse(receive, send, error, transport)
        return
    try:
        async with engine.room(name) as room:
            connection = Connection(room, peer, settings.max_frame_size)
            connection.join()
            try:
                await transport.carry(connection)
            finally:
                connection.leave()
    except Elsewhere as elsewhere:
        if cluster is None:
            peer.close(elsewhere)
        else:
            remote = cluster.remote(elsewhere, peer)
            remote.join()
            try:
                await transport.carry(remote)
            finally:
                remote.leave()
    except StorageError as error:
        # The document could not be loaded: refuse it whole rather than serve part.
        peer.close(error)
    finally:
        # The ASGI server reads the rest: the client's answer to our close frame.
        transport.release()
    await transport.finish(left=peer.error is None)
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


async def _refuse(receive: Receive, send: Send, error: CollabError, transport: Transport) -> None:
    """Close a connection that was never served, and let the close frame arrive.

    A client sends its first frames (sync step 1, awareness) as soon as it is
    accepted: were the socket dropped right after our close frame, those unread
    frames would make the kernel reset it, and the client would see 1006 instead of
    the code that says why. So wait, briefly, for the client's own close (read
    through ASGI: the wire gives its reading back).
    """
    transport.release()
    await _close(send, error)
    await until_disconnect(receive)


async def _close(send: Send, error: CollabError) -> None:
    await send(
        {"type": "websocket.close", "code": error.close_code, "reason": close_reason(error.reason)}
    )
