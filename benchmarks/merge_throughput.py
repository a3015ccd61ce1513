"""Replaying real editing traces: raw pycrdt, our engine's embedding API, and Yjs.

Usage:

    python benchmarks/merge_throughput.py            # every trace (about 16 minutes)
    python benchmarks/merge_throughput.py --quick    # 2 short traces, 1 run (about 50 s)
    python benchmarks/merge_throughput.py --traces sveltecomponent,clownschool --runs 3
    python benchmarks/merge_throughput.py --profile automerge-paper   # adds a cProfile

The traces are the editing histories in /work/shared/traces (josephg/editing-traces,
CC BY 4.0; see that folder's README): the sequential ones at its top level and the
concurrent ones in concurrent/.

1. Local editing (sequential traces)
------------------------------------
Every patch `[position, deleted, inserted]` of the trace, in order, each in its own
transaction on a `Text` root "text" (a patch that deletes and inserts is one
transaction of both), replayed by:

* pycrdt: one `Doc`, nothing observing it: the CRDT alone.
* pycrdt + observer: the same with a `Doc.observe` callback that keeps every
  transaction's `event.update`. This is the least any networked use pays (the
  update has to be encoded to be sent), and the updates it keeps feed part 2.
* engine (memory): `async with Engine() as engine: async with engine.room(name) as
  room:` and the patches applied through `room.doc`, default `EngineConfig`, no
  store. The loop yields to the event loop every 1,000 patches, as a real
  embedding program would. With nobody connected and no store, the room does not
  observe its document (since commit de26142), so this is pycrdt plus the loop.
* engine (memory, 1 peer): the same with one `Peer` joined to the room (what a
  connected client is to it): the room's observer encodes every transaction's
  update as a sync frame and queues it for the peer, whose outbox the loop drains
  every 256 patches (its writer task would; the frames are kept, and in the first
  run decoded and applied to a fresh document: one per patch, giving the text).
* engine (SQLite): the same with `Engine(store=SQLStore.connect(sqlite_url(tmp)))`
  on a new file each run, default `EngineConfig` (group commit, compaction every
  1,000 updates in the background); every 1,000 patches the loop also awaits
  `engine.journal.room_for_more()` (the journal's advice to in-process writers).
  The time runs until `await room.flush()` returns: every update is stored. In the
  first run the stored log is read back and rebuilt (untimed): it must hold one
  update per patch and give the same text.
* Yjs: Node and the npm `yjs` of tests/interop, `benchmarks/peers/yjs_replay.mjs
  local`: `doc.transact` per patch, a fresh process per run.

Trace positions are Unicode code points. pycrdt indexes `Text` by UTF-8 bytes and
Yjs by UTF-16 code units, so before anything is timed the script converts every
patch once per unit (the identity while the text before the position is ASCII; the
non-ASCII characters present are tracked, so the conversion costs no copy of the
text). Every replay's final text must equal the trace's `endContent`, or the
script stops at once with the difference and exits 1 (nothing is written).

2. The remote path
------------------
The updates kept by "pycrdt + observer" (one per patch), as a server or a peer
receives them:

* applied one by one (`Doc.apply_update`, each its own transaction) into a fresh
  pycrdt `Doc`, and with `Y.applyUpdate` into a fresh `Y.Doc` in Node;
* merged into one update, then applied to a fresh document. pycrdt's
  `merge_updates(*all)` grows about quadratically with the number of updates, so it
  is timed in two ways: as a tree of merges of at most 256 updates each (merge
  every 256, then the results 256 at a time, ...), and all at once, in the first
  run only, and only when a quadratic extrapolation from merging the first 8,000
  updates stays under `--merge-cap` seconds (60 by default; otherwise reported as
  skipped, with the estimate). Yjs `Y.mergeUpdates` the same two ways (it is about
  quadratic too). Each merged update's text is checked after applying it.

3. Concurrent traces
--------------------
`concurrent/*.json.gz`: every transaction has an agent and parents (earlier
transactions); its positions are relative to the document its agent saw, the
union of its parents. One replica per agent (pycrdt `Doc(client_id=agent + 1)`,
Yjs `doc.clientID = agent + 1`). Before an agent's transaction, its replica
applies, one `apply_update` each, in trace order, the updates of the transactions
in the parents' history that it does not hold yet (the script checks beforehand
that a replica never holds anything outside that history, so positions are
exact); then the transaction's patches run in one transaction, whose update
(`Doc.observe` / the `update` event) is kept for the other replicas. Time to
converge: afterwards every replica applies the updates it still misses; then
every replica's text must equal `endContent`. Reported: patches/s of the replay
(including the merges it needs), and the convergence time.

Every figure is the median over the runs (5 per trace, 3 for traces over 100,000
patches, unless `--runs`), with the implementations' order rotated from run to
run; they are measured side by side in one run of the script. Wall and CPU time
(`time.process_time`, Node's `process.cpuUsage`) are both kept. Writes
results/merge_throughput.md, three PNG plots beside it (matplotlib) and the raw
times as results/raw/merge_throughput.json; with `--quick`, prints only, unless
`--output` is given.
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import io
import json
import math
import pstats
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from harness import plots, provenance
from harness.provenance import load_average, node_version, version, yjs_version
from harness.report import publish, say
from harness.stats import median
from harness.traces import TRACES, read_trace
from harness.yjs import run_replay, write_updates
from pycrdt import Doc, Text, TransactionEvent, merge_updates

from collab_engine import Engine
from collab_engine.peer import Peer
from collab_engine.protocol import SyncUpdate, decode
from collab_engine.store import rebuild
from storage.sql import SQLStore, sqlite_url

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_OUTPUT = RESULTS / "merge_throughput.md"

TEXT = "text"
YIELD_EVERY = 1_000
DRAIN_EVERY = 256
"""The one peer's outbox is drained this often (its writer would; the outbox holds 1,024)."""
MERGE_FAN_IN = 256
MERGE_SAMPLE = 8_000
LONG_TRACE = 100_000
QUICK_TRACES = ("sveltecomponent", "clownschool_flat", "clownschool")

