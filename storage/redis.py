"""`RedisBus`: the bus between the nodes of a cluster (`collab_engine.bus`) on Redis
streams, through redis-py's asyncio client.

    async with RedisBus("redis://127.0.0.1:6379/0", prefix="collab", node="n1",
                        listener=listener) as bus:
        bus.send("n2", body)
        bus.notify(notice)

Keys (every one begins with the cluster's prefix: clusters sharing a Redis do not see
each other):

    {prefix}:inbox:{node}   a stream per node: what the other nodes send it; read only
                            by that node
    {prefix}:notices        one stream of notices, read by every node

Each entry of either stream carries one or more bodies (or none: the announcement of a
reset) and these fields:

    from      the sending node
    gen       the sender's generation for this stream (decimal)
    seq       the entry's number in the generation (decimal, from 1)
    reset     present ("1") on the first entry of a generation that a reset began
    bodies    the bodies, each as a 4-byte big-endian length and its bytes

Generations, sequence numbers and what a node does when an entry is missing are the
bookkeeping of `collab_engine.bus.Links`, described there.

Writing. `send` and `notify` queue a body and never block: a queue per destination,
bounded in bodies and in bytes (`max_pending`, `max_pending_bytes`; a body always fits
an empty queue). When a queue is full, everything queued for that destination is
dropped, the new body too, the link is reset (`Listener.reset(to)` as soon as `send`
has returned, anything sent to `to` until then dropped with the rest; and a new
generation that the receiver hears as a reset); a full queue of notices likewise
begins a new generation, and every node hears `notices_lost`. One writer task, woken
as soon as anything is queued (no linger: this is the path of every edit between
nodes), writes everything queued for every destination in one pipeline of XADDs,
entries of at most `ENTRY_BYTES` of bodies, each XADD trimming its stream to about
`stream_maxlen` entries. A write that fails (Redis unreachable, the connection cut)
may or may not have reached Redis: the links it carried bodies for are reset (locally,
and by a new generation), and the writer tries again after a backoff (capped, on the
bus's clock).

Reading. One reader task reads its inbox and the notices stream in one blocking XREAD,
at most `READ_COUNT` entries at a time, and hands the bodies to the listener in order,
after any reset their stamps call for. It starts at the newest entry of each stream
when the bus starts: only what is written after that is read. When its connection
fails it reconnects with backoff, resumes after the last entry it read, and reports a
reset for every node it had heard from (each also gets a new generation, so it resets
too) and `notices_lost`. A stream found older than the reader's position (Redis
restarted empty) is read from its start.

Trimming. Each stream keeps about `stream_maxlen` entries (XADD `MAXLEN ~`, decided by
the writers: give every node of a cluster the same limit). A reader that falls further
behind than that loses entries: it sees a gap in the next entry from their sender, and
the link is reset on both sides.

Health. `healthy` says whether a round trip to Redis (any command the bus ran, and a
PING every `health_timeout / 3`) succeeded within the last `health_timeout` seconds of
the bus's clock: what the node's lease logic asks before it claims or keeps documents.

Every connection of a bus is named `{prefix}:bus:{node}` (`CLIENT LIST`). The listener is
called from the bus's tasks, or from the event loop soon after a `send`, never from
inside `send` or `notify`; a call that raises is logged with its traceback and the bus
goes on.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ParamSpec

import anyio
from anyio.abc import TaskGroup, TaskStatus
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

from collab_engine.bus import Continuity, Links, Listener, Numbering, Stamp, Verdict
from collab_engine.clock import SYSTEM, Clock

log = logging.getLogger("storage.redis")

ENTRY_BYTES = 64 * 1024
"""The most bytes of bodies in one entry (a larger body makes an entry of its own)."""

READ_COUNT = 100
"""The most entries one XREAD takes."""

READ_BLOCK = 5.0
"""Seconds an XREAD waits for an entry before the reader asks again (a connection
that stops answering is noticed within this plus `health_timeout`)."""

BACKOFF_FIRST = 0.05
"""Seconds before the first retry after a failure; each failure in a row doubles it..."""
BACKOFF_CAP = 2.0
"""... up to this."""

_LENGTH = struct.Struct(">I")
_P = ParamSpec("_P")


def inbox_key(prefix: str, node: str) -> str:
    """The stream `node` reads what the other nodes send it from."""
    return f"{prefix}:inbox:{node}"


def notices_key(prefix: str) -> str:
    """The stream of notices every node reads."""
    return f"{prefix}:notices"


@dataclass(slots=True)
class _Queue:
    """The bodies waiting for one destination, and their bytes."""

    bodies: deque[bytes] = field(default_factory=deque)
    size: int = 0

    def clear(self) -> None:
        self.bodies.clear()
        self.size = 0


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    to: str | None
    """The destination node; None for a notice."""
    fields: dict[FieldT, EncodableT]
    bodies: bool
    """Whether it carries any body."""


class RedisBus:
    """The bus of node `node` of the cluster named by `prefix`, on the Redis at `url`.
    Use as `async with RedisBus(...) as bus:`; the tasks run inside, and the
    connections are closed on the way out, after the writer has had up to
    `drain_timeout` seconds to write what was queued (unless Redis is failing).

    Args:
        url: a redis-py URL (`redis://host:port/db`).
        prefix: the cluster's key prefix.
        node: this node's name, unique in the cluster.
        listener: who is told what arrives and what may have been lost.
        clock: the clock of the backoff, the health checks and `healthy`.
        max_pending: the most bodies queued for one destination (the notices count
            as one).
        max_pending_bytes: the most bytes of bodies queued for one destination.
        stream_maxlen: about how many entries each XADD leaves in its stream.
        health_timeout: seconds within which a round trip must have succeeded for the
            bus to be `healthy`; also the timeout of a connection attempt and of a
            write or a PING.
        drain_timeout: seconds the bus waits, when it stops, for the writer to write
            what is queued.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        node: str,
        listener: Listener,
        clock: Clock = SYSTEM,
        max_pending: int = 10_000,
        max_pending_bytes: int = 16 * 1024 * 1024,
        stream_maxlen: int = 10_000,
        health_timeout: float = 3.0,
        drain_timeout: float = 5.0,
    ) -> None:
        for what, name in (("prefix", prefix), ("node", node)):
            if not name or any(character.isspace() for character in name):
                raise ValueError(f"the bus's {what} must be a non-empty name without spaces")
        if min(max_pending, max_pending_bytes, stream_maxlen) < 1:
            raise ValueError("the bus's limits must be positive")
        if health_timeout <= 0 or drain_timeout < 0:
            raise ValueError("the bus's timeouts must be positive")
        self.url = url
        self.prefix = prefix
        self.node = node
        self.client_name = f"{prefix}:bus:{node}"
        """The name of each of the bus's Redis connections."""
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.stream_maxlen = stream_maxlen
        self.health_timeout = health_timeout
        self.drain_timeout = drain_timeout
        self._listener = listener
        self._clock = clock
        self._inbox = inbox_key(prefix, node)
        self._notices = notices_key(prefix)
        self._links = Links()
        self._notice_numbering = Numbering()
        self._notice_continuity = Continuity()
        # Bounded per destination, the notices as one (`max_pending` bodies,
        # `max_pending_bytes`). Full: everything queued for that destination is dropped,
        # the new body too (and what is sent to it until the reset is reported), and the
        # link reset (`send`, `notify`).
        self._queues: dict[str, _Queue] = {}
        self._notice_queue = _Queue()
        self._unreported: set[str] = set()
        """Destinations whose queue overflowed, until the reset is reported."""
        self._wakeup = anyio.Event()
        self._progress = anyio.Event()
        self._writing = False
        self._write_failing = False
        self._last_success: float | None = None
        self._task_group: TaskGroup | None = None
        self._clients: list[Redis] = []

    # -- the node's side -------------------------------------------------------------

    def send(self, to: str, body: bytes) -> None:
        """Queue `body` for node `to` (see `collab_engine.bus.Bus.send`)."""
        queue = self._queues.get(to)
        if queue is None:
            queue = self._queues[to] = _Queue()
        if to in self._unreported:
            return  # void already: the reset about to be reported covers it
        if self._fits(queue, body):
            queue.bodies.append(body)
            queue.size += len(body)
            self._wake()
            return
        log.warning(
            "the queue to node %r is full (%d bodies, %d bytes): dropped, link reset",
            to,
            len(queue.bodies),
            queue.size,
        )
        queue.clear()
        self._links.restart(to)
        self._wake()
        # Reported from the loop, never from inside `send`: the listener closes what
        # depended on the link, which may be what is sending.
        self._unreported.add(to)
        try:
            asyncio.get_running_loop().call_soon(self._report, to)
        except RuntimeError:  # no loop running: nothing is inside a send of ours
            self._report(to)

    def notify(self, body: bytes) -> None:
        """Queue a notice for every node (see `collab_engine.bus.Bus.notify`)."""
        queue = self._notice_queue
        if self._fits(queue, body):
            queue.bodies.append(body)
            queue.size += len(body)
        else:
            log.warning(
                "the queue of notices is full (%d notices, %d bytes): dropped; every node "
                "will hear that notices were lost",
                len(queue.bodies),
                queue.size,
            )
            queue.clear()
            self._notice_numbering.restart(self._notices)
        self._wake()

    @property
    def healthy(self) -> bool:
        """Whether a round trip to Redis succeeded within the last `health_timeout`
        seconds of the bus's clock."""
        last = self._last_success
        return last is not None and self._clock.monotonic() - last <= self.health_timeout

    def _fits(self, queue: _Queue, body: bytes) -> bool:
        if not queue.bodies:
            return True
        return (
            len(queue.bodies) < self.max_pending
            and queue.size + len(body) <= self.max_pending_bytes
        )

    def _report(self, to: str) -> None:
        self._unreported.discard(to)
        _tell(self._listener.reset, to)

    def _reset(self, node: str) -> None:
        """The link with `node` is reset, its new generation begun: what was queued for
        it is void; the listener hears it, and the writer announces the generation."""
        queue = self._queues.get(node)
        if queue is not None:
            queue.clear()
        self._wake()
        _tell(self._listener.reset, node)

    def _wake(self) -> None:
        if not self._wakeup.is_set():
            self._wakeup.set()

    def _succeeded(self) -> None:
        self._last_success = self._clock.monotonic()

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> RedisBus:
        if self._task_group is not None:
            raise RuntimeError("the bus is already running")
        self._clients = [
            self._client(socket_timeout=self.health_timeout),  # the writer's
            self._client(socket_timeout=READ_BLOCK + self.health_timeout),  # the reader's
            self._client(socket_timeout=self.health_timeout),  # the health check's
        ]
        writer, reader, pinger = self._clients
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            await self._task_group.start(self._read, reader)
            self._task_group.start_soon(self._write, writer)
            self._task_group.start_soon(self._check_health, pinger)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        await self._drain()
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._task_group = None
            await self._close()

    def _client(self, *, socket_timeout: float) -> Redis:
        # No retries inside redis-py: a command that failed may have been carried out,
        # and the bus decides what that costs (a reset), not a silent second try.
        return Redis.from_url(
            self.url,
            client_name=self.client_name,
            socket_timeout=socket_timeout,
            socket_connect_timeout=self.health_timeout,
            retry=Retry(NoBackoff(), 0),
        )

    async def _drain(self) -> None:
        # Shielded: a bus leaving because it was cancelled still writes what it
        # accepted (the last notices of a node matter to every other), within the
        # drain timeout.
        with anyio.move_on_after(self.drain_timeout, shield=True):
            while (self._owed() or self._writing) and not self._write_failing:
                await self._progress.wait()
        unsent = {to: len(queue.bodies) for to, queue in self._queues.items() if queue.bodies}
        if unsent or self._notice_queue.bodies:
            log.error(
                "the bus of node %r stopped with bodies unwritten (by destination: %s; "
                "notices: %d): their receivers hear nothing of them",
                self.node,
                unsent,
                len(self._notice_queue.bodies),
            )

    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):
            for client in self._clients:
                try:
                    await client.aclose()
                except Exception:  # noqa: BLE001 - a connection that fails to close is gone anyway
                    log.debug("closing a Redis connection failed", exc_info=True)
        self._clients = []

    # -- the writer ------------------------------------------------------------------

    def _owed(self) -> bool:
        return bool(
            any(queue.bodies for queue in self._queues.values())
            or self._links.unannounced
            or self._notice_queue.bodies
            or self._notice_numbering.unannounced
        )

    async def _write(self, client: Redis) -> None:
        delay = BACKOFF_FIRST
        while True:
            if not self._owed():
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            entries = self._take()
            self._writing = True
            try:
                written = await self._flush(client, entries)
            finally:
                self._writing = False
                progress, self._progress = self._progress, anyio.Event()
                progress.set()
            if written:
                delay = BACKOFF_FIRST
            else:
                await self._clock.sleep(delay)
                delay = min(2 * delay, BACKOFF_CAP)

    def _take(self) -> list[_Entry]:
        """Everything queued, as entries: the queues are emptied, the stamps taken."""
        entries: list[_Entry] = []
        destinations = [to for to, queue in self._queues.items() if queue.bodies]
        destinations += [to for to in self._links.unannounced if to not in destinations]
        for to in destinations:
            queue = self._queues.get(to)
            for data in _packed(queue) if queue is not None else [b""]:
                stamp = self._links.stamp(to)
                entries.append(
                    _Entry(inbox_key(self.prefix, to), to, self._fields(stamp, data), bool(data))
                )
        if self._notice_queue.bodies or self._notice_numbering.unannounced:
            for data in _packed(self._notice_queue):
                stamp = self._notice_numbering.stamp(self._notices)
                entries.append(_Entry(self._notices, None, self._fields(stamp, data), bool(data)))
        return entries

    def _fields(self, stamp: Stamp, data: bytes) -> dict[FieldT, EncodableT]:
        fields: dict[FieldT, EncodableT] = {
            "from": self.node,
            "gen": stamp.generation,
            "seq": stamp.seq,
            "bodies": data,
        }
        if stamp.reset:
            fields["reset"] = 1
        return fields

    async def _flush(self, client: Redis, entries: list[_Entry]) -> bool:
        """Write `entries` in one pipeline; whether all were written."""
        pipeline = client.pipeline(transaction=False)
        for entry in entries:
            pipeline.xadd(entry.key, entry.fields, maxlen=self.stream_maxlen, approximate=True)
        try:
            results = await pipeline.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the entries may be lost
            self._failed(entries, exc)
            return False
        self._succeeded()
        failed = [(e, r) for e, r in zip(entries, results, strict=True) if isinstance(r, Exception)]
        if failed:
            self._failed([entry for entry, _ in failed], failed[0][1])
            return False
        if self._write_failing:
            log.info("the bus of node %r writes to Redis again", self.node)
            self._write_failing = False
        return True

    def _failed(self, entries: list[_Entry], exc: BaseException) -> None:
        """Entries that may not have been written: a new generation for each stream, and
        a reset of each link that lost bodies."""
        lost: dict[str, bool] = {}
        notices = False
        for entry in entries:
            if entry.to is None:
                notices = True
            else:
                lost[entry.to] = lost.get(entry.to, False) or entry.bodies
        reset = sorted(to for to, bodies in lost.items() if bodies)
        _complain(
            self._write_failing,
            f"the bus of node {self.node!r} could not write {len(entries)} entries to Redis",
            exc,
            f"links reset with {reset or 'none'}{'; notices may be lost' if notices else ''}",
        )
        self._write_failing = True
        if notices:
            self._notice_numbering.restart(self._notices)
        for to, bodies in lost.items():
            self._links.restart(to)
            if bodies:
                self._reset(to)

    # -- the reader ------------------------------------------------------------------

    async def _read(self, client: Redis, *, task_status: TaskStatus[None]) -> None:
        positions: dict[str, str] | None = None
        cut = False  # the connection failed after a position was known: resets are due
        delay = BACKOFF_FIRST
        started = False
        while True:
            try:
                if positions is None or cut:
                    positions = _resume(positions, await self._newest(client))
                    if cut:
                        self._reconnected()
                        cut = False
                if not started:
                    task_status.started()
                    started = True
                streams: dict[KeyT, StreamIdT] = {key: at for key, at in positions.items()}
                response = await client.xread(
                    streams, count=READ_COUNT, block=int(READ_BLOCK * 1000)
                )
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect and resume
                _complain(
                    cut, f"the bus of node {self.node!r} cannot read from Redis", exc, "retrying"
                )
                cut = positions is not None
                if not started:
                    task_status.started()
                    started = True
                await self._clock.sleep(delay)
                delay = min(2 * delay, BACKOFF_CAP)
                continue
            delay = BACKOFF_FIRST
            self._succeeded()
            self._handle(response, positions)

    async def _newest(self, client: Redis) -> dict[str, str | None]:
        """The id of the newest entry of each stream (None: empty or absent)."""
        pipeline = client.pipeline(transaction=False)
        keys = (self._inbox, self._notices)
        for key in keys:
            pipeline.xrevrange(key, count=1)
        results = await pipeline.execute()
        self._succeeded()
        return {
            key: result[0][0].decode() if result else None
            for key, result in zip(keys, results, strict=True)
        }

    def _reconnected(self) -> None:
        senders = self._links.reconnected()
        log.warning(
            "the bus of node %r reads from Redis again: anything sent to it meanwhile may "
            "have been lost; links reset with %s, notices re-read",
            self.node,
            sorted(senders),
        )
        for sender in senders:
            self._reset(sender)
        _tell(self._listener.notices_lost)

    def _handle(self, response: Any, positions: dict[str, str]) -> None:
        # [[stream, entries], ...]; RESP3 without redis-py's legacy shapes gives a dict.
        streams = response.items() if isinstance(response, dict) else response or ()
        for key, entries in streams:
            stream = key.decode()
            for entry_id, fields in entries:
                positions[stream] = entry_id.decode()
                try:
                    sender, stamp, bodies = _decode(fields)
                except (KeyError, ValueError, struct.error) as exc:
                    # Skipped whole: the sender's next entry shows the gap.
                    log.error("an entry of %s cannot be read (%s): skipped", stream, _describe(exc))
                    continue
                if stream == self._inbox:
                    self._arrived(sender, stamp, bodies)
                else:
                    self._noticed(sender, stamp, bodies)

    def _arrived(self, sender: str, stamp: Stamp, bodies: list[bytes]) -> None:
        verdict = self._links.arrived(sender, stamp)
        if verdict is not Verdict.IN_ORDER:
            log.log(
                logging.WARNING if verdict is Verdict.GAP else logging.INFO,
                "the link from node %r to node %r is reset: %s",
                sender,
                self.node,
                _EXPLAINED[verdict],
            )
            if verdict is Verdict.RESTARTED:
                _tell(self._listener.reset, sender)
            else:
                self._reset(sender)
        if bodies:
            _tell(self._listener.received, sender, bodies)

    def _noticed(self, sender: str, stamp: Stamp, bodies: list[bytes]) -> None:
        # Joining a sender's notices midway loses nothing: the node was not reading.
        if self._notice_continuity.check(sender, stamp) in (Verdict.RESTARTED, Verdict.GAP):
            log.warning("notices from node %r may have been lost: re-reading", sender)
            _tell(self._listener.notices_lost)
        if bodies:
            _tell(self._listener.noticed, sender, bodies)

    # -- health ----------------------------------------------------------------------

    async def _check_health(self, client: Redis) -> None:
        failing = False
        while True:
            try:
                await client.ping()
            except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
                _complain(
                    failing, f"the bus of node {self.node!r} gets no PONG from Redis", exc, ""
                )
                failing = True
            else:
                self._succeeded()
                if failing:
                    log.info("the bus of node %r gets answers from Redis again", self.node)
                failing = False
            await self._clock.sleep(self.health_timeout / 3)


