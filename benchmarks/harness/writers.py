"""Writers that wait for durability: W peers in rooms of an engine in this process, each
with one update in flight until the journal acknowledges it, run once and measured
(`throughput_once`): the load of `durable_storage.py`'s part 1.

Each writer is a `Peer` joined to its room, as a WebSocket connection's would be; it
first sends `RequestPersisted()`, then, for each of its updates: `await
journal.room_for_more()` (what the server's connection reader does),
`room.receive(peer, SyncUpdate(update))`, and it waits, reading its outbox
(`peer.batches()`), for the `Persisted` frame whose count covers that update. So
each writer has exactly one update in flight, like a client that waits for
durability before it sends more. Every writer also reads (and drops) the other
writers' updates that the room fans out to it, as a connection's writer task would.

The updates are made with pycrdt before any run (`prepare_updates`): per writer, a
document of its own (its own client id) and a sequence of transactions each
appending two characters to one `Text`; each transaction's update (21 to 27 bytes)
is one message. The same sequences are replayed in every run, into fresh rooms of a
fresh store, with compaction out of reach so that only the journal writes.

Figures of a run, over a measuring window that starts `warmup` seconds after the
writers (`ThroughputResult`):

* acknowledged updates/s: `Persisted` acknowledgements the writers received in the
  window, divided by its length;
* commits and updates per commit: from the journal's `commits` counter and its
  written ticket, read at both ends of the window; the time per commit is the
  window's length divided by its commits (the journal's writer is never idle under
  this load, so this is the time one commit takes, waits for the event loop included);
* ack latency p50/p99: from just before `room.receive` to the moment the writer reads
  the acknowledgement, for the updates sent in the window;
* CPU: this process's CPU time over the window as a share of one core (all of its
  threads: the event loop and the SQLite driver's thread; PostgreSQL's own processes
  are not counted);
* event loop on CPU / queued: the share of the window the event loop's thread ran on
  a CPU, and was runnable but waiting for one (/proc/self/schedstat). On CPU near
  100 % means Python, not the disk, set the pace; a large "queued" share means other
  processes on the machine took the CPU it needed.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
from pycrdt import Doc, Text, TransactionEvent

from collab_engine import Engine, Peer, Room
from collab_engine.identity import Identity
from collab_engine.journal import Journal
from collab_engine.protocol import Persisted, RequestPersisted, SyncUpdate, decode
from collab_engine.types import Frame, Update
from harness.history import TEXT, engine_config
from harness.report import ms, number
from harness.sampling import loop_schedstat
from harness.stats import median, pct, percentile
from harness.stores import Backend

PERSISTED_PREFIX = b"\x64\x01"
"""The first two bytes of a `Persisted` frame (collab message type 100, kind 1)."""


def prepare_updates(writers: int, per_writer: int) -> list[list[Update]]:
    """Per writer, `per_writer` updates of its own document: each appends "ab"."""
    sequences: list[list[Update]] = []
    for _ in range(writers):
        doc: Doc[Any] = Doc()
        text = doc.get(TEXT, type=Text)
        updates: list[Update] = []

        def keep(event: TransactionEvent, updates: list[Update] = updates) -> None:
            updates.append(event.update)

        subscription = doc.observe(keep)
        for index in range(per_writer):
            with doc.transaction():
                text.insert(2 * index, "ab")
        doc.unobserve(subscription)
        assert len(updates) == per_writer
        sequences.append(updates)
    return sequences


@dataclass(slots=True)
class Counters:
    """What the writers of one run update."""

    acked: int = 0
    latencies: list[float] = field(default_factory=list)
    exhausted: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    updates_per_second: float
    commits: int
    updates_per_commit: float
    commit_time: float
    p50: float
    p99: float
    cpu_share: float
    loop_busy: float
    loop_queued: float
    acked: int
    problems: tuple[str, ...]

    def summary(self) -> str:
        return (
            f"{self.updates_per_second:,.0f} acked/s, "
            f"{self.updates_per_commit:.1f} per commit, "
            f"p50 {ms(self.p50)} ms, p99 {ms(self.p99)} ms, "
            f"CPU {pct(self.cpu_share)}, loop on CPU {pct(self.loop_busy)} "
            f"queued {pct(self.loop_queued)}"
        )


async def wait_acked(peer: Peer, batches: AsyncIterator[list[Frame]], count: int) -> None:
    """Read `peer`'s outbox until a `Persisted` frame says `count` updates are durable.

    Raises:
        RuntimeError: the peer was closed (evicted, or its room failed).
    """
    while True:
        try:
            batch = await anext(batches)
        except StopAsyncIteration:
            reason = peer.error.reason if peer.error is not None else "closed"
            raise RuntimeError(f"{peer.label} was closed: {reason}") from None
        for frame in batch:
            if frame.startswith(PERSISTED_PREFIX):
                message = decode(frame)
                assert isinstance(message, Persisted)
                if message.count >= count:
                    return


async def write(
    room: Room,
    peer: Peer,
    journal: Journal,
    updates: Sequence[Update],
    window: Window,
    counters: Counters,
) -> None:
    """One writer: send an update, wait for its acknowledgement, until the window ends."""
    frames = cast(AsyncGenerator[list[Frame], None], peer.batches())
    try:
        room.receive(peer, RequestPersisted())
        await wait_acked(peer, frames, 0)
        sent = 0
        while time.perf_counter() < window.end:
            if sent == len(updates):
                counters.exhausted += 1
                break
            await journal.room_for_more()
            sent_at = time.perf_counter()
            room.receive(peer, SyncUpdate(updates[sent]))
            sent += 1
            await wait_acked(peer, frames, sent)
            acked_at = time.perf_counter()
            counters.acked += 1
            if window.start <= sent_at < window.end:
                counters.latencies.append(acked_at - sent_at)
    except RuntimeError as exc:
        counters.problems.append(str(exc))
    finally:
        await frames.aclose()
        room.leave(peer)
        peer.close()


async def throughput_once(
    backend: Backend,
    *,
    max_batch: int | None,
    linger: float | None,
    writers: int,
    rooms: int,
    updates: Sequence[Sequence[Update]],
    warmup: float,
    duration: float,
) -> ThroughputResult:
    """One run of W writers over R fresh rooms of a fresh store; None for `max_batch`
    or `linger` leaves the engine's default."""
    limits: dict[str, Any] = {} if max_batch is None else {"journal_max_batch": max_batch}
    if linger is not None:
        limits["journal_linger"] = linger
    config = engine_config(**limits)
    store, cleanup = await backend.open()
    counters = Counters()
    prefix = f"throughput-{uuid.uuid4().hex[:8]}"
    try:
        with anyio.fail_after(warmup + duration + 120):
            async with Engine(config, store) as engine, contextlib.AsyncExitStack() as stack:
                journal = engine.journal
                assert journal is not None
                opened = [
                    await stack.enter_async_context(engine.room(f"{prefix}-{r}"))
                    for r in range(rooms)
                ]
                peers = []
                for index in range(writers):
                    name = f"writer-{index}"
                    peer = Peer(label=name, identity=Identity(name, name))
                    opened[index % rooms].join(peer)
                    peer.drain()  # sync step 1: the room is empty, nothing to answer
                    peers.append(peer)
                begin = time.perf_counter()
                window = Window(begin + warmup, begin + warmup + duration)
                marks: list[tuple[float, int, int, int, float, tuple[int, int]]] = []

                def mark() -> None:
                    marks.append(
                        (
                            time.perf_counter(),
                            counters.acked,
                            journal.commits,
                            journal.written,
                            time.process_time(),
                            loop_schedstat(),
                        )
                    )

                async with anyio.create_task_group() as group:
                    for index, peer in enumerate(peers):
                        group.start_soon(
                            write,
                            opened[index % rooms],
                            peer,
                            journal,
                            updates[index],
                            window,
                            counters,
                        )
                    await anyio.sleep(window.start - time.perf_counter())
                    mark()
                    await anyio.sleep(window.end - time.perf_counter())
                    mark()
    finally:
        await cleanup()
    (
        (t0, acked0, commits0, written0, cpu0, sched0),
        (t1, acked1, commits1, written1, cpu1, sched1),
    ) = marks
    commits = commits1 - commits0
    problems = list(dict.fromkeys(counters.problems))
    if counters.exhausted:
        problems.append(
            f"{counters.exhausted} writer(s) ran out of prepared updates before the window "
            "ended: raise --updates-per-writer"
        )
    return ThroughputResult(
        updates_per_second=(acked1 - acked0) / (t1 - t0),
        commits=commits,
        updates_per_commit=(written1 - written0) / commits if commits else math.nan,
        commit_time=(t1 - t0) / commits if commits else math.nan,
        p50=percentile(counters.latencies, 50),
        p99=percentile(counters.latencies, 99),
        cpu_share=(cpu1 - cpu0) / (t1 - t0),
        loop_busy=(sched1[0] - sched0[0]) / 1e9 / (t1 - t0),
        loop_queued=(sched1[1] - sched0[1]) / 1e9 / (t1 - t0),
        acked=acked1 - acked0,
        problems=tuple(problems),
    )


