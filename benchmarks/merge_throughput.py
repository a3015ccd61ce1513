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
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from harness import profiling, provenance, yjs
from harness.provenance import load_average, node_version, version
from harness.remote import measure_remote
from harness.replay import (
    ENGINE,
    ENGINE_PEER,
    ENGINE_SQL,
    OBSERVED,
    PYCRDT,
    YJS,
    Mismatch,
    Timing,
    prepare_concurrent,
    replay_concurrent,
    replay_engine,
    replay_pycrdt,
)
from harness.report import publish, say
from harness.timings import (
    ConcurrentTimings,
    Timings,
    concurrent_tables,
    local_tables,
    plot,
    remote_tables,
    write_raw,
)
from harness.traces import TRACES, Sequential, available, load_concurrent, load_sequential, name_of

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "merge_throughput.md"
LONG_TRACE = 100_000
"""Traces of more patches than this get 3 runs, not 5."""
QUICK_TRACES = ("sveltecomponent", "clownschool_flat", "clownschool")


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


def parse_options(argv: Sequence[str]) -> Options:
    sequential, concurrent = available()
    names = [name_of(p) for p in sequential + concurrent]
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
    if args.profile is not None and args.profile not in [name_of(p) for p in sequential]:
        parser.error(f"--profile takes a sequential trace, not {args.profile!r}")
    return Options(
        sequential=[p for p in sequential if name_of(p) in wanted],
        concurrent=[p for p in concurrent if name_of(p) in wanted],
        runs=1 if args.quick and args.runs is None else args.runs,
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


def engine(trace: Sequential, database: Path | None, verify: bool, peer: bool = False) -> Timing:
    return anyio.run(replay_engine, trace, database, verify, peer)


def measure_sequential(path: Path, options: Options, node: bool, directory: Path) -> Timings:
    """Parts 1 and 2 on one trace: every implementation once a run, in an order rotated
    from run to run, then the remote path on the updates of the first run."""
    say(f"{path.name}: loading ...")
    trace = load_sequential(path)
    measured = Timings(trace, runs_for(options, len(trace.patches)))
    patches_file = directory / f"{trace.name}.patches.json"
    if node:
        yjs.write_patches(trace.utf16, patches_file)
    order: list[tuple[str, Callable[[int], Timing]]] = [
        (PYCRDT, lambda run: replay_pycrdt(trace, observe=False)),
        (OBSERVED, lambda run: replay_pycrdt(trace, observe=True)),
        (ENGINE, lambda run: engine(trace, None, False)),
        (ENGINE_PEER, lambda run: engine(trace, None, run == 1, True)),
    ]
    if options.sqlite:
        order.append(
            (ENGINE_SQL, lambda run: engine(trace, directory / f"{trace.name}-{run}.db", run == 1))
        )
    if node:
        order.append((YJS, lambda run: yjs.replay_local(trace, patches_file)))
    updates_file = directory / f"{trace.name}.updates.bin"
    for run in range(1, measured.runs + 1):
        shift = (run - 1) % len(order)
        for label, measure in order[shift:] + order[:shift]:
            measured.record(label, measure(run))
        if run == 1 and node:
            yjs.write_updates(trace.updates, updates_file)
        measure_remote(
            trace, measured.remote, updates_file if node else None, options.merge_cap, run
        )
        say(
            f"{trace.name} run {run}/{measured.runs}: "
            + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in measured.times.items())
            + "; remote "
            + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in measured.remote.times.items())
        )
    return measured


def measure_concurrent(
    path: Path, options: Options, node: bool, directory: Path
) -> ConcurrentTimings:
    """Part 3 on one trace: pycrdt's replicas and Yjs's, in turns."""
    say(f"{path.name} (concurrent): loading ...")
    trace = load_concurrent(path)
    prepare_concurrent(trace)
    measured = ConcurrentTimings(trace, runs_for(options, trace.patches))
    schedule = directory / f"{trace.name}.schedule.json"
    if node:
        yjs.write_schedule(trace, schedule)
    for run in range(1, measured.runs + 1):
        sides: list[tuple[str, Callable[[], tuple[float, float]]]] = [
            ("pycrdt", lambda: replay_concurrent(trace))
        ]
        if node:
            sides.append(("Yjs", lambda: yjs.replay_concurrent(trace, schedule)))
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


