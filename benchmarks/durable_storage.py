"""Durable storage: group commit against one commit per update, loading a long
history, and the bytes a history takes on disk.

Usage:

    python benchmarks/durable_storage.py                     # everything, 3 runs (about 3 minutes)
    python benchmarks/durable_storage.py --quick             # smoke run (about 15 s)
    python benchmarks/durable_storage.py --backends sqlite --rooms 1 --runs 5

Everything runs in this one process, through the engine's own code: `Engine`,
`Room.receive`, the journal and `SQLStore`. Nothing goes over a network but the
PostgreSQL connection.

1. Durable updates per second
-----------------------------
Per backend (SQLite in a file of a temporary directory, with the store's
`synchronous=FULL`; PostgreSQL at 127.0.0.1:5432 when it answers, each run in a
fresh schema dropped afterwards) and per layout (W writers in 1 room, or spread
over R rooms), two engine configurations are measured in the same run, one after
the other, on a fresh database (or schema) each:

* "one commit per update": `EngineConfig(journal_max_batch=1, journal_linger=0)`;
* "group commit": the default `journal_max_batch` (2,000), `journal_linger=0`;
* "group commit, 50 ms linger": the defaults, the journal waiting 50 ms for more
  updates before each commit. Writers here wait for each acknowledgement before
  they send more (y-websocket clients do not), so lingering costs them throughput:
  this row shows the price a client that waits for durability pays.

Compaction is switched off in both (its thresholds are set out of reach) so that
only the journal writes. Each writer is a `Peer` joined to its room, as a
WebSocket connection's would be; it first sends `RequestPersisted()`, then, for
each of its updates: `await journal.room_for_more()` (what the server's
connection reader does), `room.receive(peer, SyncUpdate(update))`, and it waits,
reading its outbox (`peer.batches()`), for the `Persisted`
frame whose count covers that update. So each writer has exactly one update in
flight, like a client that waits for durability before it sends more. Every
writer also reads (and drops) the other writers' updates that the room fans out
to it, as a connection's writer task would.

The updates are made with pycrdt before any run: per writer, a document of its
own (its own client id) and a sequence of transactions each appending two
characters to one `Text`; each transaction's update (21 to 27 bytes) is one
message. The same sequences are replayed in every run, into fresh rooms.

Figures, per run, over a measuring window of `--duration` seconds that starts
`--warmup` seconds after the writers:

* acknowledged updates/s: `Persisted` acknowledgements the writers received in
  the window, divided by its length;
* commits and updates per commit: from the journal's `commits` counter and its
  written ticket, read at both ends of the window; ms per commit is the window's
  length divided by its commits (the journal's writer is never idle under this
  load, so this is the time one commit takes, waits for the event loop included);
* ack latency p50/p99: from just before `room.receive` to the moment the writer
  reads the acknowledgement, for the updates sent in the window;
* CPU: this process's CPU time over the window as a share of one core (all of its
  threads: the event loop and the SQLite driver's thread; PostgreSQL's own
  processes are not counted);
* event loop on CPU / queued: the share of the window the event loop's thread ran
  on a CPU, and was runnable but waiting for one (/proc/self/schedstat). On CPU
  near 100 % means Python, not the disk, set the pace; a large "queued" share
  means other processes on the machine took the CPU it needed.

The table shows the median of each figure over `--runs` runs, and the speedup is
the ratio of the two medians.

The layouts differ in what each update costs besides the disk. In 1 room, every
update is fanned out to all W peers (W frames queued, W reader tasks woken), as
the server would to W connections. In R rooms, a group commit holds updates of up
to R documents, and `SQLStore.append` runs three statements per document in it
(the `documents` upsert, the `last_seq` update, the insert).

For reference, the same run also times `SQLStore.append` alone, without the
engine, one call at a time on a fresh database: one entry, and W entries over 1
and over R documents (the shapes of the batches above), for about
`--append-seconds` per shape; the table gives the median call and its CPU time.

2. Loading a long history
-------------------------
The `automerge-paper` editing trace (/work/shared/traces, 259,778 one-character
edits; ASCII, so pycrdt's UTF-8 indexes are the trace's code-point positions, and
the script asserts it) is replayed into a pycrdt `Text`, one transaction per
edit, and each transaction's update (`Doc.observe`) is kept. The replayed text
must equal the trace's `endContent`. The updates are appended with
`SQLStore.append` in batches of 10,000 (one transaction each) to three SQLite
files, one per case:

* (a) log only: every update, no snapshot;
* (b) snapshot at the end: the whole log, then `Engine.compact` (a snapshot at
  the last seq, nothing after it);
* (c) snapshot + tail: all but the last `--tail` (1,000) updates, then
  `Engine.compact`, then the last ones.

Then, per run and per case (cases interleaved within each run), three timings:
`store.load()` alone; `engine.rebuild` of what it returned (in a worker thread,
as the engine does); and a cold open, `async with engine.room(name)`, in a new
`Engine` each time (compaction off, so opening does not write a snapshot), which
is the two together plus the room's set-up. Every open checks the room's text
against `endContent`. "Cold" is the room's state: the file is in the operating
system's page cache, as a recently written database would be.

3. Bytes on disk
----------------
After `PRAGMA wal_checkpoint(TRUNCATE)`, the size of each SQLite file (its -wal
file included, empty after the checkpoint), per 1,000 edits of the history; next
to them, the raw update bytes per 1,000 edits and the snapshots' sizes, and where
the bytes of the file with the snapshot are, table by table and index by index
(SQLite's `dbstat`). Every update is logged with the author "trace".

With `--quick` (a smoke run), part 2 uses the first 20,000 edits of the trace
(the expected text is then the same edits applied to a Python string), and the
table is printed only, not written, unless `--output` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
from harness import provenance
from harness.provenance import filesystem_of, load_average, version
from harness.report import ms, number, publish, say, seconds
from harness.sampling import loop_schedstat
from harness.stats import median, pct, percentile
from harness.stores import (
    POSTGRES_URL,
    Backend,
    checkpoint,
    file_bytes,
    postgres_answers,
    postgres_backend,
    postgres_execute,
    space_by_object,
    sqlite_backend,
)
from harness.traces import AUTOMERGE_PAPER, read_trace
from pycrdt import Doc, Text, TransactionEvent

from collab_engine import Engine, EngineConfig, Peer, Room
from collab_engine.identity import Identity
from collab_engine.journal import Journal
from collab_engine.protocol import Persisted, RequestPersisted, SyncUpdate, decode
from collab_engine.store import Entry, rebuild
from collab_engine.types import Frame, Update
from storage.sql import SQLStore, sqlite_url

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "durable_storage.md"
DEFAULT_TRACE = AUTOMERGE_PAPER

PERSISTED_PREFIX = b"\x64\x01"
"""The first two bytes of a `Persisted` frame (collab message type 100, kind 1)."""
APPEND_BATCH = 10_000
"""Updates per `SQLStore.append` (one transaction) when the history is written."""
NEVER = 10**15
"""A compaction threshold never reached: the benchmarks decide when snapshots are made."""
TEXT = "text"
"""The root `Text` of every document here."""

SINGLE = "one commit per update"
GROUP = "group commit"
LINGER = "group commit, 50 ms linger (default)"


# -- helpers ---------------------------------------------------------------------------


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


# -- 1. durable updates per second -----------------------------------------------------


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
    """One run of W writers over R fresh rooms of a fresh store; see the module docstring."""
    limits: dict[str, Any] = {} if max_batch is None else {"journal_max_batch": max_batch}
    if linger is not None:
        limits["journal_linger"] = linger
    config = EngineConfig(compact_after_updates=NEVER, compact_after_bytes=NEVER, **limits)
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


@dataclass(frozen=True, slots=True)
class AppendResult:
    per_call: float
    cpu_per_call: float
    calls: int


async def appends_once(
    backend: Backend,
    shapes: Sequence[tuple[int, int]],
    updates: Sequence[Sequence[Update]],
    budget: float,
) -> dict[tuple[int, int], AppendResult]:
    """`SQLStore.append` alone, one call at a time, per (entries, documents) shape:
    calls for about `budget` seconds (5 at least), the first left out (it creates the
    documents' rows)."""
    store, cleanup = await backend.open()
    results: dict[tuple[int, int], AppendResult] = {}
    try:
        for entries, documents in shapes:
            prefix = f"append-{uuid.uuid4().hex[:8]}"
            durations: list[float] = []
            cpu = 0.0
            call = 0
            deadline = time.perf_counter() + budget
            while call < 6 or (time.perf_counter() < deadline and call < 1000):
                batch = [
                    Entry(
                        f"{prefix}-{index % documents}",
                        updates[index % len(updates)][call % len(updates[0])],
                        f"writer-{index}",
                    )
                    for index in range(entries)
                ]
                cpu_before, started = time.process_time(), time.perf_counter()
                await store.append(batch)
                if call:
                    durations.append(time.perf_counter() - started)
                    cpu += time.process_time() - cpu_before
                call += 1
            results[(entries, documents)] = AppendResult(
                statistics.median(durations), cpu / len(durations), len(durations)
            )
    finally:
        await cleanup()
    return results


# -- 2. and 3. a long history ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class History:
    updates: list[Update]
    expected: str
    edits: int
    replay_seconds: float


def read_history(path: Path, limit: int | None) -> History:
    """Replay the trace (its first `limit` transactions) with pycrdt, one transaction each."""
    trace = read_trace(path)
    assert trace.get("startContent", "") == "", "the trace must start from an empty text"
    txns = trace["txns"] if limit is None else trace["txns"][:limit]
    patches = [
        (int(position), int(deleted), str(inserted))
        for txn in txns
        for position, deleted, inserted in txn["patches"]
    ]
    # pycrdt indexes Text by UTF-8 bytes, the trace by code points: equal for ASCII only.
    assert trace["endContent"].isascii(), "endContent is not ASCII"
    assert all(inserted.isascii() for _, _, inserted in patches), "an insert is not ASCII"
    if limit is None or limit >= len(trace["txns"]):
        expected: str = trace["endContent"]
    else:
        chars: list[str] = []
        for position, deleted, inserted in patches:
            chars[position : position + deleted] = inserted
        expected = "".join(chars)

    started = time.perf_counter()
    doc: Doc[Any] = Doc()
    text = doc.get(TEXT, type=Text)
    updates: list[Update] = []

    def keep(event: TransactionEvent) -> None:
        updates.append(event.update)

    subscription = doc.observe(keep)
    for txn in txns:
        with doc.transaction():
            for position, deleted, inserted in txn["patches"]:
                if deleted:
                    del text[position : position + deleted]
                if inserted:
                    text.insert(position, inserted)
    doc.unobserve(subscription)
    replay_seconds = time.perf_counter() - started
    assert str(text) == expected, "the replayed text differs from the trace's content"
    assert len(updates) == len(txns), f"{len(updates)} updates for {len(txns)} transactions"
    return History(updates, expected, len(txns), replay_seconds)


@dataclass(slots=True)
class Case:
    """One SQLite file holding the history, and what it was built with."""

    key: str
    label: str
    path: Path
    snapshot_after: int | None
    store: SQLStore | None = None
    append_seconds: float = math.nan
    compact_seconds: float = math.nan
    file_bytes: int = 0
    snapshot_bytes: int = 0
    replayed_on_load: int = 0
    space: dict[str, int] = field(default_factory=dict)
    """Bytes of pages per table and index (SQLite's dbstat), "(free pages)" included."""
    load: list[float] = field(default_factory=list)
    rebuild: list[float] = field(default_factory=list)
    open: list[float] = field(default_factory=list)


HISTORY_DOC = "automerge-paper"


def history_config() -> EngineConfig:
    return EngineConfig(compact_after_updates=NEVER, compact_after_bytes=NEVER)


async def append_all(store: SQLStore, updates: Sequence[Update]) -> None:
    for start in range(0, len(updates), APPEND_BATCH):
        batch = updates[start : start + APPEND_BATCH]
        await store.append([Entry(HISTORY_DOC, update, "trace") for update in batch])


async def build_case(case: Case, history: History) -> None:
    """Write the history to a new SQLite file, with the case's snapshot."""
    store = case.store = await SQLStore.connect(sqlite_url(str(case.path)))
    head = (
        history.updates if case.snapshot_after is None else history.updates[: case.snapshot_after]
    )
    started = time.perf_counter()
    await append_all(store, head)
    case.append_seconds = time.perf_counter() - started
    if case.snapshot_after is not None:
        started = time.perf_counter()
        async with Engine(history_config(), store) as engine:
            seq = await engine.compact(HISTORY_DOC)
        case.compact_seconds = time.perf_counter() - started
        assert seq == case.snapshot_after, (seq, case.snapshot_after)
        await append_all(store, history.updates[case.snapshot_after :])
    await checkpoint(store)
    case.file_bytes = file_bytes(case.path)
    case.space = await space_by_object(store)
    stored = await store.load(HISTORY_DOC)
    case.snapshot_bytes = len(stored.snapshot) if stored.snapshot is not None else 0
    case.replayed_on_load = len(stored.updates)
    assert stored.last_seq == history.edits


async def measure_case(case: Case, expected: str) -> None:
    """One run: store.load, rebuild, and a cold open through a new Engine."""
    store = case.store
    assert store is not None
    started = time.perf_counter()
    stored = await store.load(HISTORY_DOC)
    loaded = time.perf_counter()
    doc = await anyio.to_thread.run_sync(rebuild, HISTORY_DOC, stored)
    rebuilt = time.perf_counter()
    assert str(doc.get(TEXT, type=Text)) == expected, f"{case.key}: rebuilt text differs"
    case.load.append(loaded - started)
    case.rebuild.append(rebuilt - loaded)
    del doc, stored

    async with Engine(history_config(), store) as engine:
        started = time.perf_counter()
        async with engine.room(HISTORY_DOC) as room:
            opened = time.perf_counter()
            text = str(room.doc.get(TEXT, type=Text))
        assert text == expected, f"{case.key}: the opened room's text differs"
    case.open.append(opened - started)


# -- the report ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    runs: int
    writers: int
    rooms: tuple[int, ...]
    duration: float
    warmup: float
    updates_per_writer: int
    append_budget: float
    backends: tuple[str, ...]
    postgres_url: str
    trace: Path
    edits: int | None
    tail: int
    skip_throughput: bool
    skip_history: bool
    output: Path | None
    quick: bool


def header(options: Options, argv: Sequence[str], load: tuple[str, str], notes: list[str]) -> str:
    commit = provenance.commit(
        ["collab_engine", "storage"], "plus uncommitted changes to collab_engine/ or storage/"
    )
    now = provenance.utc_now()
    command = provenance.command_line(argv)
    tmp = tempfile.gettempdir()
    lines = [
        "# Durable storage: group commit, loading a long history, bytes on disk",
        "",
        f"- command: `{command}`",
        f"- date: {now}",
        f"- machine: {provenance.machine()}; "
        f"1-minute load average {load[0]} before, {load[1]} after; temporary files in {tmp} "
        f"({filesystem_of(os.path.realpath(tmp))})",
        f"- Python {sys.version.split()[0]}, pycrdt {version('pycrdt')}, SQLAlchemy "
        f"{version('sqlalchemy')}, aiosqlite {version('aiosqlite')} (SQLite "
        f"{sqlite3.sqlite_version}), asyncpg {version('asyncpg')}, collab-engine commit {commit}",
        *(f"- {note}" for note in notes),
    ]
    return "\n".join(lines)


def throughput_table(
    options: Options, results: dict[tuple[str, int, str], list[ThroughputResult]]
) -> str:
    lines = [
        f"## 1. Durable updates/s: {options.writers} writers, each with one update in flight",
        "",
        f"Median of {options.runs} run(s); each run measures {options.duration:g} s after "
        f"{options.warmup:g} s of warm-up, on a fresh database; the three modes in the same run.",
        "",
        "| backend | rooms | mode | acked updates/s | commits in window | updates per commit "
        "| ms per commit | ack p50 (ms) | ack p99 (ms) | CPU (one core) "
        "| event loop on CPU / queued |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    speedups: list[str] = []
    for (backend, rooms, mode), runs in results.items():
        rate = median([r.updates_per_second for r in runs])
        lines.append(
            f"| {backend} | {rooms} | {mode} | {number(rate)} "
            f"| {number(median([float(r.commits) for r in runs]))} "
            f"| {number(median([r.updates_per_commit for r in runs]), 1)} "
            f"| {ms(median([r.commit_time for r in runs]))} "
            f"| {ms(median([r.p50 for r in runs]))} | {ms(median([r.p99 for r in runs]))} "
            f"| {pct(median([r.cpu_share for r in runs]))} "
            f"| {pct(median([r.loop_busy for r in runs]))} / "
            f"{pct(median([r.loop_queued for r in runs]))} |"
        )
        if mode in (GROUP, LINGER) and (backend, rooms, SINGLE) in results:
            single_runs = results[(backend, rooms, SINGLE)]
            single = median([r.updates_per_second for r in single_runs])
            per_run = [
                g.updates_per_second / s.updates_per_second
                for g, s in zip(runs, single_runs, strict=False)
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


def append_table(options: Options, appends: dict[tuple[str, int, int], list[AppendResult]]) -> str:
    lines = [
        "Reference: `SQLStore.append` alone (no engine), one call at a time, on a fresh "
        "database; the median call, median over the runs. A group commit above holds the "
        f"{options.writers} writers' updates over as many documents as there are rooms.",
        "",
        "| backend | entries per append | documents per append | ms per append "
        "| CPU ms per append (this process) | entries/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (backend, entries, documents), runs in appends.items():
        per_call = median([r.per_call for r in runs])
        lines.append(
            f"| {backend} | {entries} | {documents} | {ms(per_call)} "
            f"| {ms(median([r.cpu_per_call for r in runs]))} "
            f"| {number(entries / per_call) if per_call else 'n/a'} |"
        )
    return "\n".join(lines)


def history_tables(history: History, cases: Sequence[Case], runs: int) -> str:
    edits = history.edits
    raw = sum(len(update) for update in history.updates)
    per_thousand = 1000 / edits
    lines = [
        f"## 2. Opening a room with a long history: `{HISTORY_DOC}`, {edits:,} edits",
        "",
        f"Replay with pycrdt (one transaction per edit): {history.replay_seconds:.1f} s; "
        f"final text {len(history.expected):,} characters, equal to the trace's. "
        f"Median of {runs} run(s), in seconds; every open checked the text.",
        "",
        "| case | updates replayed on load | store.load() | rebuild (thread) "
        "| cold open `engine.room()` |",
        "|---|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {case.label} | {case.replayed_on_load:,} | {seconds(median(case.load))} "
        f"| {seconds(median(case.rebuild))} | {seconds(median(case.open))} |"
        for case in cases
    )
    log_only = next(c for c in cases if c.key == "a")
    lines += [
        "",
        f"Writing the history: {edits:,} updates appended in batches of {APPEND_BATCH:,} took "
        f"{log_only.append_seconds:.2f} s ({edits / log_only.append_seconds:,.0f} updates/s); "
        + "; ".join(
            f"`Engine.compact` for ({c.key}) {c.compact_seconds:.2f} s"
            for c in cases
            if not math.isnan(c.compact_seconds)
        )
        + ".",
        "",
        f"## 3. Bytes on disk for `{HISTORY_DOC}` (SQLite, after `wal_checkpoint(TRUNCATE)`)",
        "",
        "| what | bytes | bytes per 1,000 edits |",
        "|---|---:|---:|",
        f"| raw update bytes (sum of the {edits:,} updates) | {raw:,} "
        f"| {raw * per_thousand:,.0f} |",
    ]
    for case in cases:
        lines.append(
            f"| SQLite file, {case.label} | {case.file_bytes:,} "
            f"| {case.file_bytes * per_thousand:,.0f} |"
        )
    for case in cases:
        if case.snapshot_bytes:
            lines.append(
                f"| the snapshot alone, {case.label} | {case.snapshot_bytes:,} "
                f"| {case.snapshot_bytes * per_thousand:,.0f} |"
            )
    lines.append(
        f"| the final text ({len(history.expected):,} ASCII characters) "
        f"| {len(history.expected):,} | {len(history.expected) * per_thousand:,.0f} |"
    )
    with_snapshot = next(c for c in cases if c.key == "b")
    if with_snapshot.space:
        names = {
            "updates": "`updates` table (rowid B-tree: document, seq, data, author, created_at)",
            "sqlite_autoindex_updates_1": "`updates` primary key index (document, seq)",
            "snapshots": "`snapshots` table",
            "sqlite_autoindex_snapshots_1": "`snapshots` primary key index",
        }
        space = dict(with_snapshot.space)
        rows = [(label, space.pop(name, 0)) for name, label in names.items()]
        rows.append(("everything else (schema, `documents`, free pages)", sum(space.values())))
        lines += [
            "",
            f"Where the bytes of {with_snapshot.label} are (SQLite's `dbstat`, whole pages):",
            "",
            "| object | bytes | bytes per 1,000 edits |",
            "|---|---:|---:|",
            *(f"| {label} | {size:,} | {size * per_thousand:,.0f} |" for label, size in rows),
        ]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Durable updates/s (group commit vs one commit per update), load time "
        "of a long history, and bytes on disk per 1,000 edits.",
    )
    parser.add_argument("--runs", type=int, help="runs of each measurement (default 3)")
    parser.add_argument("--writers", type=int, help="concurrent writers (default 50)")
    parser.add_argument(
        "--rooms", type=int, nargs="+", help="layouts: rooms the writers are spread over "
        "(default 1, 10 and 50)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 3)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds first (default 1)")
    parser.add_argument(
        "--updates-per-writer", type=int,
        help="updates prepared per writer; enough for the fastest run (default 3000)",
    )  # fmt: skip
    parser.add_argument(
        "--append-seconds", type=float,
        help="seconds of calls per shape in the SQLStore.append reference (default 0.5)",
    )  # fmt: skip
    parser.add_argument(
        "--backends", nargs="+", choices=["sqlite", "postgresql"],
        default=["sqlite", "postgresql"],
        help="where part 1 runs (PostgreSQL is skipped when it does not answer)",
    )  # fmt: skip
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="PostgreSQL to use")
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="editing trace")
    parser.add_argument("--edits", type=int, help="use the trace's first N edits (default all)")
    parser.add_argument(
        "--tail", type=int, default=1000, help="updates after the snapshot in case (c)"
    )
    parser.add_argument("--skip-throughput", action="store_true", help="skip part 1")
    parser.add_argument("--skip-history", action="store_true", help="skip parts 2 and 3")
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: 1 run, 10 writers, 1 s windows, 20,000 edits of the trace",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path,
        help=f"Markdown file to write the results to (default {DEFAULT_OUTPUT.relative_to(REPO)}; "
        "with --quick, none)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value: Any, normal: Any, smoke: Any) -> Any:
        return value if value is not None else (smoke if quick else normal)

    options = Options(
        runs=pick(args.runs, 3, 1),
        writers=pick(args.writers, 50, 10),
        rooms=tuple(pick(args.rooms, [1, 10, 50], [1, 10])),
        duration=pick(args.duration, 3.0, 1.0),
        warmup=pick(args.warmup, 1.0, 0.3),
        updates_per_writer=pick(args.updates_per_writer, 3000, 1000),
        append_budget=pick(args.append_seconds, 0.5, 0.2),
        backends=tuple(dict.fromkeys(args.backends)),
        postgres_url=args.postgres_url,
        trace=args.trace,
        edits=pick(args.edits, None, 20_000),
        tail=args.tail,
        skip_throughput=args.skip_throughput,
        skip_history=args.skip_history,
        output=args.output if args.output or quick else DEFAULT_OUTPUT,
        quick=quick,
    )
    if (
        options.runs < 1
        or options.writers < 1
        or min(options.rooms) < 1
        or options.duration <= 0
        or options.warmup < 0
        or options.updates_per_writer < 1
        or options.tail < 1
        or (options.edits is not None and options.edits <= options.tail)
    ):
        parser.error("counts and durations must be positive, and --edits larger than --tail")
    if max(options.rooms) > options.writers:
        parser.error("more rooms than writers")
    return options


async def throughput_part(
    options: Options, directory: Path, notes: list[str], problems: list[str]
) -> tuple[
    dict[tuple[str, int, str], list[ThroughputResult]],
    dict[tuple[str, int, int], list[AppendResult]],
]:
    backends: list[Backend] = []
    for name in options.backends:
        if name == "sqlite":
            backends.append(sqlite_backend(directory))
        elif not postgres_answers():
            reason = "PostgreSQL skipped: nothing answers at 127.0.0.1:5432"
            say(reason)
            notes.append(reason)
        else:
            settings = await postgres_execute(
                options.postgres_url,
                "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
                " current_setting('fsync'), current_setting('wal_sync_method')",
            )
            server_version, synchronous_commit, fsync, wal_sync = settings[0]
            notes.append(
                f"PostgreSQL {server_version.split()[0]} at {options.postgres_url} "
                f"(synchronous_commit={synchronous_commit}, fsync={fsync}, "
                f"wal_sync_method={wal_sync}); each run in a fresh schema, dropped after it"
            )
            backends.append(postgres_backend(options.postgres_url))
    say(f"preparing {options.writers} x {options.updates_per_writer} updates ...")
    started = time.perf_counter()
    updates = prepare_updates(options.writers, options.updates_per_writer)
    sizes = [len(u) for seq in updates for u in seq]
    notes.append(
        f"part 1 updates: {len(sizes):,} prepared with pycrdt in "
        f"{time.perf_counter() - started:.1f} s, {min(sizes)}-{max(sizes)} bytes each "
        f"(median {statistics.median(sizes):g})"
    )
    results: dict[tuple[str, int, str], list[ThroughputResult]] = {}
    appends: dict[tuple[str, int, int], list[AppendResult]] = {}
    shapes = [(1, 1), *((options.writers, rooms) for rooms in options.rooms)]
    shapes = list(dict.fromkeys(shapes))
    for backend in backends:
        for entries, documents in shapes:
            appends[(backend.name, entries, documents)] = []
        for rooms in options.rooms:
            for mode in (SINGLE, GROUP, LINGER):
                results[(backend.name, rooms, mode)] = []
    for run in range(1, options.runs + 1):
        for backend in backends:
            shaped = await appends_once(backend, shapes, updates, options.append_budget)
            for (entries, documents), timing in shaped.items():
                appends[(backend.name, entries, documents)].append(timing)
                say(
                    f"run {run} {backend.name} append of {entries} over {documents} "
                    f"document(s): {ms(timing.per_call)} ms ({timing.calls} calls)"
                )
            for rooms in options.rooms:
                for mode, max_batch, linger in (
                    (SINGLE, 1, 0.0),
                    (GROUP, None, 0.0),
                    (LINGER, None, None),
                ):
                    result = await throughput_once(
                        backend,
                        max_batch=max_batch,
                        linger=linger,
                        writers=options.writers,
                        rooms=rooms,
                        updates=updates,
                        warmup=options.warmup,
                        duration=options.duration,
                    )
                    results[(backend.name, rooms, mode)].append(result)
                    problems.extend(
                        f"{backend.name}, {rooms} room(s), {mode}, run {run}: {p}"
                        for p in result.problems
                    )
                    say(
                        f"run {run} {backend.name} rooms={rooms} {mode}: "
                        f"{result.updates_per_second:,.0f} acked/s, "
                        f"{result.updates_per_commit:.1f} per commit, "
                        f"p50 {ms(result.p50)} ms, p99 {ms(result.p99)} ms, "
                        f"CPU {pct(result.cpu_share)}, loop on CPU {pct(result.loop_busy)} "
                        f"queued {pct(result.loop_queued)}"
                    )
    return results, appends


async def history_part(options: Options, directory: Path) -> tuple[History, list[Case]]:
    say(f"replaying {options.trace.name} ...")
    history = read_history(options.trace, options.edits)
    edits = history.edits
    cases = [
        Case("a", "(a) log only, no snapshot", directory / "log.db", None),
        Case("b", "(b) snapshot at the last seq", directory / "snapshot.db", edits),
        Case(
            "c",
            f"(c) snapshot + last {options.tail:,} updates",
            directory / "tail.db",
            edits - options.tail,
        ),
    ]
    try:
        for case in cases:
            say(f"writing {case.label} ...")
            await build_case(case, history)
        for run in range(1, options.runs + 1):
            for case in cases:
                await measure_case(case, history.expected)
                say(
                    f"run {run} {case.label}: load {case.load[-1]:.3f} s, rebuild "
                    f"{case.rebuild[-1]:.3f} s, open {case.open[-1]:.3f} s"
                )
    finally:
        for case in cases:
            if case.store is not None:
                await case.store.aclose()
    return history, cases


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    load_before = load_average()
    notes: list[str] = []
    problems: list[str] = []
    sections: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        directory = Path(tmp)
        if not options.skip_throughput:
            results, appends = await throughput_part(options, directory, notes, problems)
            if results:
                sections.append(throughput_table(options, results))
            if appends:
                sections.append(append_table(options, appends))
        if not options.skip_history:
            history, cases = await history_part(options, directory)
            sections.append(history_tables(history, cases, options.runs))
    report = [header(options, argv, (load_before, load_average()), notes), ""]
    for section in sections:
        report += [section, ""]
    if problems:
        report += ["**Problems:**", "", *(f"- {p}" for p in problems[:50]), ""]
    text = "\n".join(report)
    publish(text, options.output)
    return 1 if problems else 0


def main() -> None:
    options = parse_options(sys.argv[1:])
    sys.exit(anyio.run(benchmark, options, sys.argv))


if __name__ == "__main__":
    main()
