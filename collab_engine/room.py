"""A room: one document, its awareness, and the peers connected to it.

The room is the only place a document changes, and every change, whoever makes
it, leaves the same way: the document observer encodes the transaction's update
once and queues that one frame for every peer (`Peer.send` never blocks). A
client's update, a server-side edit through the embedding API, or an implicit
pycrdt transaction (`text += "x"`) are broadcast alike. The observer is attached only
while someone takes the updates (a journal, or connected peers): a room of an engine
without a store, with nobody connected, edits at raw pycrdt speed.

With a journal, the observer also submits the update for writing, and the room
tracks which updates are stored: when the journal reports them (`persisted`), each
peer that sent some learns how many of its update messages are durable. A peer's
message that changed nothing (content the room already had) is acknowledged once
everything the room held at that moment is stored.

Everything here, but `flush`, is synchronous and runs on the event loop's thread:
nothing can interleave inside `apply`, so there is no lock around the document.
"""

from __future__ import annotations

import json
import logging
import math
from bisect import bisect_right
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from typing import Any, Protocol

from pycrdt import Doc, Subscription, TransactionEvent

from . import json_text
from .awareness import Awareness
from .clock import SYSTEM, Clock
from .errors import CollabError, Forbidden, ProtocolError, StorageError
from .identity import Identity
from .journal import Journal
from .locks import Lease, LockNotHeld, Locks, Section, Shadow, parse_section
from .peer import Peer
from .permissions import Role
from .presence import Presence, PresenceInfo, PresencePolicy
from .protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    LockReply,
    LockRequest,
    Message,
    PermissionDenied,
    Persisted,
    QueryAwareness,
    RequestPersisted,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    VersionReply,
    VersionRequest,
    encode_awareness,
    encode_lock_reply,
    encode_permission_denied,
    encode_persisted,
    encode_sync_step1,
    encode_sync_step2,
    encode_sync_update,
    encode_version_reply,
)
from .rollback import Rollback, rollback
from .types import DocumentName, Frame, PeerId, StateVector, Update

log = logging.getLogger("collab_engine.room")

_EMPTY_UPDATE = b"\x00\x00"


@dataclass(frozen=True, slots=True)
class Later:
    """A message's handling that must await something first (room in the journal, a
    version being stored): the connection awaits `run()` before it reads on."""

    run: Callable[[], Awaitable[None]]


class Versions(Protocol):
    """What answers version requests (the engine's history, with a store)."""

    async def answer(self, name: str, body: str, *, author: str, role: Role) -> dict[str, Any]:
        """The reply to version request `body` on document `name`."""
        ...


MAX_DENIALS = 30
"""Denied writes a peer may make within `DENIAL_WINDOW` before it is closed (4403)."""
DENIAL_WINDOW = 10.0