_EXPLAINED = {
    Verdict.RESTARTED: "the sender reset it",
    Verdict.GAP: "entries are missing (a reader left behind, or Redis lost them)",
    Verdict.JOINED: "the first entry heard from the sender is past the start of its link",
}


def _tell(callback: Callable[_P, None], *args: _P.args, **kwargs: _P.kwargs) -> None:
    """Call the listener; log what it raises, and go on."""
    try:
        callback(*args, **kwargs)
    except Exception:
        log.exception("the bus's listener raised in %s", getattr(callback, "__name__", callback))


def _packed(queue: _Queue) -> list[bytes]:
    """Empty `queue` into entries' `bodies` fields of at most `ENTRY_BYTES` each (a
    larger body alone); one empty field when the queue is empty."""
    entries: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for body in queue.bodies:
        if parts and size + _LENGTH.size + len(body) > ENTRY_BYTES:
            entries.append(b"".join(parts))
            parts, size = [], 0
        parts += (_LENGTH.pack(len(body)), body)
        size += _LENGTH.size + len(body)
    entries.append(b"".join(parts))
    queue.clear()
    return entries


def _unpacked(data: bytes) -> list[bytes]:
    bodies: list[bytes] = []
    offset = 0
    while offset < len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise ValueError("a body is cut short")
        bodies.append(data[offset : offset + length])
        offset += length
    return bodies