Patch = tuple[int, int, str]
Timing = tuple[float, float]
"""Wall-clock and CPU seconds (this process's, all its threads; Node's for Yjs)."""

# Sequential implementations, in the tables' order.
PYCRDT, OBSERVED, ENGINE, ENGINE_PEER, ENGINE_SQL, YJS = (
    "pycrdt",
    "pycrdt + observer",
    "engine (memory)",
    "engine (memory, 1 peer)",
    "engine (SQLite)",
    "Yjs",
)
IMPLEMENTATIONS = (PYCRDT, OBSERVED, ENGINE, ENGINE_PEER, ENGINE_SQL, YJS)


class Mismatch(Exception):
    """A replay's final text is not the trace's `endContent`."""


def check_text(what: str, actual: str, expected: str) -> None:
    if actual == expected:
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(actual, expected, strict=False)) if a != b),
        min(len(actual), len(expected)),
    )
    raise Mismatch(
        f"{what}: the final text differs from endContent ({len(actual):,} characters "
        f"against {len(expected):,}; first difference at {at:,}: "
        f"{actual[at : at + 30]!r} instead of {expected[at : at + 30]!r})"
    )


# -- traces and position units ---------------------------------------------------------


def utf8_extra(char: str) -> int:
    return len(char.encode()) - 1


def utf16_extra(char: str) -> int:
    return 1 if ord(char) > 0xFFFF else 0


class Units:
    """Converts code-point positions in a text that changes to UTF-8 and UTF-16
    offsets, tracking only the text's non-ASCII characters (their indexes, kept
    sorted, and their extra bytes / code units), so a patch costs no copy of the text."""

    def __init__(self) -> None:
        self.index: list[int] = []
        self.extra8: list[int] = []
        self.extra16: list[int] = []

    def convert(self, position: int, deleted: int, inserted: str) -> tuple[Patch, Patch]:
        start = bisect.bisect_left(self.index, position)
        end = bisect.bisect_left(self.index, position + deleted)
        before8, before16 = sum(self.extra8[:start]), sum(self.extra16[:start])
        gone8, gone16 = sum(self.extra8[start:end]), sum(self.extra16[start:end])
        shift = len(inserted) - deleted
        new = [(position + i, c) for i, c in enumerate(inserted) if not c.isascii()]
        self.index[start:] = [i for i, _ in new] + [i + shift for i in self.index[end:]]
        self.extra8[start:] = [utf8_extra(c) for _, c in new] + self.extra8[end:]
        self.extra16[start:] = [utf16_extra(c) for _, c in new] + self.extra16[end:]
        return (
            (position + before8, deleted + gone8, inserted),
            (position + before16, deleted + gone16, inserted),
        )


@dataclass(slots=True)
class Sequential:
    name: str
    txns: int
    patches: list[Patch]
    """In code points, as the trace has them."""
    utf8: list[Patch]
    utf16: list[Patch]
    expected: str
    non_ascii: int
    """Patches that insert non-ASCII text."""
    updates: list[bytes] = field(default_factory=list)


def load_sequential(path: Path) -> Sequential:
    trace = read_trace(path)
    if trace.get("startContent", "") != "":
        raise ValueError(f"{path.name}: the trace does not start from an empty text")
    patches = [(int(p), int(d), str(s)) for txn in trace["txns"] for p, d, s in txn["patches"]]
    non_ascii = sum(1 for _, _, s in patches if not s.isascii())
    if non_ascii:
        units = Units()
        pairs = [units.convert(*patch) for patch in patches]
        utf8, utf16 = [a for a, _ in pairs], [b for _, b in pairs]
    else:
        utf8 = utf16 = patches
    return Sequential(
        name=path.name.removesuffix(".json.gz"),
        txns=len(trace["txns"]),
        patches=patches,
        utf8=utf8,
        utf16=utf16,
        expected=trace["endContent"],
        non_ascii=non_ascii,
    )


# -- part 1: local editing -------------------------------------------------------------


def apply_patch(text: Text, patch: Patch) -> None:
    position, deleted, inserted = patch
    if deleted:
        del text[position : position + deleted]
    if inserted:
        text.insert(position, inserted)


def replay_pycrdt(trace: Sequential, observe: bool) -> Timing:
    doc: Doc[Any] = Doc()
    text = doc.get(TEXT, type=Text)
    updates: list[bytes] = []
    if observe:

        def keep(event: TransactionEvent) -> None:
            updates.append(event.update)

        doc.observe(keep)
    transaction = doc.transaction
    cpu = time.process_time()
    started = time.perf_counter()
    for position, deleted, inserted in trace.utf8:
        with transaction():
            if deleted:
                del text[position : position + deleted]
            if inserted:
                text.insert(position, inserted)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    check_text(f"{trace.name}, {OBSERVED if observe else PYCRDT}", str(text), trace.expected)
    if observe:
        if len(updates) != len(trace.utf8):
            raise Mismatch(f"{trace.name}: {len(updates)} updates for {len(trace.utf8)} patches")
        if not trace.updates:
            # The first run's: every run of part 2, pycrdt's and Yjs's, applies these
            # same bytes (each new `Doc` has its own random client id, and so
            # updates of slightly different sizes).
            trace.updates = updates
    return elapsed, cpu