SINGLE = "one commit per update"
GROUP = "group commit"
LINGER = "group commit, 50 ms linger (default)"
MODES = ((SINGLE, 1, 0.0), (GROUP, None, 0.0), (LINGER, None, None))
"""Each mode's `journal_max_batch` and `journal_linger` (None: the engine's default)."""


def throughput_table(
    results: dict[tuple[str, int, str], list[ThroughputResult]],
    *,
    writers: int,
    runs: int,
    duration: float,
    warmup: float,
) -> str:
    """Part 1 of durable_storage: acknowledged updates/s by backend, rooms and mode
    (`MODES`), medians over the runs, and group commit's speedup per run."""
    lines = [
        f"## 1. Durable updates/s: {writers} writers, each with one update in flight",
        "",
        f"Median of {runs} run(s); each run measures {duration:g} s after "
        f"{warmup:g} s of warm-up, on a fresh database; the three modes in the same run.",
        "",
        "| backend | rooms | mode | acked updates/s | commits in window | updates per commit "
        "| ms per commit | ack p50 (ms) | ack p99 (ms) | CPU (one core) "
        "| event loop on CPU / queued |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    speedups: list[str] = []
    for (backend, rooms, mode), measured in results.items():
        rate = median([r.updates_per_second for r in measured])
        lines.append(
            f"| {backend} | {rooms} | {mode} | {number(rate)} "
            f"| {number(median([float(r.commits) for r in measured]))} "
            f"| {number(median([r.updates_per_commit for r in measured]), 1)} "
            f"| {ms(median([r.commit_time for r in measured]))} "
            f"| {ms(median([r.p50 for r in measured]))} | {ms(median([r.p99 for r in measured]))} "
            f"| {pct(median([r.cpu_share for r in measured]))} "
            f"| {pct(median([r.loop_busy for r in measured]))} / "
            f"{pct(median([r.loop_queued for r in measured]))} |"
        )
        if mode in (GROUP, LINGER) and (backend, rooms, SINGLE) in results:
            single_runs = results[(backend, rooms, SINGLE)]
            single = median([r.updates_per_second for r in single_runs])
            per_run = [
                g.updates_per_second / s.updates_per_second
                for g, s in zip(measured, single_runs, strict=False)
                if s.updates_per_second > 0
            ]
            speedups.append(
                f"| {backend} | {rooms} | {mode} "
                f"| {number(rate / single, 1) if single else 'n/a'} x "
                f"| {', '.join(f'{x:.1f}' for x in per_run)} |"
            )
    if speedups:
        lines += [
            "",
            "Group commit (without, then with the linger) against one commit per update "
            "(acknowledged updates/s):",
            "",
            "| backend | rooms | mode | speedup (ratio of medians) | per run |",
            "|---|---:|---|---:|---|",
            *speedups,
        ]
    return "\n".join(lines)