class Room:
    """One shared document and the peers editing it.

    Args:
        name: the document's name.
        doc: the document, loaded by the caller (a new empty one by default).
        max_awareness_state_size: the largest awareness state accepted, in bytes.
        awareness_timeout: seconds after which an awareness state that was not
            renewed is removed for everyone.
        clock: where time comes from (presence, awareness and lock timings,
            denials; wall time for lease expiries shown to clients).
        presence: the presence policy (identity, rate, typing, idle).
        locks: the room's lock table (its ttl and grace).
        journal: where the document's updates are written; None keeps them in
            memory only (and acknowledges nothing).
        stored_seq: the sequence number of the newest stored update `doc` holds.
        snapshot_seq: the sequence number of the snapshot it was loaded from.
        since_snapshot_bytes: the bytes of stored updates after that snapshot.
        on_holding: called (with the room) when the presence rate limit holds back
            a state: the room wants its `tick` soon, not only at the next sweep.
        versions: what answers the peers' version requests (None: refused, 4400).
    """

    def __init__(
        self,
        name: DocumentName,
        *,
        doc: Doc[Any] | None = None,
        max_awareness_state_size: int = 64 * 1024,
        awareness_timeout: float = 30.0,
        clock: Clock = SYSTEM,
        presence: PresencePolicy | None = None,
        locks: Locks | None = None,
        journal: Journal | None = None,
        stored_seq: int = 0,
        snapshot_seq: int = 0,
        since_snapshot_bytes: int = 0,
        on_holding: Callable[[Room], None] | None = None,
        versions: Versions | None = None,
    ) -> None:
        self.name = name
        self._versions = versions
        self._on_holding = on_holding
        self.credentials_expire_at = math.inf
        """No peer's credentials expire before this (Unix time; lowered as peers
        join, raised by whoever closes the expired ones)."""
        self.doc: Doc[Any] = doc if doc is not None else Doc()
        self.awareness = Awareness(
            max_state_size=max_awareness_state_size, outdated_timeout=awareness_timeout
        )
        self.peers: dict[PeerId, Peer] = {}
        self._clock = clock.monotonic
        self._wall = clock.wall
        self.locks = locks or Locks()
        self._shadow: Shadow | None = None
        """While there are leases: the copy that tells what an update touches."""
        self.presence = Presence(
            self.awareness,
            presence or PresencePolicy(),
            server_state={"name": "collab-engine", "document": name},
            now=clock.monotonic(),
        )
        self.journal = journal
        self.last_ticket = 0
        """The journal ticket of the newest update submitted for this room."""
        self.written_ticket = 0
        """Every update of this room up to this ticket is stored."""
        self._awaiting: dict[PeerId, Peer] = {}
        """The peers with updates not yet acknowledged (`Peer.unacked`): the journal's
        report visits these, not every peer (in a room of one writer and a hundred
        readers, one instead of a hundred and one per commit)."""
        self.stored_seq = stored_seq
        self.epoch: int | None = None
        """The ownership epoch this node holds the document at (a node of a cluster):
        the store refuses the room's updates once it has moved on; None: not fenced."""
        self.save_locks: Callable[[], Awaitable[None]] | None = None
        """Keeps the locks for whoever takes the document over (a node of a cluster);
        awaited before a lock request is answered. None: nothing to keep them for."""
        self.snapshot_seq = snapshot_seq
        self.since_snapshot_bytes = since_snapshot_bytes
        self.failed: StorageError | None = None
        """Set when the room's updates could not be stored; the room is then done."""
        self.author: str | None = None
        """Who the update being applied is from, for the update log (set by `apply`)."""
        self._sender: tuple[Peer, Update] | None = None
        """The peer whose message `apply` is applying, and that message's update."""
        self.edited_at: float | None = None
        """When (the room's clock) the document last changed; None: not since loaded."""
        self._subscription: Subscription | None = None
        self._evicted: deque[Peer] = deque()
        self._evicting = False
        if journal is not None:
            self._watch()

    # -- the document ------------------------------------------------------------------

    def _watch(self) -> None:
        # Observing a pycrdt document makes every transaction encode its update
        # (about 3x the cost of a small edit), wanted only when someone takes the
        # updates: the journal, or connected peers. An engine without a store and
        # nobody connected edits at raw pycrdt speed.
        if self._subscription is None:
            self._subscription = self.doc.observe(self._on_transaction)

    def _unwatch(self) -> None:
        if self._subscription is not None:
            self.doc.unobserve(self._subscription)
            self._subscription = None
            self._shadow = None  # it follows the updates: stale from now on

    def _on_transaction(self, event: TransactionEvent) -> None:
        # Runs inside pycrdt's commit: it must not raise (pycrdt would re-raise it
        # in whoever applied the update) and must not await. It encodes once and
        # queues; queueing cannot fail (a full outbox closes that peer instead).
        update = event.update
        if update == _EMPTY_UPDATE:
            return
        self.edited_at = self._clock()
        if self.journal is not None and self.failed is None:
            self.last_ticket = self.journal.submit(self, update, self.author)
        if self._shadow is not None:
            self._shadow.follow(update)
        # Not back to a peer whose message was exactly this update: it holds all of
        # it already (y-websocket's server echoes it, a send system call per edit:
        # a tenth of the writes in rooms of ten). Anything else (part of it already
        # known, updates pending in the document integrated with it, a denied write's
        # compensation) goes to everyone, the sender included.
        sender = self._sender
        exclude = sender[0] if sender is not None and sender[1] == update else None
        self.broadcast(encode_sync_update(update), exclude=exclude)

    def apply(
        self,
        update: Update,
        origin: Any = None,
        author: str | None = None,
        sender: Peer | None = None,
    ) -> None:
        """Apply a Yjs update to the document, store and broadcast what it changed
        (to everyone but `sender`, the peer `update` came from, when what changed is
        exactly `update`).

        Raises:
            ProtocolError: `update` is not a valid Yjs update; the document is unchanged
                (Yrs decodes the whole update before it integrates anything).
            StorageError: the room's storage has failed; it takes no more changes.
        """
        if self.failed is not None:
            raise self.failed
        self.author = author
        self._sender = None if sender is None else (sender, update)
        try:
            with self.doc.transaction(origin=origin):
                self.doc.apply_update(update)
        except ValueError as exc:
            raise ProtocolError(f"invalid Yjs update: {exc}") from exc
        finally:
            self.author = None
            self._sender = None

    def deny(self, peer: Peer, update: Update, reason: str) -> None:
        """Refuse `peer`'s update: tell it why, and roll the change back for everyone.

        The update and its compensation are applied merged, as one change (see
        `rollback`): no replica shows the denied content, the author's included. An
        update that changes nothing (a viewer's sync step 2, usually) is no write:
        it is taken silently.

        Working out the rollback costs a copy of the document, so a peer with more
        than `MAX_DENIALS` updates to refuse within `DENIAL_WINDOW` seconds is
        closed with 4403 before any more copies: a viewer cannot keep the server
        busy at will.

        Raises:
            ProtocolError: `update` is not a valid Yjs update.
        """
        now = self._clock()
        recent = peer.denials
        recent.append(now)
        del recent[: bisect_right(recent, now - DENIAL_WINDOW)]  # (times only grow)
        if len(recent) > MAX_DENIALS:
            peer.close(Forbidden(f"more than {MAX_DENIALS} denied writes in {DENIAL_WINDOW:g} s"))
            self.leave(peer)
            return
        refusal: Rollback = rollback(self.doc, update)
        if refusal.changed:
            peer.send(encode_permission_denied(reason))
        if refusal.merged is not None:
            # Stored with no author: nothing of it was kept, so the denied peer is no
            # version's editor and no diff credits it with the compensation.
            self.apply(refusal.merged, origin=peer.id, author=None)
        self._received_update(peer)

    # -- locks -------------------------------------------------------------------------

    def clock(self) -> float:
        """The room's time (monotonic seconds): what lease expiries are measured in."""
        return self._clock()

    def wall(self) -> float:
        """The room's clock's Unix time (for lease expiries shown to clients)."""
        return self._wall()

    def lock(
        self,
        op: str,
        section: Section,
        *,
        identity: Identity,
        role: Role,
        peer: PeerId | None = None,
        fence: int | None = None,
        ttl: float | None = None,
    ) -> Lease | None:
        """Acquire, renew, release or force-release (`op`) a lease on `section`.

        Returns the lease (for a release, the one that ended; None when a forced
        release found none). A summary of the leases (`Locks.summary`) is mirrored
        into the server's awareness entry, for every Yjs client to see.

        Raises:
            Forbidden: a viewer locking, or a non-owner forcing.
            LockConflict: an overlapping lease is someone else's.
            LockNotHeld: renewing or releasing a lease that is not (any more).
            TooManyLocks: the user, or the document, holds as many leases as allowed.
            ValueError: a bad request (unknown op, no fence, bad ttl).
        """
        now = self._clock()
        if ttl is not None and not 0 < ttl <= 3600:
            raise ValueError("ttl must be between 0 and 3600 seconds")
        if op == "acquire":
            if role < Role.EDITOR:
                raise Forbidden(f"{identity.user_id} may not lock in {self.name!r}")
            lease: Lease | None = self.locks.acquire(
                section, user_id=identity.user_id, name=identity.name, peer=peer, now=now, ttl=ttl
            )
        elif op in ("renew", "release"):
            if not isinstance(fence, int):
                raise ValueError(f"{op} needs the lease's fence")
            held = next((x for x in self.locks.leases if x.section == section), None)
            if held is not None and held.user_id != identity.user_id:
                raise LockNotHeld(f"{list(section)} is held by {held.name}, not by you")
            if op == "renew":
                lease = self.locks.renew(section, fence, now, ttl)
            else:
                lease = self.locks.release(section, fence)
        elif op == "forceRelease":
            if role < Role.OWNER:
                raise Forbidden("only an owner may force a lock open")
            lease = self.locks.force_release(section)
        else:
            raise ValueError(f"unknown lock op {op!r}: acquire, renew, release, forceRelease")
        self._mirror_locks(now)
        return lease

    def _lock_request(self, peer: Peer, body: str) -> dict[str, Any]:
        request = json_text.parse(body)  # ProtocolError (4400), as the codec would raise
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            section = parse_section(request.get("section", []), self.locks.limits)
            fence, ttl = request.get("fence"), request.get("ttl")
            if ttl is not None and not isinstance(ttl, int | float):
                raise ValueError("ttl must be a number of seconds")
            lease = self.lock(
                str(request.get("op")),
                section,
                identity=peer.identity,
                role=peer.role,
                peer=peer.id,
                fence=fence,
                ttl=ttl,
            )
        except (CollabError, ValueError) as error:
            return {**reply, "ok": False, "error": str(error)}
        return {
            **reply,
            "ok": True,
            "lock": None if lease is None else lease.to_json(self._clock(), self._wall()),
        }

    def _mirror_locks(self, now: float) -> None:
        # The summary is bounded and changes only when a lease is taken or ends; the
        # server's entry changes at most once per presence `server_interval`, so a
        # flood of lock requests costs each reader a bounded number of bytes a second.
        changed = self.presence.server_says(self.locks.summary(), now)
        if changed:
            self.broadcast(encode_awareness(changed))
        self._tick_soon_if_holding()

    def _tick_soon_if_holding(self) -> None:
        # Presence holds something back (a rate-limited state, or a change of the
        # server's entry): the room wants its `tick` at the presence rhythm, not only
        # at the next sweep.
        if self._on_holding is not None and self.presence.holding:
            self._on_holding(self)

    def _blocking_lease(self, peer: Peer, update: Update) -> Lease | None:
        if not self.locks.leases:
            self._shadow = None  # no lease: no need to know what updates touch
            return None
        if self._shadow is None:
            self._shadow = Shadow(self.doc)
        try:
            touched = self._shadow.check(update)
        except ValueError as exc:
            raise ProtocolError(f"invalid Yjs update: {exc}") from exc
        return self.locks.blocking(touched, peer.identity.user_id)

    def reevaluate(self, role_of: Callable[[Peer], Role | None], error: CollabError) -> None:
        """Apply changed rights to the connected peers: a new role at once, or
        `error` (4403) for a peer `role_of` gives none."""
        for peer in list(self.peers.values()):
            role = role_of(peer)
            if role is None:
                peer.close(error)
                self.leave(peer)
            else:
                peer.role = role
                changed = self.presence.set_read_only(peer.id, peer.read_only)
                if changed:
                    self.broadcast(encode_awareness(changed), exclude=peer)

    @property
    def stored(self) -> bool:
        """Whether every change the room has taken is stored (or it has no journal)."""
        return self.written_ticket >= self.last_ticket

    async def flush(self) -> None:
        """Return once every change made so far is stored.

        Raises:
            StorageError: it could not be stored.
        """
        if self.journal is not None:
            await self.journal.wait_written(self.last_ticket)
        if self.failed is not None:
            raise self.failed

    # -- the journal's reports ---------------------------------------------------------

    def persisted(self, ticket: int, seq: int, count: int, size: int) -> None:
        """The journal stored this room's updates up to `ticket`, the last as `seq`."""
        self.written_ticket = ticket
        self.stored_seq = seq
        self.since_snapshot_bytes += size
        for peer in list(self._awaiting.values()):
            self._ack(peer)

    def storage_failed(self, error: StorageError) -> None:
        """The room's updates cannot be stored: close every peer with `error` (1011).

        What the room holds in memory is no longer trusted to match storage; the
        engine discards the room, and the next opening loads what is stored.
        """
        if self.failed is not None:
            return
        self.failed = error
        for peer in list(self.peers.values()):
            peer.close(error)
            self.leave(peer)

    def _ack(self, peer: Peer) -> None:
        acked = peer.acked
        unacked = peer.unacked
        # Tickets only grow: the stored entries are a prefix.
        stored = bisect_right(unacked, self.written_ticket, key=itemgetter(0))
        if stored:
            acked = unacked[stored - 1][1]
            del unacked[:stored]
        if not unacked:
            self._awaiting.pop(peer.id, None)
        if acked != peer.acked:
            peer.acked = acked
            if peer.wants_acks:
                peer.send(encode_persisted(acked))

    def _received_update(self, peer: Peer) -> None:
        # Everything the document held after this message must be stored before
        # the message is acknowledged, even when it changed nothing itself.
        peer.updates_received += 1
        if self.journal is None:
            return
        ticket = self.last_ticket
        if peer.unacked and peer.unacked[-1][0] == ticket:
            peer.unacked[-1] = (ticket, peer.updates_received)
        else:
            peer.unacked.append((ticket, peer.updates_received))
            self._awaiting[peer.id] = peer
        self._ack(peer)
        if peer.wants_acks and peer.unacked:
            self.journal.hasten(ticket)

    def update_since(self, state_vector: StateVector) -> Update:
        """The update a replica at `state_vector` is missing.

        Raises:
            ProtocolError: `state_vector` is not a valid Yjs state vector.
        """
        try:
            return self.doc.get_update(state_vector)
        except ValueError as exc:
            raise ProtocolError(f"invalid state vector: {exc}") from exc

    # -- peers -------------------------------------------------------------------------

    def broadcast(self, frame: Frame, *, exclude: Peer | None = None) -> None:
        """Queue `frame` for every peer but `exclude`; peers evicted as too slow leave.

        A leaving peer's awareness removal is itself broadcast, and may evict more:
        evictions are queued and handled here in a loop, never by recursion, however
        many peers fall behind at once."""
        evicted = self._evicted
        for peer in self.peers.values():
            if peer is not exclude:
                peer.send(frame)
                if peer.closed:
                    evicted.append(peer)
        if self._evicting:
            return  # an outer broadcast is handling evictions
        self._evicting = True
        try:
            while evicted:
                self.leave(evicted.popleft())
        finally:
            self._evicting = False

    def join(self, peer: Peer) -> None:
        """Add `peer`, and queue for it the opening of the sync: our state vector
        (sync step 1), then every awareness state it may see (the server's included)."""
        self.peers[peer.id] = peer
        if peer.expires_at is not None:
            self.credentials_expire_at = min(self.credentials_expire_at, peer.expires_at)
        self._watch()
        self.presence.connect(peer.id, peer.identity, peer.read_only, self._clock())
        peer.send(encode_sync_step1(self.doc.get_state()))
        entries = self.presence.visible_entries()
        if entries:
            peer.send(encode_awareness(entries))

    def leave(self, peer: Peer) -> None:
        """Remove `peer`, and remove its awareness states for everyone else."""
        if self.peers.pop(peer.id, None) is None:
            return
        self._awaiting.pop(peer.id, None)
        if not self.peers and self.journal is None:
            self._unwatch()
        removed = self.presence.disconnect(peer.id)
        if removed:
            self.broadcast(encode_awareness(removed))
        if self.locks.disconnected(peer.id, self._clock()):
            self._mirror_locks(self._clock())

    def receive(self, peer: Peer, message: Message) -> Later | None:
        """Act on one message from `peer`: the one place that decides what a message
        does, whatever carried it. Returns what must be awaited before `peer`'s next
        message is taken, if anything: an update while the journal is full (it is
        applied once there is room), a version request (answered once stored).

        Raises:
            ProtocolError: the message is invalid for the document or the room.
            MessageTooBig: an awareness state is over the limit.
        """
        match message:
            case SyncUpdate() | SyncStep2():
                if self.journal is not None and self.journal.full():
                    return Later(partial(self._update_with_room, peer, message))
                self._update(peer, message)
            case SyncStep1(state_vector):
                peer.send(encode_sync_step2(self.update_since(state_vector)))
            case AwarenessUpdate(entries):
                outcome = self.presence.receive(peer.id, entries, self._clock())
                self._tick_soon_if_holding()
                if outcome.refused:
                    ids = ", ".join(str(cid) for cid in outcome.refused)
                    peer.send(
                        encode_permission_denied(
                            f"awareness client id {ids} belongs to another connection"
                        )
                    )
                if outcome.to_others:
                    # The sender knows its own state: forward to the others only.
                    self.broadcast(encode_awareness(outcome.to_others), exclude=peer)
                if outcome.to_all:
                    self.broadcast(encode_awareness(outcome.to_all))
            case QueryAwareness():
                peer.send(encode_awareness(self.presence.visible_entries()))
            case LockRequest(body):
                if self.save_locks is not None:
                    return Later(partial(self._lock_kept, peer, body))
                peer.send(encode_lock_reply(json.dumps(self._lock_request(peer, body))))
            case RequestPersisted():
                peer.wants_acks = True
                peer.send(encode_persisted(peer.acked))
            case PermissionDenied() | Persisted() | LockReply() | VersionReply():
                raise ProtocolError("this message is sent by the server, not to it")
            case VersionRequest(body):
                if self._versions is None:
                    raise ProtocolError("versions need a server with a store")
                return Later(partial(self._version, peer, body))
        return None

    def _update(self, peer: Peer, message: SyncUpdate | SyncStep2) -> None:
        update = message.update
        blocking = self._blocking_lease(peer, update)
        if blocking is not None:
            self.deny(peer, update, f"{list(blocking.section)} is locked by {blocking.name}")
            return
        if peer.read_only:
            self.deny(peer, update, f"{peer.identity.user_id} may not write to {self.name!r}")
            return
        self.apply(update, origin=peer.id, author=peer.author, sender=peer)
        self._received_update(peer)
        if isinstance(message, SyncUpdate):
            # An edit is activity (idle ends); the handshake's step 2 is not.
            changed = self.presence.activity(peer.id, self._clock())
            if changed:
                self.broadcast(encode_awareness(changed))

    async def _update_with_room(self, peer: Peer, message: SyncUpdate | SyncStep2) -> None:
        # The journal was full: the update waits (and the peer's later frames with
        # it) until there is room, rather than queue without bound.
        assert self.journal is not None
        await self.journal.room_for_more()
        if not peer.closed:  # (closed while it waited: its rights may be why)
            self._update(peer, message)

    async def _lock_kept(self, peer: Peer, body: str) -> None:
        # A node of a cluster: the locks are kept for a successor before the reply
        # says a lock is granted (or released). A failure closes the peer (its code).
        reply = self._lock_request(peer, body)
        if reply["ok"] and self.save_locks is not None:
            await self.save_locks()
        peer.send(encode_lock_reply(json.dumps(reply)))

    def restore_locks(self, saved: str) -> None:
        """Take over the locks a previous owner kept (see `Locks.restore`).

        Raises:
            ValueError: `saved` cannot be read.
        """
        self.locks.restore(saved, self._clock(), self._wall())
        self._mirror_locks(self._clock())

    async def _version(self, peer: Peer, body: str) -> None:
        # The version holds every update the peer sent before the request: they were
        # all applied before this runs (the connection reads nothing meanwhile).
        assert self._versions is not None
        reply = await self._versions.answer(self.name, body, author=peer.author, role=peer.role)
        peer.send(encode_version_reply(json.dumps(reply)))

    def sweep(self) -> list[AwarenessEntry]:
        """Remove awareness states that were not renewed in time, for everyone."""
        removed = self.presence.expire(self._clock())
        if removed:
            self.broadcast(encode_awareness(removed))
        return removed

    def tick(self) -> None:
        """Let presence time pass: coalesced states go out, typing and idle timers
        fire, the server's own entry is renewed."""
        now = self._clock()
        changed = self.presence.tick(now)
        if changed:
            self.broadcast(encode_awareness(changed))
        if self.locks.expire(now):
            self._mirror_locks(now)

    def who(self) -> list[PresenceInfo]:
        """Who is connected: identity, status, activity, cursors resolved now."""
        return self.presence.describe(self.doc, self._clock())

    def close(self) -> None:
        """Detach from the document: no more broadcasts. The room is done."""
        self._unwatch()
