"""The engine: the owner of rooms, and the embedding API.

    async with Engine(store=store) as engine:
        async with engine.room("notes/today") as room:
            with room.doc.transaction():
                room.doc.get("body", type=Text).insert(0, "Hello")
            await room.flush()          # stored

A room is loaded from the store on its first use (its latest snapshot, then the
updates after it) and unloaded once nobody has used it for `unload_grace` seconds
and everything it took is stored. Connected clients see an in-process change
exactly as they see another client's: both go through the room's document
observer, which also hands the update to the journal.

The engine owns its background tasks in one task group that lives and dies with
the `async with` block: the journal's writer, the sweeper (awareness timeouts,
idle rooms, compaction and automatic versions due), the compactor and the
history's versioner (see `history`). Leaving the block closes every
peer with 1001, stops the rooms taking changes, and writes everything accepted.

Compaction runs on its own schedule, never inside a write: when a loaded
document has `compact_after_updates` updates or `compact_after_bytes` bytes since
its latest snapshot, the compactor rebuilds it from the store and writes a new
snapshot in one transaction. The update log is kept whole: version history needs
it, and compaction only shortens loading.

Without a store, documents live in memory only and nothing is acknowledged.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .clock import SYSTEM, Clock
from .errors import Forbidden, GoingAway, StorageError, Unauthenticated
from .history import History, HistoryPolicy
from .journal import Journal, describe_error
from .locks import LockLimits, Locks
from .names import normalized
from .ownership import Ownership
from .peer import Peer
from .permissions import Credentials, Grant, Role, decide
from .presence import PresencePolicy
from .room import Room
from .store import Store, Stored, rebuild
from .tenure import Tenure
from .types import DocumentName, Update
from .worker import Worker

log = logging.getLogger("collab_engine.engine")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's limits and timings. Every one is explicit and tested."""

    max_awareness_state_size: int = 64 * 1024
    """Largest awareness state accepted, in bytes of JSON; larger closes with 1009."""
    awareness_timeout: float = 30.0
    """Seconds before an awareness state that was not renewed is removed (y-protocols' value)."""
    outbox_size: int = 1024
    """Frames that may wait for one peer's writer before it is evicted with 1013."""
    unload_grace: float = 2.0
    """Seconds a room stays loaded after its last user leaves."""
    sweep_interval: float = 0.25
    """Seconds between two visits of each room (presence timers, lock expiry, awareness
    timeouts, expired credentials, idle rooms, compaction due); the rooms are visited
    a slice at a time over the interval, not all at once."""
    presence: PresencePolicy = PresencePolicy()
    """Identity, rate, typing and idle rules of awareness (see `presence`)."""
    lock_ttl: float = 30.0
    """Seconds a lock lasts unless renewed (a request may ask for another ttl)."""
    lock_grace: float = 5.0
    """Seconds a lock outlives its holder's connection."""
    lock_limits: LockLimits = LockLimits()
    """How long a section may be, how many leases there may be, and how much of them
    the server's awareness entry shows (see `locks.LockLimits`)."""
    presence_interval: float = 0.05
    """Seconds between two ticks of the rooms where the rate limit holds back awareness
    states (they go out as the rate allows); the other rooms are ticked when visited
    (`sweep_interval`)."""
    journal_max_pending: int = 10_000
    """Updates that may wait for the disk before connections stop reading updates."""
    journal_max_pending_bytes: int = 64 * 1024 * 1024
    """Bytes of updates that may wait for the disk before connections stop reading."""
    journal_max_batch: int = 2_000
    """The most updates written in one transaction (1 = a commit per update)."""
    journal_linger: float = 0.05
    """At most how long the journal waits for more updates before it commits (see
    `Journal`; a pause ends the wait while an acknowledgement is awaited):
    acknowledgements come up to this much later, and commits are fewer under load."""
    compact_after_updates: int = 1_000
    """Write a snapshot once a document has this many updates after its latest one."""
    compact_after_bytes: int = 1024 * 1024
    """... or this many bytes of updates."""
    compaction_retry: float = 60.0
    """Seconds before a document whose compaction failed is tried again."""
    drain_timeout: float = 30.0
    """Seconds the engine waits, when it stops, for the journal to write what it holds."""
    history: HistoryPolicy = HistoryPolicy()
    """When automatic versions are made and how long they are kept (see `history`)."""