async def replay_engine(
    trace: Sequential, database: Path | None, verify: bool, with_peer: bool = False
) -> Timing:
    """The engine's embedding API; with `with_peer`, one `Peer` joined to the room
    (its outbox drained every `DRAIN_EVERY` patches, the frames kept and, when
    `verify`, checked afterwards: one update frame per patch, giving the text)."""
    store = None if database is None else await SQLStore.connect(sqlite_url(str(database)))
    label = ENGINE_PEER if with_peer else ENGINE if database is None else ENGINE_SQL
    try:
        async with Engine(store=store) as engine:
            async with engine.room(trace.name) as room:
                peer = Peer(outbox_size=engine.config.outbox_size) if with_peer else None
                if peer is not None:
                    room.join(peer)
                    peer.drain()  # sync step 1 and awareness: not part of the replay
                frames: list[bytes] = []
                doc = room.doc
                text = doc.get(TEXT, type=Text)
                transaction = doc.transaction
                journal = engine.journal
                cpu = time.process_time()
                started = time.perf_counter()
                for count, (position, deleted, inserted) in enumerate(trace.utf8, 1):
                    with transaction():
                        if deleted:
                            del text[position : position + deleted]
                        if inserted:
                            text.insert(position, inserted)
                    if peer is not None and count % DRAIN_EVERY == 0:
                        frames += peer.drain()
                    if count % YIELD_EVERY == 0:
                        await anyio.lowlevel.checkpoint()
                        if journal is not None:
                            await journal.room_for_more()
                if peer is not None:
                    frames += peer.drain()
                await room.flush()
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu
                check_text(f"{trace.name}, {label}", str(text), trace.expected)
                if peer is not None:
                    if peer.closed:
                        raise Mismatch(f"{trace.name}, {label}: the peer was closed")
                    room.leave(peer)
                if peer is not None and verify:
                    check_frames(trace, label, frames)
        if store is not None and verify:
            stored = await store.load(trace.name)
            if stored.snapshot is None and len(stored.updates) != len(trace.utf8):
                raise Mismatch(
                    f"{trace.name}, {label}: {len(stored.updates)} stored updates for "
                    f"{len(trace.utf8)} patches"
                )
            if stored.last_seq != len(trace.utf8):
                raise Mismatch(
                    f"{trace.name}, {label}: the last stored seq is {stored.last_seq}, "
                    f"expected {len(trace.utf8)}"
                )
            rebuilt = await anyio.to_thread.run_sync(rebuild, trace.name, stored)
            check_text(
                f"{trace.name}, {label} (stored, rebuilt)",
                str(rebuilt.get(TEXT, type=Text)),
                trace.expected,
            )
    finally:
        if store is not None:
            await store.aclose()
    return elapsed, cpu


def check_frames(trace: Sequential, label: str, frames: Sequence[bytes]) -> None:
    """The frames a peer got: one sync update per patch, which give the text."""
    received: Doc[Any] = Doc()
    updates = 0
    for frame in frames:
        message = decode(frame)
        if isinstance(message, SyncUpdate):
            updates += 1
            received.apply_update(message.update)
    if updates != len(trace.utf8):
        raise Mismatch(f"{trace.name}, {label}: {updates} update frames for {len(trace.utf8)}")
    check_text(
        f"{trace.name}, {label} (what the peer received)",
        str(received.get(TEXT, type=Text)),
        trace.expected,
    )


def replay_yjs(trace: Sequential, patches_file: Path) -> Timing:
    answer = run_replay("local", patches_file)
    if answer["patches"] != len(trace.utf16):
        raise Mismatch(f"{trace.name}, Yjs: {answer['patches']} patches replayed")
    check_text(f"{trace.name}, Yjs", answer["text"], trace.expected)
    return float(answer["seconds"]), float(answer["cpu_seconds"])


# -- part 2: the remote path ------------------------------------------------------------


def text_of_update(update: bytes) -> str:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return str(doc.get(TEXT, type=Text))


def tree_merge(updates: Sequence[bytes]) -> bytes:
    level = list(updates)
    while len(level) > 1:
        level = [
            merge_updates(*level[i : i + MERGE_FAN_IN]) for i in range(0, len(level), MERGE_FAN_IN)
        ]
    return level[0]


@dataclass(slots=True)
class Remote:
    times: dict[str, list[float]] = field(default_factory=dict)
    merged_bytes: int = 0
    yjs_merged_bytes: int = 0
    merge_all_estimate: float = math.nan
    yjs_merge_all_estimate: float = math.nan

    def record(self, what: str, value: float) -> None:
        self.times.setdefault(what, []).append(value)


def estimate_merge_all(updates: Sequence[bytes]) -> float:
    """Seconds `merge_updates(*updates)` would take, extrapolated quadratically from
    merging the first `MERGE_SAMPLE` of them (the time itself when there are fewer)."""
    sample = updates[:MERGE_SAMPLE]
    started = time.perf_counter()
    merge_updates(*sample)
    elapsed = time.perf_counter() - started
    return elapsed * (len(updates) / len(sample)) ** 2


def measure_remote(
    trace: Sequential, remote: Remote, updates_file: Path | None, cap: float, run: int
) -> None:
    """One run of the remote path; merging everything at once only in the first run."""
    updates = trace.updates
    doc: Doc[Any] = Doc()
    started = time.perf_counter()
    for update in updates:
        doc.apply_update(update)
    remote.record("pycrdt apply", time.perf_counter() - started)
    check_text(f"{trace.name}, pycrdt applying the updates", str(doc.get(TEXT, type=Text)),
               trace.expected)  # fmt: skip

    started = time.perf_counter()
    merged = tree_merge(updates)
    remote.record("pycrdt tree merge", time.perf_counter() - started)
    remote.merged_bytes = len(merged)
    doc = Doc()
    started = time.perf_counter()
    doc.apply_update(merged)
    remote.record("pycrdt apply merged", time.perf_counter() - started)
    check_text(f"{trace.name}, pycrdt tree-merged update", str(doc.get(TEXT, type=Text)),
               trace.expected)  # fmt: skip

    if run == 1:
        remote.merge_all_estimate = estimate_merge_all(updates)
        if remote.merge_all_estimate <= cap:
            started = time.perf_counter()
            merged = merge_updates(*updates)
            remote.record("pycrdt merge all", time.perf_counter() - started)
            check_text(f"{trace.name}, pycrdt merge_updates(*all)", text_of_update(merged),
                       trace.expected)  # fmt: skip

    if updates_file is not None:
        options = {"fanIn": MERGE_FAN_IN, "sample": MERGE_SAMPLE, "cap": cap, "all": run == 1}
        answer = run_replay("remote", updates_file, json.dumps(options))
        check_text(f"{trace.name}, Yjs applying the updates", answer["text"], trace.expected)
        check_text(f"{trace.name}, Yjs tree-merged update", answer["merged_text"],
                   trace.expected)  # fmt: skip
        remote.record("Yjs apply", float(answer["apply_seconds"]))
        remote.record("Yjs tree merge", float(answer["tree_merge_seconds"]))
        remote.record("Yjs apply merged", float(answer["apply_merged_seconds"]))
        remote.yjs_merged_bytes = int(answer["merged_bytes"])
        if run == 1:
            remote.yjs_merge_all_estimate = float(answer["merge_all_estimate"])
            if "merge_all_seconds" in answer:
                check_text(f"{trace.name}, Yjs mergeUpdates(all)", answer["merge_all_text"],
                           trace.expected)  # fmt: skip
                remote.record("Yjs merge all", float(answer["merge_all_seconds"]))