def _decode(fields: dict[bytes, bytes]) -> tuple[str, Stamp, list[bytes]]:
    stamp = Stamp(int(fields[b"gen"]), int(fields[b"seq"]), reset=b"reset" in fields)
    return fields[b"from"].decode(), stamp, _unpacked(fields.get(b"bodies", b""))


def _resume(positions: dict[str, str] | None, newest: dict[str, str | None]) -> dict[str, str]:
    """Where to read each stream from: after the newest entry when starting; after the
    last entry read when resuming, or from the start of a stream that is now older
    than that (Redis lost it)."""
    resumed: dict[str, str] = {}
    for key, top in newest.items():
        if positions is None:
            resumed[key] = top or "0-0"
        elif top is None or _order(top) < _order(positions[key]):
            resumed[key] = "0-0"
        else:
            resumed[key] = positions[key]
    return resumed


def _order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _complain(again: bool, what: str, exc: BaseException, then: str) -> None:
    """Log a failure to reach Redis: a warning, or at debug level when it is the same
    outage again (an outage is told once, not at every retry); with the traceback when
    it is not the network's or Redis's failure."""
    log.log(
        logging.DEBUG if again else logging.WARNING,
        "%s (%s)%s",
        what,
        _describe(exc),
        f": {then}" if then else "",
        exc_info=not isinstance(exc, RedisError | OSError),
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
