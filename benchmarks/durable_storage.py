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
over R rooms), three engine configurations are measured in the same run, one after
the other, on a fresh database (or schema) each, compaction out of reach:

* "one commit per update": `EngineConfig(journal_max_batch=1, journal_linger=0)`;
* "group commit": the default `journal_max_batch` (2,000), `journal_linger=0`;
* "group commit, 50 ms linger": the defaults, the journal waiting 50 ms for more
  updates before each commit. Writers here wait for each acknowledgement before
  they send more (y-websocket clients do not), so lingering costs them throughput:
  this row shows the price a client that waits for durability pays.

Each writer has one update in flight: it sends the next once the journal's
`Persisted` acknowledgement covers the last (`harness/writers.py`: the writers,
their updates, and what each figure of a run means). A run is measured over
`--duration` seconds that start `--warmup` seconds after the writers; the table
shows the median of each figure over `--runs` runs, and the speedup is the ratio
of the two medians.

The layouts differ in what each update costs besides the disk. In 1 room, every
update is fanned out to all W peers (W frames queued, W reader tasks woken), as
the server would to W connections. In R rooms, a group commit holds updates of up
to R documents, and `SQLStore.append` runs three statements per document in it
(the `documents` upsert, the `last_seq` update, the insert). For reference, the
same run times `SQLStore.append` alone, one call at a time on a fresh database:
one entry, and W entries over 1 and over R documents (the shapes of the batches
above), for about `--append-seconds` per shape.

2. Loading a long history
-------------------------
The `automerge-paper` editing trace (259,778 one-character edits) is replayed with
pycrdt, one update per edit, checked against the trace's text, and appended in
batches of 10,000 (`harness/history.py`) to three SQLite files, one per case:

* (a) log only: every update, no snapshot;
* (b) snapshot at the end: the whole log, then `Engine.compact` (a snapshot at
  the last seq, nothing after it);
* (c) snapshot + tail: all but the last `--tail` (1,000) updates, then
  `Engine.compact`, then the last ones.

Then, per run and per case (cases interleaved within each run), three timings:
`store.load()` alone; `rebuild` of what it returned (in a worker thread, as the
engine does); and a cold open, `engine.room(name)` in a new `Engine` (compaction
off, so opening does not write a snapshot): the two together plus the room's
set-up. Every rebuild and open checks the text.

3. Bytes on disk
----------------
After `PRAGMA wal_checkpoint(TRUNCATE)`, the size of each SQLite file per 1,000
edits of the history; next to them, the raw update bytes and the snapshots' sizes,
and where the bytes of the file with the snapshot are, table by table and index by
index (SQLite's `dbstat`). Every update is logged with the author "trace".

With `--quick` (a smoke run), part 2 uses the first 20,000 edits of the trace,
and the table is printed only, not written, unless `--output` is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from harness import provenance
from harness.history import (
    Case,
    History,
    build_case,
    engine_config,
    history_tables,
    measure_opening,
    read_history,
)
from harness.provenance import load_average, version
from harness.report import ms, publish, say
from harness.stores import (
    POSTGRES_URL,
    AppendResult,
    append_table,
    appends_once,
    backends,
    space_by_object,
)
from harness.traces import AUTOMERGE_PAPER
from harness.writers import (
    MODES,
    ThroughputResult,
    prepare_updates,
    throughput_once,
    throughput_table,
)

from storage.sql import SQLStore

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "durable_storage.md"
DEFAULT_TRACE = AUTOMERGE_PAPER

AUTHOR = "trace"
"""The author of every update of the long history."""


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


def header(options: Options, argv: Sequence[str], load: tuple[str, str], notes: list[str]) -> str:
    commit = provenance.commit(
        ["collab_engine", "storage"], "plus uncommitted changes to collab_engine/ or storage/"
    )
    extra = f", asyncpg {version('asyncpg')}"
    return "\n".join(
        [
            "# Durable storage: group commit, loading a long history, bytes on disk",
            "",
            *provenance.storage_lines(argv, load, commit, extra),
            *(f"- {note}" for note in notes),
        ]
    )


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
        updates_per_writer=pick(args.updates_per_writer, 3000, 3000),
        append_budget=pick(args.append_seconds, 0.5, 0.2),
        backends=tuple(dict.fromkeys(args.backends)),
        postgres_url=args.postgres_url,
        trace=args.trace,
        edits=pick(args.edits, None, 20_000),
        tail=args.tail,
        skip_throughput=args.skip_throughput,
        skip_history=args.skip_history,
        output=args.output if args.output or quick else DEFAULT_OUTPUT,
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
    chosen = await backends(options.backends, directory, options.postgres_url, notes)
    say(f"preparing {options.writers} x {options.updates_per_writer} updates ...")
    started = time.perf_counter()
    updates = prepare_updates(options.writers, options.updates_per_writer)
    sizes = [len(u) for seq in updates for u in seq]
    notes.append(
        f"part 1 updates: {len(sizes):,} prepared with pycrdt in "
        f"{time.perf_counter() - started:.1f} s, {min(sizes)}-{max(sizes)} bytes each "
        f"(median {statistics.median(sizes):g})"
    )
    # Keyed (backend, rooms, mode) and (backend, entries, documents), in table order.
    results: dict[tuple[str, int, str], list[ThroughputResult]] = defaultdict(list)
    appends: dict[tuple[str, int, int], list[AppendResult]] = defaultdict(list)
    shapes = list(dict.fromkeys([(1, 1), *((options.writers, r) for r in options.rooms)]))
    for run in range(1, options.runs + 1):
        for backend in chosen:
            shaped = await appends_once(backend, shapes, updates, options.append_budget)
            for (entries, documents), timing in shaped.items():
                appends[(backend.name, entries, documents)].append(timing)
                say(
                    f"run {run} {backend.name} append of {entries} over {documents} "
                    f"document(s): {ms(timing.per_call)} ms ({timing.calls} calls)"
                )
            for rooms in options.rooms:
                for mode, max_batch, linger in MODES:
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
                    say(f"run {run} {backend.name} rooms={rooms} {mode}: {result.summary()}")
    return results, appends


async def history_part(
    options: Options, directory: Path
) -> tuple[History, list[Case], dict[str, int]]:
    say(f"replaying {options.trace.name} ...")
    history = read_history(options.trace, options.edits)
    tail = options.tail
    cases = [
        Case("a", "(a) log only, no snapshot", directory / "log.db"),
        Case("b", "(b) snapshot at the last seq", directory / "snapshot.db", "end"),
        Case("c", f"(c) snapshot + last {tail:,} updates", directory / "tail.db", "end", tail),
    ]
    config = engine_config()
    stores: list[SQLStore] = []
    try:
        for case in cases:
            say(f"writing {case.label} ...")
            stores.append(await build_case(case, history, config, [AUTHOR] * history.edits))
        space = await space_by_object(stores[1])
        for run in range(1, options.runs + 1):
            for case, store in zip(cases, stores, strict=True):
                await measure_opening(case, store, config, history.expected)
                timings = ", ".join(f"{what} {case.times[what][-1]:.3f} s" for what in case.times)
                say(f"run {run} {case.label}: {timings}")
    finally:
        for store in stores:
            await store.aclose()
    return history, cases, space


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
                sections.append(
                    throughput_table(
                        results,
                        writers=options.writers,
                        runs=options.runs,
                        duration=options.duration,
                        warmup=options.warmup,
                    )
                )
            if appends:
                sections.append(append_table(appends, options.writers))
        if not options.skip_history:
            history, cases, space = await history_part(options, directory)
            sections.append(history_tables(history, cases, space, options.runs))
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