def profile(name: str) -> list[str]:
    """cProfile of one replay each of raw pycrdt and the engine (memory), on `name`."""
    say(f"profiling {name} ...")
    trace = load_sequential(TRACES / f"{name}.json.gz")
    sections = profiling.cprofile_calls(
        [
            (PYCRDT, lambda: replay_pycrdt(trace, observe=False), None),
            (OBSERVED, lambda: replay_pycrdt(trace, observe=True), None),
            # Everything the engine itself runs, by cumulative time, too.
            (ENGINE, lambda: engine(trace, None, False), "collab_engine"),
            (ENGINE_PEER, lambda: engine(trace, None, False, True), "collab_engine"),
        ]
    )
    return [
        f"## cProfile of `{name}` (one replay each, under the profiler)",
        "",
        "Sorted by own time; pycrdt's Rust work shows as the methods of its "
        "`_pycrdt` objects (the transaction's `commit` includes the observers it calls).",
        "",
        sections,
    ]


def header(options: Options, argv: Sequence[str], before: tuple[str, str], node: str | None,
           commit: str, elapsed: float) -> list[str]:  # fmt: skip
    runs = options.runs if options.runs is not None else f"5 (3 over {LONG_TRACE:,} patches)"
    return [
        "# Merge throughput: editing traces through pycrdt, the engine and Yjs",
        "",
        f"- command: `{provenance.command_line(argv)}` ({elapsed / 60:.1f} min)",
        f"- date: {provenance.utc_now()}",
        f"- machine: {provenance.machine()}; 1-minute load average {before[0]} before, "
        f"{load_average()} after (other jobs share the machine)",
        f"- `uptime` before: `{before[1]}`",
        f"- `uptime` after: `{provenance.uptime()}`",
        f"- Python {sys.version.split()[0]}, pycrdt {version('pycrdt')}, SQLAlchemy "
        f"{version('sqlalchemy')}, aiosqlite {version('aiosqlite')} (SQLite "
        f"{sqlite3.sqlite_version}), matplotlib {version('matplotlib')}, "
        f"{provenance.yjs_in_node(node)}, collab-engine commit {commit}",
        "- traces: /work/shared/traces (josephg/editing-traces, CC BY 4.0: Martin Kleppmann "
        "for automerge-paper, Joseph Gentle, Vadim Dalecky / JSON Joy for json-crdt-*)",
        f"- runs per trace: {runs}; implementations' order rotated between runs; every "
        "replay's final text checked against the trace's `endContent` (the script stops on "
        "a mismatch)",
        "- method: see the docstring of `benchmarks/merge_throughput.py`",
        "",
    ]


def main() -> None:
    argv = sys.argv
    options = parse_options(argv[1:])
    started = time.perf_counter()
    before = load_average(), provenance.uptime()
    commit = provenance.commit(
        ["collab_engine", "storage"], "plus uncommitted changes to collab_engine/ or storage/"
    )
    node = node_version() if options.node else None
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
            profiled = profile(options.profile) if options.profile is not None else []
    except Mismatch as error:
        say(f"FAILED: {error}")
        sys.exit(1)
    report = header(options, argv, before, node, commit, time.perf_counter() - started)
    if measured:
        report += [*local_tables(measured), "", *remote_tables(measured, options.merge_cap), ""]
    if concurrent:
        report += [*concurrent_tables(concurrent), ""]
    report += profiled
    pngs: list[Path] = []
    if options.output is not None:
        pngs = plot(measured, concurrent, options.output.with_suffix(""))
        if pngs:
            report += ["Plots: " + ", ".join(f"`{p.name}`" for p in pngs), ""]
    publish("\n".join(report), options.output)
    if options.output is not None:
        write_raw(options.output.parent / "raw" / f"{options.output.stem}.json", measured,
                  concurrent)  # fmt: skip
        say(f"wrote {options.output} and {len(pngs)} plot(s)")


if __name__ == "__main__":
    main()
