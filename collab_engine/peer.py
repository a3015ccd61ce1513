"""A peer: one connection to a room, seen from the room.

The room only ever calls `Peer.send`, which never blocks and never raises: the frame
goes into the peer's bounded outbox. Whoever carries the connection takes the frames
from there, in order, one of two ways: a writer task iterates `batches()` (woken when
the outbox stops being empty), or a synchronous `deliver_to` callback is told the
outbox stopped being empty and takes the frames itself (the server's wire, which
writes them to the socket at the end of the event-loop turn). When the outbox is full
the peer is closed with `PeerTooSlow` (1013): evicting a slow reader loses nothing,
since sync step 1/2 heals it on reconnect, while waiting for it would stall the whole
room.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from functools import lru_cache

import anyio
from pycrdt import merge_updates

from .errors import CollabError, PeerTooSlow
from .identity import Identity
from .permissions import Credentials, Role
from .protocol import SyncUpdate, decode, encode_sync_update
from .types import Frame, PeerId, Update

_ids = itertools.count(1)

MAX_MERGED = 256 * 1024
"""Update frames are merged up to this many bytes in all (larger ones go as they are):
merging pays for many small frames, and the cache of merged runs stays small."""

CACHED_TAKE = 64 * 1024
"""Takes of at most this many bytes in all are coalesced through `coalesced`'s cache
(which then holds at most 256 of them): a sync step 2 of a large document is not."""

_UPDATE_PREFIX = b"\x00\x02"
"""How a sync update frame starts (message type 0, sync type 2)."""


def coalesce(frames: list[Frame]) -> list[Frame]:
    """`frames` with every run of consecutive sync update frames replaced by one
    update frame carrying their merged update; other frames keep their place.

    The same run queued for many peers (a broadcast encodes one frame for all of
    them) is merged once: the result is cached by the frames themselves.
    """
    if len(frames) < 2:
        return frames
    out: list[Frame] = []
    run: list[Frame] = []
    size = 0
    for frame in frames:
        mergeable = frame.startswith(_UPDATE_PREFIX) and len(frame) <= MAX_MERGED
        if mergeable and size + len(frame) <= MAX_MERGED:
            run.append(frame)
            size += len(frame)
            continue
        if run:  # the run ends here: this frame is no update, or would overflow it
            out.append(_merged(tuple(run)))
            run, size = [], 0
        if mergeable:
            run, size = [frame], len(frame)
        else:
            out.append(frame)
    if run:
        out.append(_merged(tuple(run)))
    return out


@lru_cache(maxsize=256)
def coalesced(frames: tuple[Frame, ...]) -> tuple[Frame, ...]:
    """`coalesce` for a tuple of frames, cached by the frames themselves: a broadcast
    queues the same frames for every receiver of a room, and a busy turn's frames
    (an edit and the cursor move its author sent after it) are then coalesced once
    for the room rather than once per receiver."""
    return tuple(coalesce(list(frames)))


@lru_cache(maxsize=64)
def _merged(run: tuple[Frame, ...]) -> Frame:
    if len(run) == 1:
        return run[0]
    updates = [_update_of(frame) for frame in run]
    return encode_sync_update(merge_updates(*updates))


def _update_of(frame: Frame) -> Update:
    message = decode(frame)
    assert isinstance(message, SyncUpdate)
    return message.update


class Peer:
    """One connection's outbox and its closing state.

    Args:
        outbox_size: how many frames may wait to be taken before the peer is
            evicted as too slow.
        label: what logs call this peer (an address, a user).
        identity: who is connected (an anonymous identity of its own by default).
        role: what it may do (viewers only read; their presence may be hidden).
        expires_at: when its credentials expire, as Unix time.
    """

    def __init__(
        self,
        *,
        outbox_size: int = 1024,
        label: str = "",
        identity: Identity | None = None,
        role: Role = Role.OWNER,
        expires_at: float | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.id = PeerId(next(_ids))
        self.label = label or f"peer-{self.id}"
        self.identity = identity or Identity.anonymous_for(self.id)
        """Who is on the other end, as far as the server can vouch."""
        self.role = role
        """What the peer may do; the engine lowers it, or closes the peer, live."""
        self.expires_at = expires_at
        """Unix time at which its credentials expire (None: never)."""
        self.credentials = credentials
        """What its token said, to decide again when grants change (None: fixed role)."""
        self.author = self.identity.user_id
        """Who this peer's updates are recorded as from, in the update log."""
        self.outbox_size = outbox_size
        # Overflow policy: full -> the peer is closed with 1013 (see module docstring).
        self._outbox: deque[Frame] = deque()
        self._ready: Callable[[], None] | None = None
        """Called when the outbox stops being empty: the `deliver_to` callback, or
        (None) `_wake`, which wakes `batches`. Not `self._wake` itself: a bound method
        kept on its own object is a reference cycle, and a closed peer would wait for
        the collector's next full pass instead of being freed when its connection is."""
        self._waiter: anyio.Event | None = None
        self.error: CollabError | None = None
        self.closed = False
        self._closed_event = anyio.Event()
        self.on_close: Callable[[], None] | None = None
        """Called once, when the peer is closed (by whichever side); must not raise."""
        # Persisted acknowledgements (see protocol.Persisted), kept by the room.
        self.wants_acks = False
        """Whether the client asked for persisted acknowledgements."""
        self.updates_received = 0
        """Update messages (sync step 2 and update) taken from this peer."""
        self.acked = 0
        """How many of those are known to be durable."""
        # Lists, not deques: an empty deque holds a block of 64 slots (760 bytes), and
        # most peers never need either; both are trimmed from the front in one slice.
        self.denials: list[float] = []
        """When its latest denied writes were (the room bounds their rate)."""
        self.unacked: list[tuple[int, int]] = []
        """(journal ticket, updates_received) still waiting to be durable, oldest first,
        one entry per ticket: never longer than the journal's queue."""

    @property
    def read_only(self) -> bool:
        """Whether the peer may only read."""
        return self.role < Role.EDITOR

    def send(self, frame: Frame) -> None:
        """Queue `frame` for this peer; evict the peer if its outbox is full."""
        if self.closed:
            return
        outbox = self._outbox
        if len(outbox) >= self.outbox_size:
            self.close(PeerTooSlow(f"more than {self.outbox_size} frames waiting to be sent"))
            return
        outbox.append(frame)
        if len(outbox) == 1:
            ready = self._ready
            if ready is None:
                self._wake()
            else:
                ready()

    def deliver_to(self, ready: Callable[[], None]) -> None:
        """Hand the outbox to a synchronous carrier: from now on `ready()` is called,
        inside `send`, whenever the outbox stops being empty, and the carrier takes the
        frames with `take` (soon: until it does, further frames only queue). `ready`
        must not raise and must not call back into the room. `batches` is not to be
        used then. Called at once if frames are already waiting."""
        self._ready = ready
        if self._outbox and not self.closed:
            ready()

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def close(self, error: CollabError | None = None) -> None:
        """Stop this peer: no frame is queued after this, and those still queued are
        dropped (the connection is ending; its replica resyncs by state vector when
        it reconnects); a writer in `batches` stops at once.

        `error` is why the connection ends (its close code and reason), or None when
        the peer simply left. The first call wins.
        """
        if self.closed:
            return
        self.closed = True
        self.error = error
        self._outbox.clear()
        self._wake()
        # The carrier holds the peer and the peer its callback: drop the callback, so
        # that the two (and the connection behind them) are freed by reference
        # counting when the connection ends, not at the next full collection.
        self._ready = None
        self._closed_event.set()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()

    async def wait_closed(self) -> None:
        """Return once the peer is closed, by whichever side."""
        await self._closed_event.wait()

    async def batches(self) -> AsyncIterator[Sequence[Frame]]:
        """Yield what is queued, as soon as there is something, in order, with runs of
        update frames merged (see `coalesce`): a writer that fell behind catches up
        with fewer, larger sends. Ends when the peer is closed."""
        while not self.closed:
            if not self._outbox:
                self._waiter = anyio.Event()
                await self._waiter.wait()
                continue
            yield self.take()

    def take(self) -> Sequence[Frame]:
        """Take every frame queued now, in order, with runs of updates merged (see
        `coalesced`)."""
        outbox = self._outbox
        if len(outbox) == 1:
            # Most takes, in a busy room: one frame since the last turn.
            return (outbox.popleft(),)
        frames = tuple(outbox)
        outbox.clear()
        if sum(map(len, frames)) <= CACHED_TAKE:
            return coalesced(frames)
        return coalesce(list(frames))  # large: not kept in the cache

    def drain(self) -> list[Frame]:
        """Take every frame queued now, as they were queued (for in-process readers)."""
        frames = list(self._outbox)
        self._outbox.clear()
        return frames

    def queued(self) -> int:
        """How many frames wait in the outbox."""
        return len(self._outbox)