# -- part 3: concurrent traces -----------------------------------------------------------


@dataclass(slots=True)
class Step:
    agent: int
    deliver: list[int]
    """Transactions (indexes) the agent's replica applies before this one."""
    patches: list[Patch]
    """In code points."""
    utf8: list[Patch] = field(default_factory=list)
    utf16: list[Patch] = field(default_factory=list)


@dataclass(slots=True)
class Concurrent:
    name: str
    agents: int
    steps: list[Step]
    final: list[list[int]]
    """Per agent, what its replica misses after the replay."""
    expected: str
    patches: int
    merges: int
    """Transactions preceded by at least one delivery."""
    delivered: int
    non_ascii: int


def load_concurrent(path: Path) -> Concurrent:
    """Read a concurrent trace and work out, per transaction, what its agent's replica
    must receive first; checks that replicas never hold more than a transaction's
    parents (each agent's transactions form a chain)."""
    trace = read_trace(path)
    agents = int(trace["numAgents"])
    txns = trace["txns"]
    # The history of a transaction, as how many of each agent's transactions it holds.
    clocks: list[list[int]] = []
    by_agent: list[list[int]] = [[] for _ in range(agents)]
    held = [[0] * agents for _ in range(agents)]  # each replica's clock
    steps: list[Step] = []
    for index, txn in enumerate(txns):
        agent = int(txn["agent"])
        need = [0] * agents
        for parent in txn["parents"]:
            if not 0 <= parent < index:
                raise ValueError(f"{path.name}: transaction {index} has parent {parent}")
            need = [max(a, b) for a, b in zip(need, clocks[parent], strict=True)]
        if need[agent] != len(by_agent[agent]) or any(
            h > n for h, n in zip(held[agent], need, strict=True)
        ):
            raise ValueError(
                f"{path.name}: transaction {index} of agent {agent} does not descend from "
                "everything its replica holds; this replay cannot place its positions"
            )
        missing = sorted(
            i for other in range(agents) for i in by_agent[other][held[agent][other] : need[other]]
        )
        by_agent[agent].append(index)
        need[agent] += 1
        clocks.append(need)
        held[agent] = list(need)
        patches = [(int(p), int(d), str(s)) for p, d, s in txn["patches"]]
        steps.append(Step(agent, missing, patches))
    final = [
        sorted(i for other in range(agents) for i in by_agent[other][held[agent][other] :])
        for agent in range(agents)
    ]
    return Concurrent(
        name=path.name.removesuffix(".json.gz"),
        agents=agents,
        steps=steps,
        final=final,
        expected=trace["endContent"],
        patches=sum(len(step.patches) for step in steps),
        merges=sum(1 for step in steps if step.deliver),
        delivered=sum(len(step.deliver) for step in steps),
        non_ascii=sum(1 for step in steps for _, _, s in step.patches if not s.isascii()),
    )


def unit_offsets(text: str, position: int, deleted: int) -> tuple[Patch, Patch]:
    prefix, gone = text[:position], text[position : position + deleted]

    def u16(s: str) -> int:
        return len(s.encode("utf-16-le", "surrogatepass")) // 2

    return (len(prefix.encode()), len(gone.encode()), ""), (u16(prefix), u16(gone), "")


def prepare_concurrent(trace: Concurrent) -> None:
    """Fill in every step's UTF-8 and UTF-16 patches. The identity for an ASCII trace;
    otherwise a pycrdt replay (untimed) reads each replica's text before each patch."""
    if not trace.non_ascii:
        for step in trace.steps:
            step.utf8 = step.utf16 = step.patches
        return

    def convert(text: Text, step: Step) -> None:
        current = str(text)
        for position, deleted, inserted in step.patches:
            (p8, d8, _), (p16, d16, _) = unit_offsets(current, position, deleted)
            step.utf8.append((p8, d8, inserted))
            step.utf16.append((p16, d16, inserted))
            current = current[:position] + inserted + current[position + deleted :]
            apply_patch(text, (p8, d8, inserted))

    replay_concurrent(trace, convert)


def replay_concurrent(
    trace: Concurrent, edit: Callable[[Text, Step], None] | None = None
) -> tuple[float, float]:
    """pycrdt: one replica per agent; returns (replay seconds, convergence seconds)."""
    docs: list[Doc[Any]] = [Doc(client_id=agent + 1) for agent in range(trace.agents)]
    texts = [doc.get(TEXT, type=Text) for doc in docs]
    last: list[bytes | None] = [None]

    def keep(event: TransactionEvent) -> None:
        last[0] = event.update

    for doc in docs:
        doc.observe(keep)
    updates: list[bytes | None] = []
    started = time.perf_counter()
    for step in trace.steps:
        doc = docs[step.agent]
        for index in step.deliver:
            update = updates[index]
            if update is not None:
                doc.apply_update(update)
        last[0] = None
        text = texts[step.agent]
        with doc.transaction():
            if edit is None:
                for position, deleted, inserted in step.utf8:
                    if deleted:
                        del text[position : position + deleted]
                    if inserted:
                        text.insert(position, inserted)
            else:
                edit(text, step)
        updates.append(last[0])
    replayed = time.perf_counter() - started
    started = time.perf_counter()
    for agent, missing in enumerate(trace.final):
        for index in missing:
            update = updates[index]
            if update is not None:
                docs[agent].apply_update(update)
    converged = time.perf_counter() - started
    for agent, text in enumerate(texts):
        check_text(f"{trace.name}, pycrdt replica of agent {agent}", str(text), trace.expected)
    return replayed, converged


