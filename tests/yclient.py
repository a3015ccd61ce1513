"""A small y-websocket client for the tests: a pycrdt Doc synced over a real WebSocket.

It speaks the protocol through `collab_engine.protocol` and nothing else, the way a
Yjs client does: answers sync step 1, applies step 2 and updates, sends its own
changes as updates, and keeps the awareness states it hears.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from pycrdt import Doc, TransactionEvent
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from collab_engine import protocol
from collab_engine.protocol import AwarenessEntry

_REMOTE = "remote"


class YClient:
    """One replica connected to one document."""

    def __init__(self, ws: ClientConnection, doc: Doc[Any]) -> None:
        self.ws = ws
        self.doc = doc
        self.synced = anyio.Event()
        self.awareness: dict[int, dict[str, Any]] = {}
        self.awareness_clock: dict[int, int] = {}
        self.received: list[protocol.Message] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = anyio.Event()
        self._changed = anyio.Event()
        self._applying = False
        self._outgoing: list[bytes] = []  # local updates not sent yet, oldest first
        self.updates_sent = 0
        """Update messages (sync step 2 and update) sent on this connection."""
        self.persisted = -1
        """The server's latest persisted acknowledgement (-1: none received)."""
        doc.observe(self._on_change)

    def _on_change(self, event: TransactionEvent) -> None:
        if self._applying or event.update == b"\x00\x00":
            return
        self._outgoing.append(protocol.encode_sync_update(event.update))

    async def flush(self) -> None:
        """Send every local change made since the last flush."""
        while self._outgoing:
            await self.send(self._outgoing.pop(0))

    async def send(self, frame: bytes) -> None:
        """Send one frame as is, counting the update messages among them."""
        if frame[:2] in (b"\x00\x01", b"\x00\x02"):
            self.updates_sent += 1
        await self.ws.send(frame)

    async def request_persisted(self) -> None:
        """Ask the server for persisted acknowledgements; wait for its first answer.

        Raises:
            ConnectionError: the connection closed before the answer came.
        """
        await self.ws.send(protocol.encode_request_persisted())
        await self.wait_for(lambda: self.persisted >= 0 or self.closed.is_set())
        if self.persisted < 0:
            raise ConnectionError(f"closed ({self.close_code}) before persisted acknowledgements")

    async def wait_persisted(self, timeout: float = 5.0) -> None:
        """Wait until every update message sent so far is acknowledged as durable."""
        sent = self.updates_sent
        await self.wait_for(lambda: self.persisted >= sent, timeout)

    async def set_awareness(
        self, state: dict[str, Any] | None, client_id: int | None = None
    ) -> None:
        cid = self.doc.client_id if client_id is None else client_id
        clock = self.awareness_clock.get(cid, 0) + 1
        self.awareness_clock[cid] = clock
        text = None if state is None else json.dumps(state)
        await self.ws.send(protocol.encode_awareness([AwarenessEntry(cid, clock, text)]))  # type: ignore[arg-type]

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                assert isinstance(frame, bytes)
                message = protocol.decode(frame)
                self.received.append(message)
                match message:
                    case protocol.SyncStep1(sv):
                        await self.send(protocol.encode_sync_step2(self.doc.get_update(sv)))
                    case protocol.SyncStep2(update) | protocol.SyncUpdate(update):
                        self._applying = True
                        try:
                            self.doc.apply_update(update)
                        finally:
                            self._applying = False
                        if isinstance(message, protocol.SyncStep2):
                            self.synced.set()
                    case protocol.Persisted(count):
                        self.persisted = count
                    case protocol.AwarenessUpdate(entries):
                        for entry in entries:
                            if entry.state is None:
                                self.awareness.pop(entry.client_id, None)
                            else:
                                self.awareness[entry.client_id] = json.loads(entry.state)
                self._changed.set()
                self._changed = anyio.Event()
        except ConnectionClosed:
            pass
        finally:
            close = self.ws.protocol.close_rcvd
            if close is not None:
                self.close_code = close.code
                self.close_reason = close.reason
            self.closed.set()
            self._changed.set()

    async def round_trip(self) -> None:
        """A barrier: send sync step 1 and wait for the server's step 2 answer. The
        server answers in order, so whatever it sent this client before it read the
        step 1 has arrived: after it, what did not come is not coming."""
        answers = sum(isinstance(m, protocol.SyncStep2) for m in self.received)
        await self.ws.send(protocol.encode_sync_step1(self.doc.get_state()))
        await self.wait_for(
            lambda: sum(isinstance(m, protocol.SyncStep2) for m in self.received) > answers
        )

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until `predicate()` holds; fail the test after `timeout` seconds."""
        with anyio.fail_after(timeout):
            while not predicate():
                changed = self._changed
                with anyio.move_on_after(0.05):
                    await changed.wait()


@asynccontextmanager
async def yclient(
    base_url: str,
    name: str,
    *,
    doc: Doc[Any] | None = None,
    sync: bool = True,
    sync_timeout: float = 5.0,
    **kwargs: Any,
) -> AsyncIterator[YClient]:
    """Connect a replica to `base_url/name`; with `sync`, also send sync step 1 and
    wait for step 2 (failing after `sync_timeout` seconds)."""
    kwargs.setdefault("max_size", None)
    kwargs.setdefault("ping_interval", None)
    async with connect(f"{base_url}/{name}", **kwargs) as ws:
        client = YClient(ws, doc if doc is not None else Doc())
        async with anyio.create_task_group() as tg:
            tg.start_soon(client._read)
            if sync:
                await ws.send(protocol.encode_sync_step1(client.doc.get_state()))
                with anyio.fail_after(sync_timeout):
                    await client.synced.wait()
            try:
                yield client
            finally:
                tg.cancel_scope.cancel()