@dataclass(slots=True)
class _Slot:
    loaded: anyio.Event = field(default_factory=anyio.Event)
    room: Room | None = None
    error: StorageError | None = None
    users: int = 0
    idle_since: float = 0.0


class Engine:
    """The rooms of one process. Use as `async with Engine(config, store) as engine:`.

    Args:
        config: limits and timings.
        store: where documents are kept; None keeps them in memory only.
        clock: where time comes from, for the engine and everything it runs (rooms,
            presence, locks, the journal's linger, history, the sweeper).
        ownership: the cluster's ownership table, for a node of a cluster (None: one
            process alone). The engine then loads only the documents this node owns
            (claiming them; `Elsewhere` names the owner of the others), fences their
            updates with the lease's epoch, keeps its lease renewed, and gives its
            documents up when it stops: see `tenure`.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        store: Store | None = None,
        *,
        clock: Clock = SYSTEM,
        ownership: Ownership | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.store = store
        self.clock = clock
        self.ownership = ownership
        self.on_grants: Callable[[str], None] | None = None
        """Told of each grant change made here (a node of a cluster tells the others)."""
        self._regranter = Worker(
            self._regrant, expected=(StorageError,), failed=self._not_regranted
        )
        """Rooms whose grants changed elsewhere: read again, then applied to their peers."""
        self.journal: Journal | None = None
        if store is not None:
            self.journal = Journal(
                store,
                max_pending=self.config.journal_max_pending,
                max_pending_bytes=self.config.journal_max_pending_bytes,
                max_batch=self.config.journal_max_batch,
                linger=self.config.journal_linger,
                clock=clock,
            )
        self._slots: dict[DocumentName, _Slot] = {}
        self._holding: set[Room] = set()
        """Rooms whose presence rate limit holds back states (ticked more often)."""
        self._task_group: TaskGroup | None = None
        # Documents due for compaction, oldest first: one entry per document at most.
        self._compactor = Worker(self.compact, expected=(StorageError,), failed=self._not_compacted)
        """Documents due for compaction, one at a time."""
        self._compaction_not_before: dict[DocumentName, float] = {}
        # Grants by document: read from the store once, then kept here and changed
        # only through `grant`/`revoke`, which also apply them to open connections.
        self._grants: dict[DocumentName, list[Grant]] = {}
        self.history = History(self, self.config.history)
        """Versions, content at a version, diffs and restore (needs a store)."""
        self.tenure: Tenure | None = (
            None
            if ownership is None
            else Tenure(ownership, clock, self.journal, lambda: self.rooms)
        )
        """How this node holds the documents it owns (a node of a cluster)."""

    async def __aenter__(self) -> Engine:
        if self._task_group is not None:
            raise RuntimeError("engine already running")
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        if self.journal is not None:
            await self._task_group.start(self.journal.run)
            self._task_group.start_soon(self._compactor.run)
            self._task_group.start_soon(self.history.run)
        self._task_group.start_soon(self._sweep_forever)
        self._task_group.start_soon(self._regranter.run)
        if self.tenure is not None:
            await self._join(self.tenure)
            self._task_group.start_soon(self.tenure.hold)
            self._task_group.start_soon(self.tenure.release_unloaded)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self.close_peers()
        for slot in self._slots.values():
            if slot.room is not None:
                slot.room.close()
        if self.journal is not None:
            await self._drain(self.journal)
        if self.tenure is not None:
            await self.tenure.leave(self.config.drain_timeout)
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._task_group = None
            self._slots.clear()

    async def _join(self, tenure: Tenure) -> None:
        try:
            await tenure.join()
        except BaseException:
            assert self._task_group is not None
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            self._task_group = None
            raise

    async def _drain(self, journal: Journal) -> None:
        # Shielded: an engine leaving because it was cancelled still writes what it
        # accepted, within the drain timeout. A journal held because this node's lease
        # is in doubt may not write (another node may own the documents by now): it
        # is not waited for.
        if journal.paused is None:
            with anyio.move_on_after(self.config.drain_timeout, shield=True):
                await journal.drain()
        if journal.pending():
            log.error(
                "the store did not take %d update(s) within %s s: they are lost to this "
                "process (their authors were not acknowledged and resend them on reconnect)",
                journal.pending(),
                self.config.drain_timeout,
            )

    @property
    def running(self) -> bool:
        """Whether the engine runs (between entering and leaving its `async with`)."""
        return self._task_group is not None

    @property
    def rooms(self) -> dict[DocumentName, Room]:
        """The rooms loaded now, by document name."""
        return {name: slot.room for name, slot in self._slots.items() if slot.room is not None}

    @asynccontextmanager
    async def room(self, name: str) -> AsyncIterator[Room]:
        """Use the room of document `name`, loading it if it is cold.

        Every concurrent user of one name gets the same room. The room stays loaded
        while it is in use and for `unload_grace` seconds after. `name` is taken in
        NFC (`names.normalized`): its NFC and NFD spellings open one room.
        """
        if self._task_group is None:
            raise RuntimeError("the engine is not running: use `async with Engine()`")
        doc_name = DocumentName(normalized(name))
        slot = self._slots.get(doc_name)
        if slot is not None and slot.room is not None and slot.room.failed is not None:
            # A room whose storage failed is done; this opening loads what is stored.
            del self._slots[doc_name]
            slot = None
        loading = slot is None
        if slot is None:
            slot = self._slots[doc_name] = _Slot()
        slot.users += 1
        try:
            if loading:
                await self._fill(doc_name, slot)
            else:
                await slot.loaded.wait()
            if slot.error is not None:
                raise slot.error
            assert slot.room is not None
            yield slot.room
        finally:
            slot.users -= 1
            if slot.users == 0:
                slot.idle_since = self.clock.monotonic()

    async def _fill(self, name: DocumentName, slot: _Slot) -> None:
        try:
            slot.room = await self._load(name)
            log.debug("room %r loaded", name)
        except BaseException as exc:
            slot.error = (
                exc
                if isinstance(exc, StorageError)
                else StorageError(f"loading document {name!r} was interrupted")
            )
            if self._slots.get(name) is slot:
                del self._slots[name]
            raise
        finally:
            slot.loaded.set()

    async def _load(self, name: DocumentName) -> Room:
        options: dict[str, Any] = {
            "max_awareness_state_size": self.config.max_awareness_state_size,
            "awareness_timeout": self.config.awareness_timeout,
            "presence": self.config.presence,
            "locks": Locks(
                default_ttl=self.config.lock_ttl,
                grace=self.config.lock_grace,
                limits=self.config.lock_limits,
                first_fence=int(self.clock.wall() * 1000),
            ),
            "clock": self.clock,
            "on_holding": self._holding.add,
            "versions": self.history if self.store is not None else None,
        }
        if self.store is None:
            return Room(name, **options)
        lease = None if self.tenure is None else await self.tenure.claim(name)
        try:
            # Shielded, as every store call: SQLAlchemy's aiosqlite adapter cannot
            # recover a connection cancelled in the middle of a query (its close then
            # waits forever). A load is bounded; a caller that left finds it done.
            with anyio.CancelScope(shield=True):
                stored = await self.store.load(name)
        except Exception as exc:
            error = StorageError(f"cannot load document {name!r}: {describe_error(exc)}")
            log.error("%s", error.reason)
            raise error from exc
        if stored.snapshot is None and not stored.updates:
            doc = rebuild(name, stored)  # a new document: nothing to integrate
        else:
            # A long history takes a while to integrate: off the event loop.
            doc = await anyio.to_thread.run_sync(rebuild, name, stored)
        room = Room(
            name,
            doc=doc,
            journal=self.journal,
            stored_seq=stored.last_seq,
            snapshot_seq=stored.snapshot_seq,
            since_snapshot_bytes=sum(len(update) for _, update in stored.updates),
            **options,
        )
        if self.tenure is not None and lease is not None:
            await self.tenure.adopt(room, lease)
        return room

    # -- permissions ------------------------------------------------------------------

    async def grants(self, name: str) -> list[Grant]:
        """The grants stored for document `name`.

        Raises:
            StorageError: they cannot be read.
        """
        name = normalized(name)
        doc_name = DocumentName(name)
        cached = self._grants.get(doc_name)
        if cached is not None:
            return list(cached)
        loaded: list[Grant] = []
        if self.store is not None:
            try:
                with anyio.CancelScope(shield=True):
                    loaded = await self.store.grants(doc_name)
            except Exception as exc:
                raise StorageError(
                    f"cannot read the grants of {name!r}: {describe_error(exc)}"
                ) from exc
        self._grants[doc_name] = loaded
        return list(loaded)

    async def role(self, name: str, credentials: Credentials) -> Role | None:
        """What `credentials` may do to document `name` (None: nothing, not even read)."""
        return decide(credentials, name, await self.grants(name))

    async def grant(self, name: str, grant: Grant) -> None:
        """Store `grant` on document `name`; open connections get their new rights now."""
        name = normalized(name)
        if self.store is not None:
            await self.store.grant(name, grant)
        current = [g for g in await self.grants(name) if g.principal != grant.principal]
        self._grants[DocumentName(name)] = sorted([*current, grant], key=lambda g: g.principal)
        self._reevaluate(DocumentName(name))
        if self.on_grants is not None:
            self.on_grants(name)

    async def revoke(self, name: str, principal: str) -> bool:
        """Remove `principal`'s grant on `name`; open connections lose rights now."""
        name = normalized(name)
        removed = True
        if self.store is not None:
            removed = await self.store.revoke(name, principal)
        current = await self.grants(name)
        self._grants[DocumentName(name)] = [g for g in current if g.principal != principal]
        self._reevaluate(DocumentName(name))
        if self.on_grants is not None:
            self.on_grants(name)
        return removed

    def grants_changed(self, name: str | None) -> None:
        """The grants of document `name` (None: of any document) changed elsewhere (on
        another node of a cluster): forget them, and read them again for the room's
        connected peers, who get their new rights (or 4403) once they are read."""
        names = list(self._grants) if name is None else [DocumentName(normalized(name))]
        for doc_name in names:
            self._grants.pop(doc_name, None)
            if doc_name in self._slots:
                self._regranter.mark(doc_name)

    async def _regrant(self, name: DocumentName) -> None:
        await self.grants(name)
        self._reevaluate(name)

    def _not_regranted(self, name: DocumentName, error: Exception) -> None:
        # The peers keep their rights until the grants can be read (the next change,
        # or the next lost notice, tries again).
        log.error("cannot apply the changed grants of %r: %s", name, error)

    def _reevaluate(self, name: DocumentName) -> None:
        room = self.rooms.get(name)
        if room is None:
            return
        grants = self._grants.get(name, [])

        def role_of(peer: Peer) -> Role | None:
            if peer.credentials is None:
                return peer.role
            return decide(peer.credentials, name, grants)

        room.reevaluate(role_of, Forbidden(f"no right to read {name!r} any more"))

    def _expire_credentials(self, room: Room, now: float) -> None:
        # Close the peers of `room` whose credentials have expired (`now`: Unix time).
        if room.credentials_expire_at > now:
            return
        soonest = math.inf
        for peer in list(room.peers.values()):
            if peer.expires_at is None:
                continue
            if peer.expires_at <= now:
                peer.close(Unauthenticated("token expired"))
                room.leave(peer)
            else:
                soonest = min(soonest, peer.expires_at)
        room.credentials_expire_at = soonest

    def close_peers(self) -> None:
        """Close every connected peer with 1001 (the server is going away)."""
        for room in self.rooms.values():
            for peer in list(room.peers.values()):
                peer.close(GoingAway("server shutting down"))

    def sweep(self) -> None:
        """Visit every room now (see `_visit`), then let the history find the
        automatic versions due. The engine's own sweeper does the same over one
        `sweep_interval`, a slice of the rooms at a time."""
        now, wall = self.clock.monotonic(), self.clock.wall()
        for name in list(self._slots):
            self._visit(name, now, wall)
        self.history.sweep(now)

    def _visit(self, name: DocumentName, now: float, wall: float) -> None:
        # One room's timers: presence (see `Room.tick`), awareness timeouts, expired
        # credentials; then unload it if it is idle past the grace with all its
        # changes stored, or mark it due for compaction.
        slot = self._slots.get(name)
        if slot is None or slot.room is None:
            return  # gone since the pass began, or still loading
        room = slot.room
        room.tick()
        room.sweep()
        self._expire_credentials(room, wall)
        if slot.users == 0 and (
            room.failed is not None
            or (room.stored and now - slot.idle_since >= self.config.unload_grace)
        ):
            del self._slots[name]
            self._holding.discard(room)
            if self.tenure is not None:
                self.tenure.unloaded(name)
            room.close()
            log.debug("room %r unloaded", name)
            if room.failed is None:
                self.history.unloaded(name, room.edited_at is not None, room.stored_seq)
        elif self._due_for_compaction(room, now):
            self._compactor.mark(name)

    def _due_for_compaction(self, room: Room, now: float) -> bool:
        if self.store is None or room.failed is not None or room.name in self._compactor:
            return False
        if now < self._compaction_not_before.get(room.name, 0.0):
            return False
        return (
            room.stored_seq - room.snapshot_seq >= self.config.compact_after_updates
            or room.since_snapshot_bytes >= self.config.compact_after_bytes
        )

    async def compact(self, name: str) -> int | None:
        """Write a snapshot of document `name` as stored now, in one transaction.

        Returns the sequence number the snapshot covers, or None when the document
        has no update after its latest snapshot. Log rows are kept.

        Raises:
            StorageError: the document cannot be read, rebuilt or written.
        """
        if self.store is None:
            raise RuntimeError("an engine without a store has nothing to compact")
        doc_name = DocumentName(name)
        try:
            stored = await self.store.load(doc_name)
        except Exception as exc:
            raise StorageError(f"cannot load document {name!r}: {describe_error(exc)}") from exc
        if not stored.updates:
            return None
        state = await anyio.to_thread.run_sync(_state_of, doc_name, stored)
        try:
            await self.store.snapshot(doc_name, state, stored.last_seq)
        except Exception as exc:
            raise StorageError(
                f"cannot write the snapshot of document {name!r} at seq {stored.last_seq}: "
                f"{describe_error(exc)}"
            ) from exc
        room = self.rooms.get(doc_name)
        if room is not None and stored.last_seq > room.snapshot_seq:
            room.snapshot_seq = stored.last_seq
            compacted = sum(len(update) for _, update in stored.updates)
            room.since_snapshot_bytes = max(0, room.since_snapshot_bytes - compacted)
        log.info(
            "document %r compacted: snapshot at seq %d (%d updates folded in)",
            name,
            stored.last_seq,
            len(stored.updates),
        )
        return stored.last_seq

    def _not_compacted(self, name: DocumentName, error: Exception) -> None:
        log.error("compaction skipped: %s", getattr(error, "reason", error))
        self._compaction_not_before[name] = self.clock.monotonic() + self.config.compaction_retry

    async def _sweep_forever(self) -> None:
        # One task for both rhythms. Every `presence_interval`, the rooms whose rate
        # limit holds back awareness states are ticked (the states go out as soon
        # as the rate allows). Every room is visited once per `sweep_interval`, a
        # slice at each step: with many rooms, one pass over all of them at once
        # holds the event loop long enough to delay every edit that comes in
        # meanwhile (measured: benchmarks/results/notes/2026-12-07-code-comments.md).
        step = min(self.config.presence_interval, self.config.sweep_interval)
        steps = max(1, round(self.config.sweep_interval / step))
        pending: list[DocumentName] = []
        per_step = 1
        for count in itertools.count():
            await self.clock.sleep(step)
            for room in list(self._holding):
                room.tick()
                if not room.presence.holding:
                    self._holding.discard(room)
            now, wall = self.clock.monotonic(), self.clock.wall()
            if count % steps == 0:  # a new pass over the rooms
                pending = list(self._slots)
                per_step = -(-len(pending) // steps)  # (rounded up: done in `steps`)
                self.history.sweep(now)
            for name in pending[:per_step]:
                self._visit(name, now, wall)
            del pending[:per_step]


def _state_of(name: str, stored: Stored) -> Update:
    state: Update = rebuild(name, stored).get_update()
    return state