def write_schedule(trace: Concurrent, path: Path) -> None:
    path.write_text(
        json.dumps(
            {
                "clientIds": [agent + 1 for agent in range(trace.agents)],
                "steps": [
                    {"agent": s.agent, "deliver": s.deliver, "patches": s.utf16}
                    for s in trace.steps
                ],
                "final": trace.final,
            }
        )
    )


def replay_concurrent_yjs(trace: Concurrent, schedule: Path) -> tuple[float, float]:
    answer = run_replay("concurrent", schedule)
    for agent, text in enumerate(answer["texts"]):
        check_text(f"{trace.name}, Yjs replica of agent {agent}", text, trace.expected)
    return float(answer["replay_seconds"]), float(answer["converge_seconds"])


# -- profile -----------------------------------------------------------------------------


def pycrdt_file() -> str:
    import pycrdt

    return str(pycrdt.__file__)


def profile_engine(trace: Sequential) -> str:
    """cProfile of raw pycrdt and of the engine (memory) replaying `trace`."""
    sections = []
    targets: list[tuple[str, Callable[[], Timing]]] = [
        (PYCRDT, lambda: replay_pycrdt(trace, observe=False)),
        (OBSERVED, lambda: replay_pycrdt(trace, observe=True)),
        (ENGINE, lambda: anyio.run(replay_engine, trace, None, False)),
        (ENGINE_PEER, lambda: anyio.run(replay_engine, trace, None, False, True)),
    ]
    for label, target in targets:
        profiler = cProfile.Profile()
        profiler.enable()
        target()
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(14)
        if label in (ENGINE, ENGINE_PEER):
            # Everything the engine itself runs, by cumulative time.
            stats.sort_stats("cumulative").print_stats(r"collab_engine", 12)
        site = str(Path(pycrdt_file()).parent.parent) + "/"
        lines = [
            line.replace(site, "").replace(str(REPO) + "/", "")
            for line in out.getvalue().splitlines()
            if line.strip() and not line.startswith(("   Ordered by", "   List reduced"))
        ]
        sections += [f"### {label}", "", "```", *lines, "```", ""]
    return "\n".join(sections)


# -- the report ---------------------------------------------------------------------------


def rate(count: int, seconds: float) -> str:
    if math.isnan(seconds) or seconds <= 0:
        return "n/a"
    return f"{count / seconds:,.0f}"


