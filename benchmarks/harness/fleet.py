"""Fleets of y-websocket (or Hocuspocus) clients on `wire.Link`, one room each.

* an `Observer` only reads: it syncs as an empty document, then finds the edits'
  markers (`#e<id>#`) in the raw bytes of the update messages it receives and
  timestamps them (`time.perf_counter()` when the frame is read); it decodes nothing
  else;
* a `FullClient` is a pycrdt `Doc` with a `Text`, synced like any y-websocket client
  (answers the server's sync step 1, sends its own, waits for step 2), applying every
  update it receives;
* a `Writer` is a full client that edits: one small insert at the end of its text per
  edit, in one transaction, carrying its marker, sent as one update message.

With awareness, each client sends a state as y-websocket clients do (`user` with a
name and colour, `cursor` null; a writer's cursor at the end of its text, as
y-codemirror.next writes it), and adopts the copy of its own state a server stamps
with `user.id` (ours does), as y-protocols does.

Hocuspocus framing: every message is prefixed by varString(documentName), a client
first sends an authentication message (type 2, token type 0, an empty token) and its
sync step 1; the server answers "authenticated" (2, 2, "read-write"), its sync step 1
and step 2, a sync-status message (8) per update applied, and updates with the prefix.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, Text, TransactionEvent

from collab_engine import protocol
from collab_engine.protocol import AwarenessEntry
from collab_engine.types import ClientId
from harness.sampling import Busy
from harness.servers import HOST
from harness.wire import Link, var_string, var_uint

MARKER = re.compile(rb"#e(\d+)#")
"""The room-local edit id a writer embeds in its insert, found in the raw update bytes."""
EMPTY_STATE_VECTOR = b"\x00"
EMPTY_UPDATE = b"\x00\x00"
"""What an empty document sends: no clients in its state vector; no structs, no deletes."""
RENEW_INTERVAL = 15.0
"""y-protocols renews a client's own awareness state when it is 15 s old."""
COLORS = ("#30bced", "#6eeb83", "#ffbc42", "#ecd444", "#ee6352", "#9ac2c9", "#8acb88")


