"""The portable transport: frames through ASGI's `receive` and `send`.

It serves every connection the wire cannot (permessage-deflate, HTTP/2 WebSockets,
another ASGI server, `--asgi`). One reader task receives frames and hands them to the
connection; one writer task drains the peer's outbox through `send`, in order, runs
of updates merged (`Peer.batches`). No task wakes per message.
"""

from __future__ import annotations

import anyio

from collab_engine.connection import Carried
from collab_engine.errors import ProtocolError
from collab_engine.peer import Peer

from .types import Receive, Send


class ASGITransport:
    """Carries a connection's frames through ASGI (see the module docstring)."""

    name = "asgi"

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send

    async def carry(self, connection: Carried) -> None:
        peer = connection.peer
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read, connection)
            tg.start_soon(self._write, peer)
            # Whoever closes the peer ends the connection, even while the writer is
            # stuck on a client that stopped reading.
            await peer.wait_closed()
            # The writer returns within this checkpoint; a task cancelled in an anyio
            # task group keeps its frames in a reference cycle of its traceback.
            await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()

    def release(self) -> None:
        return None  # ASGI reads the socket all along

    async def finish(self, left: bool) -> None:
        return None  # the reader saw the client's disconnect, if it left

    async def _read(self, connection: Carried) -> None:
        peer = connection.peer
        while not peer.closed:
            message = await self._receive()
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
            # receive() returns at once while frames are buffered: let the writer run.
            await anyio.lowlevel.checkpoint()
        peer.close()

    async def _write(self, peer: Peer) -> None:
        # A send is a system call, and under load they are what the server spends its
        # time on: when several frames wait, runs of updates go merged.
        async for batch in peer.batches():
            for frame in batch:
                await self._send({"type": "websocket.send", "bytes": frame})


CLOSE_TIMEOUT = 1.0
"""Seconds to wait for the client's side of a closing handshake."""


async def until_disconnect(receive: Receive) -> None:
    """Read through ASGI until the client has gone, for `CLOSE_TIMEOUT` at most."""
    with anyio.move_on_after(CLOSE_TIMEOUT):
        while (await receive())["type"] != "websocket.disconnect":
            pass
