"""`RedisBus`: the bus between the nodes of a cluster (`collab_engine.bus`) over
Redis streams.

Keys, under the cluster's prefix (two clusters on one Redis use two prefixes):

    {prefix}:inbox:{node}    one stream per node: what the others send it; only that
                             node reads it
    {prefix}:notices         one stream every node reads: notices for all

An entry holds one batch: the sender (`f`), its generation and number for this link
(`g`, `s`: `bus.Sequencing`) and the bodies, each a varUint length and the bytes
(`b`); or a reset (`r`: the sender's new generation): "what was in flight between
us is void; my next batch to you is number 1 of generation r".

Order: one writer task sends everything pending, for every destination, in one
pipeline, as soon as there is something (no linger: this is on the path of every
edit between nodes); one reader task reads its inbox and the notices in one
blocking XREAD, and hands each batch to the listener in order.

Loss, always reported, never silent (`Listener.reset`, on both sides of the link):
- a destination's queue over `max_pending` bodies or `max_pending_bytes` bytes:
  what waits for it is dropped (a node that does not read, or Redis that does not
  take, must not grow this node's memory without bound);
- a pipeline that fails (Redis down or restarted): what it carried may be lost;
- a batch that does not follow the last one from its sender: a gap (an inbox
  trimmed under a reader more than `stream_maxlen` batches behind, or lost in a
  restart of Redis), or a sender that restarted;
- the reader's connection lost: every sender is reset, and the notices are lost.
The side that finds a loss tells the other with a reset entry. Streams are trimmed
(approximately) to `stream_maxlen` entries at each write.

`healthy` says whether a round trip to Redis succeeded within `health_timeout`
seconds: a node cut off from Redis stops renewing its lease (see `Engine`), so that
its documents move to nodes that can still be reached.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from redis.asyncio import Redis
from redis.exceptions import RedisError

from collab_engine.bus import Listener, Sequencing, Stamp
from collab_engine.clock import SYSTEM, Clock
from collab_engine.errors import ProtocolError
from collab_engine.protocol import Decoder, encode_var_uint

log = logging.getLogger("storage.redis")

NOTICES = "*"
"""The destination name the notices are sequenced under."""
BACKOFF = (0.05, 2.0)
"""Seconds between two attempts to reach Redis: from the first, doubling up to the second."""


class RedisBus:
    """This node's end of the bus. Use as `async with RedisBus(...) as bus:`.

    Args:
        url: the Redis URL (`redis://host:6379/0`).
        prefix: the cluster's key prefix.
        node: this node's id.
        listener: who is handed what arrives (see `Listener`).
        clock: where backoff and health time comes from.
        max_pending: bodies that may wait for one destination before they are
            dropped and the link reset.
        max_pending_bytes: ... or bytes.
        stream_maxlen: entries a stream keeps (approximately); a reader further
            behind loses the oldest, and resets.
        health_timeout: seconds without a successful round trip before the bus is
            no longer `healthy`.
        block: seconds one XREAD waits for entries before it is issued again.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        node: str,
        listener: Listener,
        clock: Clock = SYSTEM,
        max_pending: int = 100_000,
        max_pending_bytes: int = 64 * 1024 * 1024,
        stream_maxlen: int = 100_000,
        health_timeout: float = 3.0,
        block: float = 1.0,
    ) -> None:
        if min(max_pending, max_pending_bytes, stream_maxlen) < 1 or not health_timeout > 0:
            raise ValueError("the bus's limits must be positive")
        self.url = url
        self.prefix = prefix
        self.node = node
        self.listener = listener
        self.clock = clock
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.stream_maxlen = stream_maxlen
        self.health_timeout = health_timeout
        self.block = block
        self._sequencing = Sequencing()
        self._notice_sequencing = Sequencing()
        # Overflow policy: over max_pending (bodies) or max_pending_bytes for one
        # destination, its queue is dropped and the link reset (see the docstring).
        self._pending: dict[str, list[bytes]] = {}
        self._pending_bytes: dict[str, int] = {}
        self._resets: dict[str, None] = {}
        """Destinations owed a reset entry (sent before anything else to them)."""
        self._wakeup = anyio.Event()
        self._ok_at = -float("inf")
        self._task_group: TaskGroup | None = None
        self._writer: Redis | None = None
        self._reader: Redis | None = None

    def inbox(self, node: str) -> str:
        """The key of `node`'s inbox stream."""
        return f"{self.prefix}:inbox:{node}"

    @property
    def notices(self) -> str:
        """The key of the notices stream."""
        return f"{self.prefix}:notices"

    @property
    def healthy(self) -> bool:
        return self.clock.monotonic() - self._ok_at < self.health_timeout

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> RedisBus:
        options: dict[str, Any] = {"socket_connect_timeout": 2.0, "health_check_interval": 0}
        self._writer = Redis.from_url(
            self.url, client_name=f"{self.prefix}:{self.node}:w", **options
        )
        self._reader = Redis.from_url(
            self.url, client_name=f"{self.prefix}:{self.node}:r", **options
        )
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        await self._task_group.start(self._read)
        self._task_group.start_soon(self._write)
        self._task_group.start_soon(self._check_health)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        # What is queued goes out first, if Redis takes it within a moment.
        with anyio.move_on_after(1.0, shield=True):
            while self._pending or self._resets:
                await anyio.sleep(0.01)
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._task_group = None
            for client in (self._writer, self._reader):
                if client is not None:
                    with anyio.CancelScope(shield=True):
                        await client.aclose()

    # -- sending -----------------------------------------------------------------------

    def send(self, to: str, body: bytes) -> None:
        self._queue(to, body)

    def notify(self, body: bytes) -> None:
        self._queue(NOTICES, body)

    def _queue(self, to: str, body: bytes) -> None:
        bodies = self._pending.setdefault(to, [])
        size = self._pending_bytes.get(to, 0) + len(body)
        if len(bodies) >= self.max_pending or size > self.max_pending_bytes:
            log.warning(
                "more than %d bodies or %d bytes wait for %r: dropped, the link is reset",
                self.max_pending,
                self.max_pending_bytes,
                to,
            )
            self._lost_to([to])
            return
        bodies.append(body)
        self._pending_bytes[to] = size
        self._wakeup.set()

    def _lost_to(self, destinations: Sequence[str]) -> None:
        # What was queued for, or in flight to, these destinations may be lost: drop
        # it, start a new generation, owe each a reset entry, and tell the listener
        # (from the loop, never from inside `send`: it closes what depended on it).
        for to in destinations:
            self._pending.pop(to, None)
            self._pending_bytes.pop(to, None)
            if to == NOTICES:
                self._notice_sequencing.restart(to)
                _later(self._call, self.listener.notices_lost)
            else:
                self._sequencing.restart(to)
                self._resets[to] = None
                _later(self._call, self.listener.reset, to)
        self._wakeup.set()

    async def _write(self) -> None:
        assert self._writer is not None
        delay = BACKOFF[0]
        while True:
            if not self._pending and not self._resets:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            pending, self._pending, self._pending_bytes = self._pending, {}, {}
            resets, self._resets = list(self._resets), {}
            pipe = self._writer.pipeline(transaction=False)
            for to in resets:
                generation = self._sequencing.announce(to)
                pipe.xadd(self.inbox(to), {"f": self.node, "r": generation}, **self._trim)
            for to, bodies in pending.items():
                sequencing = self._notice_sequencing if to == NOTICES else self._sequencing
                stamp = sequencing.stamp(to)
                key = self.notices if to == NOTICES else self.inbox(to)
                fields = {"f": self.node, "g": stamp.generation, "s": stamp.seq, "b": _pack(bodies)}
                pipe.xadd(key, fields, **self._trim)  # type: ignore[arg-type]
            try:
                await pipe.execute()
            except (RedisError, OSError) as error:
                log.warning("cannot write to Redis (%s): the links are reset", error)
                self._lost_to([*resets, *pending])
                await self.clock.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            delay = BACKOFF[0]
            self._ok_at = self.clock.monotonic()

    @property
    def _trim(self) -> dict[str, Any]:
        return {"maxlen": self.stream_maxlen, "approximate": True}

    # -- receiving ---------------------------------------------------------------------

    async def _read(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        assert self._reader is not None
        keys = (self.inbox(self.node), self.notices)
        last: dict[str, str] = {}
        delay = BACKOFF[0]
        started = False
        while True:
            try:
                if not last:
                    # Start after what is there now ("$" would miss what comes between
                    # two reads): the newest id of each stream, or the beginning.
                    for key in keys:
                        newest: Any = await self._reader.xrevrange(key, count=1)
                        last[key] = newest[0][0].decode() if newest else "0-0"
                if not started:
                    started = True
                    task_status.started()
                ids: Any = dict(last)
                streams: Any = await self._reader.xread(
                    ids, count=1000, block=max(1, round(self.block * 1000))
                )
            except (RedisError, OSError) as error:
                if not started:
                    started = True
                    task_status.started()
                log.warning("cannot read from Redis (%s): every link is reset", error)
                self._reader_lost()
                await self.clock.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            delay = BACKOFF[0]
            self._ok_at = self.clock.monotonic()
            for key, entries in streams or ():
                name = key.decode() if isinstance(key, bytes) else str(key)
                for entry_id, fields in entries:
                    last[name] = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                    self._take(name == self.notices, fields)

    def _reader_lost(self) -> None:
        # The connection broke: entries may have come and gone (a restarted Redis
        # keeps nothing). Every sender's link and the notices are void.
        for sender in self._sequencing.senders():
            self._sequencing.forget(sender)
            self._resets[sender] = None
            self._call(self.listener.reset, sender)
        self._notice_sequencing = Sequencing()
        self._call(self.listener.notices_lost)
        self._wakeup.set()

    def _take(self, notice: bool, fields: dict[bytes, bytes]) -> None:
        try:
            sender = fields[b"f"].decode()
            if b"r" in fields:
                if not notice:
                    # The sender reset our link: void what was in flight, and take its
                    # next batches as the new generation's.
                    self._sequencing.follow(sender, fields[b"r"].decode())
                    self._call(self.listener.reset, sender)
                return
            stamp = Stamp(fields[b"g"].decode(), int(fields[b"s"]))
            bodies = _unpack(fields[b"b"])
        except (KeyError, ValueError, UnicodeDecodeError, ProtocolError) as error:
            log.error("an unreadable entry on the bus (%s): the notices or links are void", error)
            if notice:
                self._call(self.listener.notices_lost)
            return
        if notice:
            if not self._notice_sequencing.check(sender, stamp):
                self._call(self.listener.notices_lost)
            self._call(self.listener.noticed, sender, bodies)
            return
        if not self._sequencing.check(sender, stamp):
            log.warning("a gap in what node %r sent: the link is reset", sender)
            self._resets[sender] = None
            self._wakeup.set()
            self._call(self.listener.reset, sender)
        self._call(self.listener.received, sender, bodies)

    # -- health ------------------------------------------------------------------------

    async def _check_health(self) -> None:
        assert self._writer is not None
        while True:
            try:
                with anyio.fail_after(self.health_timeout):
                    await self._writer.ping()
                self._ok_at = self.clock.monotonic()
            except (RedisError, OSError, TimeoutError) as error:
                log.warning("Redis does not answer: %s", error)
            await self.clock.sleep(self.health_timeout / 3)

    def _call(self, function: Any, *args: Any) -> None:
        try:
            function(*args)
        except Exception:
            log.exception(
                "the bus's listener failed on %s", getattr(function, "__name__", function)
            )


def _pack(bodies: Sequence[bytes]) -> bytes:
    return b"".join(encode_var_uint(len(body)) + body for body in bodies)


def _unpack(data: bytes) -> list[bytes]:
    decoder = Decoder(data)
    bodies = []
    while decoder.pos < len(data):
        bodies.append(decoder.var_bytes())
    return bodies


def _later(call: Any, *args: Any) -> None:
    asyncio.get_running_loop().call_soon(call, *args)