@dataclass(slots=True)
class Room:
    """One document under test and what its clients saw."""

    index: int
    name: str
    hocuspocus: bool
    writers: int
    edits_per_writer: int
    prefix: bytes = b""
    send_times: list[float] = field(default_factory=list)
    clients: list[Peer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefix = var_string(self.name) if self.hocuspocus else b""
        self.send_times = [math.nan] * self.edits

    @property
    def edits(self) -> int:
        return self.writers * self.edits_per_writer

    @property
    def path(self) -> str:
        return "/" if self.hocuspocus else f"/{self.name}"


class RunState:
    """What every client of one run shares."""

    def __init__(self, stamps_identity: bool) -> None:
        self.stamps_identity = stamps_identity
        self.delivered = 0
        self.expected = 0
        self.closures: list[str] = []
        self.problems: list[str] = []


class Peer(Link):
    """A y-websocket (or Hocuspocus) client: syncs, then hands messages to `live`."""

    full = False

    def __init__(self, run: RunState, room: Room, port: int, deflate: bool, name: str) -> None:
        super().__init__(room.path, port, deflate)
        self.run = run
        self.room = room
        self.name = name
        self.prefix = room.prefix
        self.plen = len(room.prefix)
        self.update_prefix = room.prefix + b"\x00\x02"
        loop = asyncio.get_running_loop()
        self.synced: asyncio.Future[None] = loop.create_future()
        self.adopted: asyncio.Future[None] = loop.create_future()
        self._answered = False
        self._got_step2 = False
        self.received = [math.nan] * room.edits
        self.duplicates = 0
        self.client_id = random.randrange(1, 2**32)
        self.id_bytes = b""
        self.aw_clock = 0
        self.aw_user: dict[str, Any] = {}

    # set-up

    def begin(self) -> None:
        if self.room.hocuspocus:
            self.send(self.prefix + b"\x02\x00" + var_string(""))
        self.send(self.prefix + protocol.encode_sync_step1(self.state_vector()))

    def state_vector(self) -> bytes:
        return EMPTY_STATE_VECTOR

    def update_for(self, state_vector: bytes) -> bytes:
        return EMPTY_UPDATE

    def apply(self, update: bytes) -> None:
        pass

    def setup_message(self, message: bytes) -> None:
        """Sync, authentication and awareness messages (never on the hot path)."""
        if not message.startswith(self.prefix) or len(message) <= self.plen:
            return
        body = message[self.plen :]
        kind = body[0]
        if kind == protocol.MESSAGE_SYNC:
            decoded = protocol.decode(body)
            if isinstance(decoded, protocol.SyncStep1):
                self.send(
                    self.prefix + protocol.encode_sync_step2(self.update_for(decoded.state_vector))
                )
                self._answered = True
            elif isinstance(decoded, protocol.SyncStep2):
                self.apply(decoded.update)
                self._got_step2 = True
            if self._answered and self._got_step2 and not self.synced.done():
                self.synced.set_result(None)
        elif kind == protocol.MESSAGE_AWARENESS:
            self.awareness_message(body)
        elif kind == protocol.MESSAGE_AUTH:
            if self.room.hocuspocus:
                sub = body[1] if len(body) > 1 else -1
                if sub == 0:  # the server asks for the token again
                    self.send(self.prefix + b"\x02\x00" + var_string(""))
                elif sub == 1:
                    self.fail(f"permission denied: {body[2:]!r}")
            else:
                self.fail(f"permission denied: {body!r}")

    def awareness_message(self, body: bytes) -> None:
        """Adopt the server's copy of our own state (ours stamps `user.id`)."""
        if not self.id_bytes or self.id_bytes not in body:
            return
        decoded = protocol.decode(body)
        assert isinstance(decoded, protocol.AwarenessUpdate)
        for entry in decoded.entries:
            if entry.client_id == self.client_id and entry.state is not None:
                if entry.clock >= self.aw_clock:
                    self.aw_clock = entry.clock
                    user = json.loads(entry.state).get("user")
                    if isinstance(user, dict):
                        self.aw_user = user
                    if "id" in self.aw_user and not self.adopted.done():
                        self.adopted.set_result(None)

    def fail(self, reason: str) -> None:
        self.run.problems.append(f"{self.name}: {reason}")
        if not self.synced.done():
            self.synced.set_exception(RuntimeError(reason))

    def on_closed_by_server(self) -> None:
        self.run.closures.append(f"closed by the server: {self.close_code} {self.close_reason!r}")

    def on_lost(self) -> None:
        if self.close_code is None:
            self.run.closures.append("connection lost without a close frame")
        if not self.synced.done():
            self.synced.set_exception(ConnectionError("connection lost during sync"))

    # awareness

    def awareness_state(self) -> dict[str, Any]:
        return {"user": self.aw_user, "cursor": None}

    def send_awareness(self) -> None:
        self.aw_clock += 1
        state = json.dumps(self.awareness_state(), separators=(",", ":"))
        entry = AwarenessEntry(ClientId(self.client_id), self.aw_clock, state)
        self.send(self.prefix + protocol.encode_awareness([entry]))

    def start_awareness(self, index: int) -> None:
        self.id_bytes = var_uint(self.client_id)
        self.aw_user = {"name": f"{self.name}", "color": COLORS[index % len(COLORS)]}
        self.send_awareness()

    # the hot path

    def record(self, message: bytes, now: float, own: int) -> None:
        received = self.received
        count = len(received)
        run = self.run
        for match in MARKER.finditer(message):
            index = int(match[1])
            if index >= count or index % self.room.writers == own:
                continue
            if received[index] != received[index]:  # NaN: the first time
                received[index] = now
                run.delivered += 1
            else:
                self.duplicates += 1


class Observer(Peer):
    """Reads frames, finds the edits' markers in update messages; decodes nothing else."""

    def on_message(self, message: bytes, now: float) -> None:
        if message.startswith(self.update_prefix):
            self.record(message, now, -1)
        elif self.synced.done() and not self.run.stamps_identity:
            return
        elif len(message) > self.plen and message[self.plen] == protocol.MESSAGE_AWARENESS:
            if self.id_bytes and self.id_bytes in message:
                self.awareness_message(message[self.plen :])
        else:
            self.setup_message(message)


class FullClient(Peer):
    """A pycrdt document synced through the server, applying every update it gets."""

    full = True

    def __init__(self, run: RunState, room: Room, port: int, deflate: bool, name: str) -> None:
        super().__init__(run, room, port, deflate, name)
        self.doc: Doc[Any] = Doc()
        self.text = self.doc.get("text", type=Text)
        self.client_id = self.doc.client_id

    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def update_for(self, state_vector: bytes) -> bytes:
        return self.doc.get_update(state_vector)

    def apply(self, update: bytes) -> None:
        self.doc.apply_update(update)

    def on_message(self, message: bytes, now: float) -> None:
        if message.startswith(self.update_prefix):
            self.record(message, now, self.own)
            update = protocol.Decoder(message[self.plen + 2 :]).var_bytes()
            self.doc.apply_update(update)
        else:
            self.setup_message(message)

    own = -1


class Writer(FullClient):
    """A full client that edits: one insert with a marker per edit, 5 per second."""

    def __init__(
        self, run: RunState, room: Room, port: int, deflate: bool, name: str, index: int
    ) -> None:
        super().__init__(run, room, port, deflate, name)
        self.own = index
        self._updates: list[bytes] = []
        self._subscription = self.doc.observe(self._on_transaction)
        self.lags: list[float] = []

    def _on_transaction(self, event: TransactionEvent) -> None:
        self._updates.append(event.update)

    def edit(self, edit_id: int) -> bytes:
        self._updates.clear()
        with self.doc.transaction():
            self.text.insert(len(self.text), f"#e{edit_id}# ")
        update = self._updates[-1]
        self._updates.clear()
        return self.prefix + protocol.encode_sync_update(update)

    def awareness_state(self) -> dict[str, Any]:
        if not self.synced.done():
            return super().awareness_state()
        position = max(0, len(self.text) - 1)

        def relative(clock: int) -> dict[str, Any]:
            return {
                "type": None,
                "tname": "text",
                "item": {"client": self.client_id, "clock": clock},
                "assoc": 0,
            }

        return {
            "user": self.aw_user,
            "cursor": {"anchor": relative(position), "head": relative(position)},
        }


async def connect_all(
    factories: Sequence[Callable[[], Peer]], concurrency: int, timeout: float
) -> list[Peer]:
    """Open and sync every client, `concurrency` at a time, all within `timeout` s; each
    connects to the port it was made for (clients of a cluster go to several)."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    peers: list[Peer] = []

    async def one(factory: Callable[[], Peer]) -> None:
        async with gate:
            made = factory()
            _, peer = await loop.create_connection(lambda: made, HOST, made.port)
            peers.append(peer)
            await peer.opened
            peer.begin()
            await peer.synced

    try:
        async with asyncio.timeout(timeout), asyncio.TaskGroup() as group:
            for factory in factories:
                group.create_task(one(factory))
    except BaseException:
        await close_all(peers)
        raise
    return peers


async def close_all(peers: Sequence[Link], timeout: float = 3.0) -> None:
    for peer in peers:
        peer.start_close()
    pending = [p.lost for p in peers if not p.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for peer in peers:
        if not peer.lost.done():
            peer.abort()


async def quiesce(peers: Sequence[Link], server: Busy, limit: float) -> None:
    """Wait until no frame has arrived for 0.3 s and the server is idle (at most `limit` s)."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        frames0, cpu0 = sum(p.frames for p in peers), server.cpu_seconds()
        await asyncio.sleep(0.3)
        if sum(p.frames for p in peers) == frames0 and server.cpu_seconds() - cpu0 < 0.02:
            return


class MeasurementFailed(RuntimeError):
    """A measurement that could not be completed; its message goes into the table."""


async def connect(
    factories: Sequence[Callable[[], Peer]],
    port: int,
    concurrency: int,
    peers: list[Peer],
    message: bytes = b"",
) -> None:
    """Open and sync a client per factory, `concurrency` at a time, appending each to
    `peers`; each then sends `message` (with its document prefix) if there is one."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    synced = 0

    async def one(factory: Callable[[], Peer]) -> None:
        nonlocal synced
        async with gate:
            _, peer = await loop.create_connection(factory, HOST, port)
            peers.append(peer)
            await peer.opened
            peer.begin()
            await peer.synced
            if message:
                peer.send(peer.prefix + message)
            synced += 1

    timeout = 20 + 0.05 * len(factories)
    try:
        async with asyncio.timeout(timeout):
            outcomes = await asyncio.gather(*map(one, factories), return_exceptions=True)
    except TimeoutError:
        raise MeasurementFailed(
            f"{synced} of {len(factories)} clients synced within {timeout:g} s"
        ) from None
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise MeasurementFailed(f"{len(errors)} of {len(factories)} clients failed to "
                                f"connect or sync, the first: {errors[0]!r}"[:200])  # fmt: skip