def secs(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"{median(values):.3f}"


def spread(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"{median(values):.3f} ({min(values):.3f}–{max(values):.3f}, {len(values)})"


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> str:
    if not numerator or not denominator:
        return "n/a"
    return f"{median(numerator) / median(denominator):.2f}"


@dataclass(slots=True)
class Measured:
    trace: Sequential
    runs: int
    times: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    remote: Remote = field(default_factory=Remote)

    def record(self, what: str, timing: Timing) -> None:
        self.times.setdefault(what, []).append(timing[0])
        self.cpu.setdefault(what, []).append(timing[1])


@dataclass(slots=True)
class MeasuredConcurrent:
    trace: Concurrent
    runs: int
    times: dict[str, list[float]] = field(default_factory=dict)

    def record(self, what: str, value: float) -> None:
        self.times.setdefault(what, []).append(value)


def per_run(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    return [a / b for a, b in zip(numerator, denominator, strict=False) if b > 0]


def local_tables(measured: Sequence[Measured]) -> list[str]:
    ratios = (
        ("engine / pycrdt", ENGINE, PYCRDT),
        ("engine, 1 peer / pycrdt", ENGINE_PEER, PYCRDT),
        ("engine, 1 peer / pycrdt + observer", ENGINE_PEER, OBSERVED),
        ("engine (SQLite) / pycrdt", ENGINE_SQL, PYCRDT),
        ("pycrdt / Yjs", PYCRDT, YJS),
    )
    lines = [
        "## 1. Local editing: patches/s (median)",
        "",
        "Each patch its own transaction. Ratios are of median times: engine / pycrdt "
        "1.10 means the engine takes 10 % longer than raw pycrdt (goal: at most 1.10); "
        "pycrdt / Yjs above 1 means pycrdt is slower than Yjs.",
        "",
        "| trace | patches | "
        + " | ".join(IMPLEMENTATIONS)
        + " | "
        + " | ".join(label for label, _, _ in ratios)
        + " |",
        "|---|---:|" + "---:|" * (len(IMPLEMENTATIONS) + len(ratios)),
    ]
    for m in measured:
        n = len(m.trace.patches)
        t = m.times
        lines.append(
            f"| {m.trace.name} | {n:,} | "
            + " | ".join(rate(n, median(t.get(k, []))) for k in IMPLEMENTATIONS)
            + " | "
            + " | ".join(ratio(t.get(a, []), t.get(b, [])) for _, a, b in ratios)
            + " |"
        )
    lines += [
        "",
        "The same ratios in CPU time (`time.process_time` of this process, all threads; "
        "Node's `process.cpuUsage` for Yjs), less sensitive to the other jobs on the "
        "machine than wall time.",
        "",
        "| trace | " + " | ".join(f"CPU: {label}" for label, _, _ in ratios) + " |",
        "|---|" + "---:|" * len(ratios),
    ]
    for m in measured:
        c = m.cpu
        lines.append(
            f"| {m.trace.name} | "
            + " | ".join(ratio(c.get(a, []), c.get(b, [])) for _, a, b in ratios)
            + " |"
        )
    per_run_ratios = (
        ("engine / pycrdt", ENGINE),
        ("engine, 1 peer / pycrdt", ENGINE_PEER),
        ("pycrdt + observer / pycrdt", OBSERVED),
    )
    lines += [
        "",
        "Per run (the implementations of one run measured one after the other), wall "
        "time: each run's ratio, then their median.",
        "",
        "| trace | "
        + " | ".join(f"{label}, each run | median" for label, _ in per_run_ratios)
        + " |",
        "|---|" + "---|---:|" * len(per_run_ratios),
    ]
    for m in measured:
        cells = []
        for _, key in per_run_ratios:
            values = per_run(m.times.get(key, []), m.times.get(PYCRDT, []))
            cells += [
                " ".join(f"{v:.2f}" for v in values) or "n/a",
                f"{median(values):.2f}" if values else "n/a",
            ]
        lines.append(f"| {m.trace.name} | " + " | ".join(cells) + " |")
    for title, field_name in (
        ("Seconds per replay, wall", "times"),
        ("CPU seconds per replay", "cpu"),
    ):
        lines += [
            "",
            f"{title}: median (min–max, runs).",
            "",
            "| trace | " + " | ".join(IMPLEMENTATIONS) + " |",
            "|---|" + "---:|" * len(IMPLEMENTATIONS),
        ]
        for m in measured:
            seconds: dict[str, list[float]] = getattr(m, field_name)
            lines.append(
                f"| {m.trace.name} | "
                + " | ".join(spread(seconds.get(k, [])) for k in IMPLEMENTATIONS)
                + " |"
            )
    lines += [
        "",
        "| trace | trace transactions | patches | patches inserting non-ASCII text "
        "| final characters |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in measured:
        tr = m.trace
        lines.append(
            f"| {tr.name} | {tr.txns:,} | {len(tr.patches):,} | {tr.non_ascii} "
            f"| {len(tr.expected):,} |"
        )
    return lines


def merge_all_cell(times: Sequence[float], estimate: float, cap: float) -> str:
    if times:
        return f"{median(times):.3f}"
    if math.isnan(estimate):
        return "n/a"
    return f"skipped (est. {estimate:,.0f} > {cap:.0f})"


REMOTE_KEYS = (
    "pycrdt apply",
    "Yjs apply",
    "pycrdt tree merge",
    "pycrdt apply merged",
    "Yjs tree merge",
    "Yjs apply merged",
    "pycrdt merge all",
    "Yjs merge all",
)


def remote_tables(measured: Sequence[Measured], cap: float) -> list[str]:
    lines = [
        "## 2. The remote path: the same updates applied to a fresh document",
        "",
        "The updates are those pycrdt emitted in part 1 (one per patch). Updates/s of "
        "applying them one by one (median); then merging them into one update and "
        f"applying that, in seconds (median): as a tree of merges of at most "
        f"{MERGE_FAN_IN} updates each (pycrdt `merge_updates`, Yjs `Y.mergeUpdates`), "
        "and all at once, in the first run only, and only where a quadratic "
        f"extrapolation from merging the first {MERGE_SAMPLE:,} updates stays under "
        f"{cap:.0f} s (both libraries' merge grows about quadratically with the number of "
        "updates at once).",
        "",
        "| trace | updates | bytes | pycrdt apply, updates/s | Yjs apply, updates/s "
        "| pycrdt / Yjs (apply) | pycrdt tree merge + apply merged (s) "
        "| Yjs tree merge + apply merged (s) | merged bytes (pycrdt / Yjs) "
        "| pycrdt merge all at once (s) | Yjs merge all at once (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measured:
        r = m.remote
        t = r.times
        n = len(m.trace.updates)
        lines.append(
            f"| {m.trace.name} | {n:,} | {sum(len(u) for u in m.trace.updates):,} "
            f"| {rate(n, median(t.get('pycrdt apply', [])))} "
            f"| {rate(n, median(t.get('Yjs apply', [])))} "
            f"| {ratio(t.get('pycrdt apply', []), t.get('Yjs apply', []))} "
            f"| {secs(t.get('pycrdt tree merge', []))} + "
            f"{secs(t.get('pycrdt apply merged', []))} "
            f"| {secs(t.get('Yjs tree merge', []))} + {secs(t.get('Yjs apply merged', []))} "
            f"| {r.merged_bytes:,} / {r.yjs_merged_bytes:,} "
            f"| {merge_all_cell(t.get('pycrdt merge all', []), r.merge_all_estimate, cap)} "
            f"| {merge_all_cell(t.get('Yjs merge all', []), r.yjs_merge_all_estimate, cap)} |"
        )
    lines += [
        "",
        "Seconds: median (min–max, runs).",
        "",
        "| trace | " + " | ".join(REMOTE_KEYS) + " |",
        "|---|" + "---:|" * len(REMOTE_KEYS),
    ]
    for m in measured:
        t = m.remote.times
        lines.append(
            f"| {m.trace.name} | " + " | ".join(spread(t.get(k, [])) for k in REMOTE_KEYS) + " |"
        )
    return lines


def concurrent_tables(measured: Sequence[MeasuredConcurrent]) -> list[str]:
    lines = [
        "## 3. Concurrent traces: one replica per agent",
        "",
        "Patches/s of the replay (the deliveries it needs included), and the time for "
        "every replica to take what it still misses at the end (converge), median.",
        "",
        "| trace | agents | transactions | patches | merge points | updates delivered "
        "| pycrdt, patches/s | Yjs, patches/s | pycrdt / Yjs | pycrdt converge (s) "
        "| Yjs converge (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measured:
        tr, t = m.trace, m.times
        lines.append(
            f"| {tr.name} | {tr.agents} | {len(tr.steps):,} | {tr.patches:,} | {tr.merges:,} "
            f"| {tr.delivered:,} | {rate(tr.patches, median(t.get('pycrdt replay', [])))} "
            f"| {rate(tr.patches, median(t.get('Yjs replay', [])))} "
            f"| {ratio(t.get('pycrdt replay', []), t.get('Yjs replay', []))} "
            f"| {secs(t.get('pycrdt converge', []))} | {secs(t.get('Yjs converge', []))} |"
        )
    lines += [
        "",
        "Seconds: median (min–max, runs).",
        "",
        "| trace | pycrdt replay | pycrdt converge | Yjs replay | Yjs converge |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in measured:
        t = m.times
        lines.append(
            f"| {m.trace.name} | "
            + " | ".join(
                spread(t.get(k, []))
                for k in ("pycrdt replay", "pycrdt converge", "Yjs replay", "Yjs converge")
            )
            + " |"
        )
    return lines


def plot(
    measured: Sequence[Measured], concurrent: Sequence[MeasuredConcurrent], stem: Path
) -> list[Path]:
    written: list[Path] = []

    def bars(
        groups: Sequence[str],
        series: dict[str, list[float]],
        title: str,
        ylabel: str,
        path: Path,
        log: bool = False,
    ) -> None:
        written.append(plots.bars(groups, series, title, ylabel, path, log))

    if measured:
        names = [m.trace.name for m in measured]

        def ops(m: Measured, key: str) -> float:
            seconds = median(m.times.get(key, []))
            return len(m.trace.patches) / seconds if seconds > 0 else math.nan

        bars(
            names,
            {k: [ops(m, k) for m in measured] for k in IMPLEMENTATIONS},
            "Local editing: patches/s (median), one transaction per patch",
            "patches / s",
            stem.with_name(stem.name + "_local.png"),
        )

        def upd(m: Measured, key: str) -> float:
            seconds = median(m.remote.times.get(key, []))
            return len(m.trace.updates) / seconds if seconds > 0 else math.nan

        def merged(m: Measured, who: str) -> float:
            seconds = median(m.remote.times.get(f"{who} tree merge", [])) + median(
                m.remote.times.get(f"{who} apply merged", [])
            )
            return len(m.trace.updates) / seconds if seconds > 0 else math.nan

        bars(
            names,
            {
                "pycrdt apply one by one": [upd(m, "pycrdt apply") for m in measured],
                "Yjs apply one by one": [upd(m, "Yjs apply") for m in measured],
                "pycrdt tree merge + apply merged": [merged(m, "pycrdt") for m in measured],
                "Yjs tree merge + apply merged": [merged(m, "Yjs") for m in measured],
            },
            "Remote path: updates/s (median)",
            "updates / s (log scale)",
            stem.with_name(stem.name + "_remote.png"),
            log=True,
        )
    if concurrent:
        bars(
            [m.trace.name for m in concurrent],
            {
                label: [m.trace.patches / median(m.times.get(key, [math.nan])) for m in concurrent]
                for label, key in (("pycrdt", "pycrdt replay"), ("Yjs", "Yjs replay"))
            },
            "Concurrent traces: patches/s of the replay (median)",
            "patches / s",
            stem.with_name(stem.name + "_concurrent.png"),
        )
    return written


# -- main ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    sequential: list[Path]
    concurrent: list[Path]
    runs: int | None
    node: bool
    sqlite: bool
    merge_cap: float
    output: Path | None
    profile: str | None
    quick: bool


def available() -> tuple[list[Path], list[Path]]:
    return (
        sorted(TRACES.glob("*.json.gz")),
        sorted((TRACES / "concurrent").glob("*.json.gz")),
    )


def parse_options(argv: Sequence[str]) -> Options:
    sequential, concurrent = available()
    names = [p.name.removesuffix(".json.gz") for p in sequential + concurrent]
    parser = argparse.ArgumentParser(
        description="Patches/s replaying editing traces: raw pycrdt, the engine's embedding "
        "API (memory, SQLite), Yjs in Node; the remote path; concurrent traces."
    )
    parser.add_argument(
        "--traces",
        help="comma-separated trace names (default: all): " + ", ".join(names),
    )
    parser.add_argument(
        "--runs", type=int, help=f"runs per trace (default 5; 3 over {LONG_TRACE:,} patches)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 short traces, 1 run")
    parser.add_argument("--no-node", action="store_true", help="skip Yjs")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the engine with SQLite")
    parser.add_argument(
        "--merge-cap",
        type=float,
        default=60.0,
        help="skip pycrdt's merge_updates(*all) when estimated over this many seconds",
    )
    parser.add_argument(
        "--profile",
        metavar="TRACE",
        help="also cProfile raw pycrdt and the engine (memory) on this sequential trace",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"Markdown file for the results (default {DEFAULT_OUTPUT.relative_to(REPO)}; "
        "with --quick, none); the PNGs go beside it",
    )
    args = parser.parse_args(argv)
    if args.traces:
        wanted = [name.strip() for name in args.traces.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in names]
        if unknown:
            parser.error(f"unknown trace(s) {', '.join(unknown)}; known: {', '.join(names)}")
    elif args.quick:
        wanted = list(QUICK_TRACES)
    else:
        wanted = names
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be positive")
    runs = 1 if args.quick and args.runs is None else args.runs
    if args.profile is not None and args.profile not in [
        p.name.removesuffix(".json.gz") for p in sequential
    ]:
        parser.error(f"--profile takes a sequential trace, not {args.profile!r}")
    return Options(
        sequential=[p for p in sequential if p.name.removesuffix(".json.gz") in wanted],
        concurrent=[p for p in concurrent if p.name.removesuffix(".json.gz") in wanted],
        runs=runs,
        node=not args.no_node,
        sqlite=not args.no_sqlite,
        merge_cap=args.merge_cap,
        output=args.output if args.output or args.quick else DEFAULT_OUTPUT,
        profile=args.profile,
        quick=args.quick,
    )


def runs_for(options: Options, patches: int) -> int:
    if options.runs is not None:
        return options.runs
    return 3 if patches > LONG_TRACE else 5


def measure_sequential(path: Path, options: Options, node: bool, directory: Path) -> Measured:
    say(f"{path.name}: loading ...")
    trace = load_sequential(path)
    measured = Measured(trace, runs_for(options, len(trace.patches)))
    patches_file = directory / f"{trace.name}.patches.json"
    if node:
        patches_file.write_text(json.dumps({"patches": trace.utf16}))

    def engine(database: Path | None, verify: bool, with_peer: bool = False) -> Timing:
        return anyio.run(replay_engine, trace, database, verify, with_peer)

    order: list[tuple[str, Callable[[int], Timing]]] = [
        (PYCRDT, lambda run: replay_pycrdt(trace, observe=False)),
        (OBSERVED, lambda run: replay_pycrdt(trace, observe=True)),
        (ENGINE, lambda run: engine(None, False)),
        (ENGINE_PEER, lambda run: engine(None, run == 1, True)),
    ]
    if options.sqlite:
        order.append(
            (ENGINE_SQL, lambda run: engine(directory / f"{trace.name}-{run}.db", run == 1))
        )
    if node:
        order.append((YJS, lambda run: replay_yjs(trace, patches_file)))
    updates_file = directory / f"{trace.name}.updates.bin"
    for run in range(1, measured.runs + 1):
        shift = (run - 1) % len(order)
        for label, measure in order[shift:] + order[:shift]:
            measured.record(label, measure(run))
        if run == 1 and node:
            write_updates(trace.updates, updates_file)
        measure_remote(
            trace, measured.remote, updates_file if node else None, options.merge_cap, run
        )
        say(
            f"{trace.name} run {run}/{measured.runs}: "
            + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in measured.times.items())
            + "; remote "
            + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in measured.remote.times.items())
        )
    for suffix in ("", "-wal", "-shm"):
        for run in range(1, measured.runs + 1):
            Path(f"{directory / f'{trace.name}-{run}.db'}{suffix}").unlink(missing_ok=True)
    return measured


def measure_concurrent(
    path: Path, options: Options, node: bool, directory: Path
) -> MeasuredConcurrent:
    say(f"{path.name} (concurrent): loading ...")
    trace = load_concurrent(path)
    prepare_concurrent(trace)
    measured = MeasuredConcurrent(trace, runs_for(options, trace.patches))
    schedule = directory / f"{trace.name}.schedule.json"
    if node:
        write_schedule(trace, schedule)
    for run in range(1, measured.runs + 1):
        sides: list[tuple[str, Callable[[], tuple[float, float]]]] = [
            ("pycrdt", lambda: replay_concurrent(trace))
        ]
        if node:
            sides.append(("Yjs", lambda: replay_concurrent_yjs(trace, schedule)))
        if run % 2 == 0:
            sides.reverse()
        for label, measure in sides:
            replayed, converged = measure()
            measured.record(f"{label} replay", replayed)
            measured.record(f"{label} converge", converged)
        say(
            f"{trace.name} run {run}/{measured.runs}: "
            + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in measured.times.items())
        )
    return measured


def header(
    options: Options,
    argv: Sequence[str],
    loads: tuple[str, str],
    uptimes: tuple[str, str],
    node: str | None,
    commit: str,
    elapsed: float,
) -> list[str]:
    peer = (
        f", Node {node} with yjs {yjs_version()} (tests/interop/node_modules)"
        if node
        else " (Yjs skipped: no node or no tests/interop/node_modules/yjs)"
    )
    return [
        "# Merge throughput: editing traces through pycrdt, the engine and Yjs",
        "",
        f"- command: `{provenance.command_line(argv)}` ({elapsed / 60:.1f} min)",
        f"- date: {provenance.utc_now()}",
        f"- machine: {provenance.machine()}; "
        f"1-minute load average {loads[0]} before, {loads[1]} after (other jobs share "
        "the machine)",
        f"- `uptime` before: `{uptimes[0]}`",
        f"- `uptime` after: `{uptimes[1]}`",
        f"- Python {sys.version.split()[0]}, pycrdt {version('pycrdt')}, SQLAlchemy "
        f"{version('sqlalchemy')}, aiosqlite {version('aiosqlite')} (SQLite "
        f"{sqlite3.sqlite_version}), matplotlib {version('matplotlib')}{peer}, "
        f"collab-engine commit {commit}",
        "- traces: /work/shared/traces (josephg/editing-traces, CC BY 4.0: Martin Kleppmann "
        "for automerge-paper, Joseph Gentle, Vadim Dalecky / JSON Joy for json-crdt-*)",
        f"- runs per trace: {options.runs if options.runs is not None else '5 (3 over ' + format(LONG_TRACE, ',') + ' patches)'}"
        "; implementations' order rotated between runs; every replay's final text "
        "checked against the trace's `endContent` (the script stops on a mismatch)",
        "- method: see the docstring of `benchmarks/merge_throughput.py`",
    ]


def main() -> None:
    argv = sys.argv
    options = parse_options(argv[1:])
    started = time.perf_counter()
    loads_before, uptime_before = load_average(), provenance.uptime()
    commit = provenance.commit(
        ["collab_engine", "storage"], "plus uncommitted changes to collab_engine/ or storage/"
    )
    node = node_version() if options.node else None
    measured: list[Measured] = []
    concurrent: list[MeasuredConcurrent] = []
    profile = ""
    try:
        with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
            directory = Path(tmp)
            measured = [
                measure_sequential(path, options, node is not None, directory)
                for path in options.sequential
            ]
            concurrent = [
                measure_concurrent(path, options, node is not None, directory)
                for path in options.concurrent
            ]
            if options.profile is not None:
                say(f"profiling {options.profile} ...")
                profile = profile_engine(load_sequential(TRACES / f"{options.profile}.json.gz"))
    except Mismatch as error:
        say(f"FAILED: {error}")
        sys.exit(1)
    report = [
        *header(
            options,
            argv,
            (loads_before, load_average()),
            (uptime_before, provenance.uptime()),
            node,
            commit,
            time.perf_counter() - started,
        ),
        "",
    ]
    if measured:
        report += [*local_tables(measured), "", *remote_tables(measured, options.merge_cap), ""]
    if concurrent:
        report += [*concurrent_tables(concurrent), ""]
    if profile:
        report += [
            f"## cProfile of `{options.profile}` (one replay each, under the profiler)",
            "",
            "Sorted by own time; pycrdt's Rust work shows as the methods of its "
            "`_pycrdt` objects (the transaction's `commit` includes the observers it calls).",
            "",
            profile,
        ]
    pngs: list[Path] = []
    if options.output is not None:
        stem = options.output.with_suffix("")
        pngs = plot(measured, concurrent, stem)
        if pngs:
            report += [
                "Plots: " + ", ".join(f"`{p.name}`" for p in pngs),
                "",
            ]
    text = "\n".join(report)
    publish(text, options.output)
    if options.output is not None:
        raw = options.output.parent / "raw" / (options.output.stem + ".json")
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(
            json.dumps(
                {
                    "sequential": {
                        m.trace.name: {"wall": m.times, "cpu": m.cpu, "remote": m.remote.times}
                        for m in measured
                    },
                    "concurrent": {m.trace.name: m.times for m in concurrent},
                },
                indent=1,
            )
        )
        say(f"wrote {options.output} and {len(pngs)} plot(s)")


if __name__ == "__main__":
    main()
