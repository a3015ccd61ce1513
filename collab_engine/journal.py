"""The journal: one writer per process between the rooms and the store.

Rooms hand it every update their document takes (`submit`, synchronous, from the
document observer). One writer task takes whatever is waiting, for all documents,
and appends it to the store in one transaction (group commit): under load, a
single commit makes hundreds of updates durable. When the append returns, the
journal tells each room which of its updates are now stored (`Room.persisted`),
and the room acknowledges its senders.

The queue is bounded, in updates and in bytes (plus the one batch the writer is
writing, at most `max_batch` updates). Nothing is ever dropped from it:
when it is full, connections wait in `room_for_more()` before they take their next
update from the network, so a client that writes faster than the disk is slowed
down (TCP backpressure), while edits already applied in memory are always kept.
In-process edits are not gated (they cannot be refused after the fact); a program
that writes in a loop awaits `room_for_more()` or `Room.flush()` itself.

`drain()` writes everything submitted before it returns: the engine calls it on
shutdown, after it has stopped its rooms taking changes.

A write that fails (database locked past its busy timeout, disk full, read-only)
is retried document by document, so that one bad document does not take others
down; a document whose updates still cannot be written is failed with a
`StorageError` naming it and the sequence number it was to be written at: its
connections are closed with 1011 and the room is discarded, so the next opening
reloads exactly what is stored. Its unwritten updates were never acknowledged:
their authors still hold them and send them again when they reconnect. A document
this node no longer owns (a node of a cluster: `ownership.Deposed`) goes the same
way, its connections closed with 1012.

A store that cannot be reached (`store.StoreUnavailable`: the database refuses or
drops connections) fails no document: the batch is tried again, after a pause that
doubles up to `RETRY_MAX`, until the store answers. Rooms keep serving meanwhile
(readers read, edits are shared), nothing is acknowledged, and once the queue is
full, writers wait. `pause` holds every commit the same way, for as long as the
node is not sure it may write (a node of a cluster whose lease is in doubt).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from .clock import SYSTEM, Clock
from .errors import StorageError
from .ownership import Deposed
from .store import Entry, Store, StoreUnavailable
from .types import Update

log = logging.getLogger("collab_engine.journal")

LINGER_GAP = 0.003
"""Seconds without a new update that end the journal's linger early."""
RETRY_FIRST = 0.1
RETRY_MAX = 5.0
"""Seconds between two attempts to write to a store that cannot be reached: from the
first, doubling up to the most."""


class Journaled(Protocol):
    """What the journal needs of a room: its name and where to report."""

    @property
    def name(self) -> str: ...

    @property
    def failed(self) -> StorageError | None: ...

    @property
    def stored_seq(self) -> int:
        """The sequence number of the room's newest stored update."""
        ...

    @property
    def epoch(self) -> int | None:
        """The ownership epoch the room's node holds the document at, which fences
        its updates (`store.Entry.epoch`); None outside a cluster."""
        ...

    def persisted(self, ticket: int, seq: int, count: int, size: int) -> None:
        """Updates up to `ticket` are stored; the last of them has sequence `seq`;
        `count` updates of `size` bytes were written for this room."""

    def storage_failed(self, error: StorageError) -> None:
        """The room's updates cannot be written: stop serving it."""


@dataclass(slots=True)
class _Write:
    ticket: int
    room: Journaled
    entry: Entry


