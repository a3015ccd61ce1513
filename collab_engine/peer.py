"""A peer: one connection to a room, seen from the room.

The room only ever calls `Peer.send`, which never blocks and never raises: the frame
goes into the peer's bounded outbox, drained in order by that connection's one
writer task. When the outbox is full the peer is closed with `PeerTooSlow` (1013):
evicting a slow reader loses nothing, since sync step 1/2 heals it on reconnect,
while waiting for it would stall the whole room.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator
from functools import lru_cache

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
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
        if frame.startswith(_UPDATE_PREFIX) and size + len(frame) <= MAX_MERGED:
            run.append(frame)
            size += len(frame)
            continue
        if run:
            out.append(_merged(tuple(run)))
            run, size = [], 0
        if frame.startswith(_UPDATE_PREFIX) and len(frame) <= MAX_MERGED:
            run, size = [frame], len(frame)
            continue
        if run:
            out.append(_merged(tuple(run)))
            run = []
        out.append(frame)
    if run:
        out.append(_merged(tuple(run)))
    return out


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
        outbox_size: how many frames may wait for the writer before the peer is
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
        self._send_stream: MemoryObjectSendStream[Frame]
        self._receive_stream: MemoryObjectReceiveStream[Frame]
        # Overflow policy: full → the peer is closed with 1013 (see module docstring).
        self._send_stream, self._receive_stream = anyio.create_memory_object_stream[Frame](
            max_buffer_size=outbox_size
        )
        self.error: CollabError | None = None
        self.closed = False
        self._closed_event = anyio.Event()
        # Persisted acknowledgements (see protocol.Persisted), kept by the room.
        self.wants_acks = False
        """Whether the client asked for persisted acknowledgements."""
        self.updates_received = 0
        """Update messages (sync step 2 and update) taken from this peer."""
        self.acked = 0
        """How many of those are known to be durable."""
        self.denials: deque[float] = deque()
        """When its latest denied writes were (the room bounds their rate)."""
        self.unacked: deque[tuple[int, int]] = deque()
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
        try:
            self._send_stream.send_nowait(frame)
        except anyio.WouldBlock:
            self.close(PeerTooSlow(f"more than {self.outbox_size} frames waiting to be sent"))

    def close(self, error: CollabError | None = None) -> None:
        """Stop this peer: no frame is queued after this; the writer stops at once.

        `error` is why the connection ends (its close code and reason), or None when
        the peer simply left. The first call wins.
        """
        if self.closed:
            return
        self.closed = True
        self.error = error
        self._send_stream.close()
        self._receive_stream.close()
        self._closed_event.set()

    async def wait_closed(self) -> None:
        """Return once the peer is closed, by whichever side."""
        await self._closed_event.wait()

    async def frames(self) -> AsyncIterator[Frame]:
        """Yield the queued frames in order until the peer is closed.

        Frames still queued when the peer is closed are dropped: the connection is
        ending, and its replica resyncs by state vector when it reconnects.
        """
        try:
            async for frame in self._receive_stream:
                yield frame
        except anyio.ClosedResourceError:
            return

    async def batches(self) -> AsyncIterator[list[Frame]]:
        """Yield what is queued, as soon as there is something, in order, with runs of
        update frames merged (see `coalesce`): a writer that fell behind catches up
        with fewer, larger sends. Ends when the peer is closed, as `frames`."""
        try:
            async for frame in self._receive_stream:
                batch = [frame]
                while True:
                    try:
                        batch.append(self._receive_stream.receive_nowait())
                    except anyio.WouldBlock:
                        break
                yield coalesce(batch)
        except (anyio.ClosedResourceError, anyio.EndOfStream):
            return

    def drain(self) -> list[Frame]:
        """Take every frame queued now, without waiting (for in-process readers)."""
        frames: list[Frame] = []
        while True:
            try:
                frames.append(self._receive_stream.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return frames

    def queued(self) -> int:
        """How many frames wait in the outbox."""
        return self._receive_stream.statistics().current_buffer_used
