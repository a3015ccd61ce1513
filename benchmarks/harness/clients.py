"""Plain `websockets` clients speaking y-websocket, for benchmarks with few clients
(a fleet of hundreds uses `fleet`, on the cheaper `wire.Link`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from pycrdt import Doc
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from collab_engine import protocol


async def open_client(url: str, *, compression: str | None, timeout: float) -> ClientConnection:
    """A WebSocket client connection with no proxy and no client-side pings."""
    return await connect(
        url,
        compression=compression,
        proxy=None,
        ping_interval=None,
        open_timeout=timeout,
        close_timeout=2,
    )


async def sync(ws: ClientConnection, doc: Doc[Any]) -> None:
    """Run both halves of the y-websocket sync: answer the server's step 1 with our
    step 2, send our step 1, and return once the server's step 2 is applied."""
    await ws.send(protocol.encode_sync_step1(doc.get_state()))
    answered = synced = False
    while not (answered and synced):
        message = protocol.decode(await ws.recv(decode=False))
        match message:
            case protocol.SyncStep1(state_vector):
                await ws.send(protocol.encode_sync_step2(doc.get_update(state_vector)))
                answered = True
            case protocol.SyncStep2(update):
                doc.apply_update(update)
                synced = True


def describe_close(exc: ConnectionClosed) -> str:
    if exc.rcvd is not None:
        return f"closed by server {exc.rcvd.code} {exc.rcvd.reason!r}".rstrip()
    return "connection lost without a close frame"


async def close_connections(connections: Sequence[ClientConnection]) -> None:
    """Close every connection, all at once, giving up after 10 s."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