class Journal:
    """The process's one writer to `store`.

    Args:
        store: where updates go.
        max_pending: how many updates may wait to be written before senders wait.
        max_pending_bytes: how many bytes of updates may wait before senders wait.
        max_batch: the most updates written in one transaction (1 = one commit
            per update, for comparison in the benchmarks).
        linger: at most how long the writer waits, once there is something to
            write, for more to write in the same transaction (0: write at once).
            A commit costs far more than one more row in it: under load, lingering
            turns many commits into one, and delays acknowledgements by at most
            this much; the document, and what connected clients see, are not
            delayed. While someone awaits an acknowledgement (`hasten`,
            `wait_written`), a pause of `LINGER_GAP` in the updates also ends the
            wait: a writer that sends its next update only once the last is
            stored is not held for the whole linger. Nobody waiting (y-websocket
            clients never do), the writer sleeps through the linger in one wait.
        clock: where the linger's time comes from.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_pending: int = 10_000,
        max_pending_bytes: int = 64 * 1024 * 1024,
        max_batch: int = 2_000,
        linger: float = 0.0,
        clock: Clock = SYSTEM,
    ) -> None:
        if max_pending < 1 or max_pending_bytes < 1 or max_batch < 1:
            raise ValueError("journal limits must be positive")
        if linger < 0:
            raise ValueError("the journal's linger cannot be negative")
        self.linger = linger
        self._clock = clock
        self.store = store
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_batch = max_batch
        self._pending: deque[_Write] = deque()
        self._pending_bytes = 0
        self.submitted = 0
        """The ticket of the newest submitted update (tickets count from 1)."""
        self.written = 0
        """Every update with a ticket up to this one has been written, or failed."""
        self.commits = 0
        """How many transactions the writer has committed (for the benchmarks)."""
        self._wakeup = anyio.Event()
        self._progress = anyio.Event()
        self._draining = False
        """`drain` is waiting: no linger."""
        self._sleep: anyio.CancelScope | None = None
        """The linger's one long sleep, while it lasts: cancelled (`_hurry`) when an
        acknowledgement starts being awaited, or the transaction or queue fills."""
        self._awaited_ticket = 0
        """Someone awaits the acknowledgement of the updates up to this ticket."""
        self._waiters = 0
        """Tasks in `wait_written`."""
        self._running = False
        self.paused: str | None = None
        """Why commits are held (`pause`), or None."""
        self._resumed = anyio.Event()
        self.unavailable: str | None = None
        """Why the store cannot be reached, while it cannot; None otherwise."""

    # -- the rooms' side ---------------------------------------------------------------

    def submit(self, room: Journaled, update: Update, author: str | None = None) -> int:
        """Queue `update` of `room` for writing; return its ticket. Never blocks."""
        self.submitted += 1
        entry = Entry(room.name, update, author, room.epoch)
        self._pending.append(_Write(self.submitted, room, entry))
        self._pending_bytes += len(update)
        self._wakeup.set()
        if len(self._pending) == self.max_batch:
            self._hurry()  # a full transaction: no reason to linger any more
        return self.submitted

    def hasten(self, ticket: int) -> None:
        """Someone awaits the acknowledgement of the updates up to `ticket` (a
        client that asked for them): the writer's linger ends at the next pause in
        the updates, not at its deadline."""
        if ticket > self._awaited_ticket:
            self._awaited_ticket = ticket
            self._hurry()

    def full(self) -> bool:
        """Whether senders must wait before the next update is taken."""
        return (
            len(self._pending) >= self.max_pending or self._pending_bytes >= self.max_pending_bytes
        )

    def pending(self) -> int:
        """How many updates wait to be written."""
        return len(self._pending)

    async def room_for_more(self) -> None:
        """Wait while the queue is full (the writer is behind)."""
        while self.full():
            self._hurry()
            await self._progress.wait()

    async def wait_written(self, ticket: int) -> None:
        """Wait until the update with `ticket`, and every one before it, is written
        (or has failed: the caller checks its room)."""
        if self.written >= ticket:
            return
        self._waiters += 1
        self._hurry()
        try:
            while self.written < ticket:
                await self._progress.wait()
        finally:
            self._waiters -= 1

    async def drain(self) -> None:
        """Wait until everything submitted so far is written, without lingering: the
        engine drains when it stops, when nothing more is coming to share a commit."""
        self._draining = True
        self._hurry()
        try:
            await self.wait_written(self.submitted)
        finally:
            self._draining = False

    def pause(self, reason: str) -> None:
        """Hold every commit (and so every acknowledgement) until `resume`; what is
        submitted meanwhile waits in the queue, whose bound then holds writers back."""
        if self.paused is None:
            log.warning("the journal holds its commits: %s", reason)
        self.paused = reason

    def resume(self) -> None:
        """Commit again what waits."""
        if self.paused is not None:
            log.warning("the journal commits again")
            self.paused = None
            self._resumed.set()

    # -- the writer --------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer task: write batches until cancelled. One per journal."""
        if self._running:
            raise RuntimeError("the journal already has a writer")
        self._running = True
        task_status.started()
        try:
            while True:
                if not self._pending:
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()
                # Linger after a commit too, not only after a wait: updates that came
                # in during a commit would otherwise be written at once, and a steady
                # stream (y-websocket clients do not wait for acknowledgements) would
                # cost a commit per commit time instead of one per linger.
                if self.linger:
                    await self._linger()
                while self.paused is not None:
                    self._resumed = anyio.Event()
                    await self._resumed.wait()
                batch: list[_Write] = []
                while self._pending and len(batch) < self.max_batch:
                    write = self._pending.popleft()
                    self._pending_bytes -= len(write.entry.update)
                    batch.append(write)
                self._changed()  # the queue has room again: senders may go on
                await self._write(batch)
                self.written = batch[-1].ticket
                self._changed()
        finally:
            self._running = False

    async def _linger(self) -> None:
        # Wait for more updates: up to `linger` in all. Busy rooms then share commits.
        # While an acknowledgement is awaited, a pause of LINGER_GAP in the arrivals
        # ends it, so writers that wait for each acknowledgement before they send
        # more are not held for the whole linger. Otherwise one sleep: watching for
        # a pause means waking every LINGER_GAP, which costs the event loop more than
        # the rest of the journal's work (measured: see the dated note on code
        # comments under benchmarks/results/notes/).
        deadline = self._clock.monotonic() + self.linger
        while True:
            left = deadline - self._clock.monotonic()
            if left <= 0 or self._batch_ready() or self._draining:
                return
            if not (self._waiters or self._awaited_ticket > self.written):
                # A cancel scope without a deadline, cancelled by `_hurry`: anyio's
                # deadlines re-arm their timer until the loop's clock passes them,
                # and uvloop's timers fire up to a millisecond early: dozens of
                # wake-ups per deadline.
                try:
                    with anyio.CancelScope() as self._sleep:
                        await self._clock.sleep(left)
                finally:
                    self._sleep = None
                continue
            count = len(self._pending)
            try:
                with anyio.CancelScope() as self._sleep:
                    await self._clock.sleep(min(LINGER_GAP, left))
            finally:
                self._sleep = None
            if len(self._pending) == count:
                return  # a pause (or a drain, which `_hurry` woke it for)

    def _hurry(self) -> None:
        # End the linger's long sleep, if it is in one (see `_linger`).
        if self._sleep is not None:
            self._sleep.cancel()

    def _batch_ready(self) -> bool:
        # A full transaction, or senders held back: lingering cannot add anything.
        return len(self._pending) >= self.max_batch or self.full()

    def _changed(self) -> None:
        # Wake every waiter; each re-checks its own condition.
        progress, self._progress = self._progress, anyio.Event()
        progress.set()

    async def _write(self, batch: list[_Write]) -> None:
        batch = [write for write in batch if write.room.failed is None]
        if not batch:
            return
        error = await self._append_when_available(batch)
        if error is None:
            return
        documents = {write.entry.document for write in batch}
        if len(documents) == 1:
            self._fail(batch, error)
            return
        log.warning(
            "writing %d updates of %d documents failed (%s): retrying document by document",
            len(batch),
            len(documents),
            error,
        )
        for document in documents:
            alone = [write for write in batch if write.entry.document == document]
            error = await self._append_when_available(alone)
            if error is not None:
                self._fail(alone, error)

    async def _append_when_available(self, batch: list[_Write]) -> Exception | None:
        """`_append`, tried again for as long as the store cannot be reached."""
        delay = RETRY_FIRST
        while True:
            error = await self._append(batch)
            if not isinstance(error, StoreUnavailable):
                if self.unavailable is not None:
                    log.warning("the store answers again: commits and acknowledgements resume")
                    self.unavailable = None
                return error
            if self.unavailable is None:
                log.error(
                    "the store cannot be reached (%s): nothing is acknowledged until it "
                    "answers; %d update(s) wait, the rooms go on serving",
                    error.reason,
                    len(self._pending) + len(batch),
                )
            self.unavailable = error.reason
            await self._clock.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _append(self, batch: list[_Write]) -> Exception | None:
        """Append `batch` in one transaction and report it; return the error, if any.

        Shielded: an append that has started is finished, so cancelling the writer
        (at shutdown, after drain) never leaves acknowledgements unsent."""
        try:
            with anyio.CancelScope(shield=True):
                seqs = await self.store.append([write.entry for write in batch])
        except Exception as exc:  # noqa: BLE001 - any store failure is the caller's to handle
            return exc
        self.commits += 1
        self._report(batch, seqs)
        return None

    def _report(self, batch: Sequence[_Write], seqs: Sequence[int]) -> None:
        last: dict[int, tuple[Journaled, int, int, int, int]] = {}
        for write, seq in zip(batch, seqs, strict=True):
            key = id(write.room)
            _, _, _, count, size = last.get(key, (write.room, 0, 0, 0, 0))
            last[key] = (write.room, write.ticket, seq, count + 1, size + len(write.entry.update))
        for room, ticket, seq, count, size in last.values():
            room.persisted(ticket, seq, count, size)

    def _fail(self, batch: Sequence[_Write], exc: Exception) -> None:
        rooms = {id(write.room): write.room for write in batch}
        if isinstance(exc, Deposed):
            # Not a failure of storage: the document moved to another node. Its
            # connections end (1012) and reconnect; the new owner serves them.
            log.warning("%s", exc.reason)
            for room in rooms.values():
                room.storage_failed(exc)
            return
        for room in rooms.values():
            count = sum(1 for write in batch if write.room is room)
            error = StorageError(
                f"cannot store document {room.name!r} from seq {room.stored_seq + 1} "
                f"({count} update(s)): {describe_error(exc)}"
            )
            log.error("%s", error.reason)
            room.storage_failed(error)


def describe_error(exc: BaseException) -> str:
    """The first line of what went wrong in a store, without SQLAlchemy's SQL dump."""
    # SQLAlchemy's messages carry the SQL and a link; the driver's first line says it.
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__
