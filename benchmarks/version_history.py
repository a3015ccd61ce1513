"""Version history on a long document: content at a version, restore, and diff.

Usage:

    python benchmarks/version_history.py            # the whole trace, 5 runs (about 6 minutes)
    python benchmarks/version_history.py --quick    # smoke run: 20,000 edits, 2 runs (about 15 s)
    python benchmarks/version_history.py --runs 3 --diff-runs 1 --no-node

Everything runs in this one process through the engine's own code (`Engine`,
`engine.history`, `SQLStore` over SQLite files in a temporary directory), except
the Yjs reference, which runs in Node.

The history: the `automerge-paper` editing trace (259,778 edits) replayed with
pycrdt, one update (one log row) per edit, checked against the trace's text
(`harness/history.py`); the author changes every 10,000 edits between "user:alice"
and "user:bob", so that a version's editors and a diff's authors are more than
one. Five versions are recorded after the log: at seq 1 (the oldest), 1/4, 1/2
(the middle), 3/4, and the last seq (the newest). Three SQLite files hold the same
log and versions:

* (a) log only: content at any version replays the log from seq 1;
* (b) snapshot at the end (`Engine.compact`, as the engine's compaction leaves a
  document after a burst of edits): content at the newest version is that
  snapshot, at any other the log from seq 1;
* (c) a snapshot every 1,000 updates, what the engine's default compaction
  (`compact_after_updates` = 1,000) leaves behind a document edited for a long
  time: content at any version replays at most 999 updates after a snapshot.

Measured per run and per case (one after the other), with compaction out of reach
and no automatic versions, so that nothing but the measured call reads or writes
(`harness/versions.py` says how each call is timed and checked): content at the
oldest, middle and newest versions; the diff middle to newest (in `--diff-runs`
of the runs); restore to the oldest and to the middle version, the room not
loaded, each on its own copy of the file; for scale, a cold room open. The
reference, per run: the whole log of (a) loaded and rebuilt with pycrdt, and Yjs
in Node applying the same updates (when Node and the `yjs` package of
tests/interop are there). The ratio content / (load + rebuild) tells what version
history adds on top of plain rebuilding.

Every figure is the median over the runs, with the smallest and largest. A
check that fails is listed under Problems and the script exits 1. With
`--quick`, the table is printed only, not written, unless `--output` is given.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from harness import provenance
from harness.history import DOC, Case, History, build_case, engine_config, read_history
from harness.provenance import load_average, node_version, yjs_version
from harness.report import publish, say, seconds
from harness.stats import median
from harness.traces import AUTOMERGE_PAPER
from harness.versions import MIDDLE, NEWEST, OLDEST, Calls, Reference, version_seqs
from harness.yjs import write_updates

from collab_engine import EngineConfig
from collab_engine.history import HistoryPolicy

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "version_history.md"
DEFAULT_TRACE = AUTOMERGE_PAPER

AUTHORS = ("user:alice", "user:bob")
AUTHOR_RUN = 10_000
"""Edits in a row by one author."""
SNAPSHOT_EVERY = 1_000
"""Case (c): a snapshot after every this many updates (the default `compact_after_updates`)."""


def config() -> EngineConfig:
    return engine_config(history=HistoryPolicy(enabled=False))


def author_of(seq: int) -> str:
    return AUTHORS[((seq - 1) // AUTHOR_RUN) % len(AUTHORS)]


# -- the report ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    runs: int
    diff_runs: int
    trace: Path
    edits: int | None
    node: bool
    output: Path | None


def spread(values: Sequence[float]) -> tuple[str, str, str]:
    if not values:
        return "n/a", "n/a", "n/a"
    return seconds(median(values)), seconds(min(values)), seconds(max(values))


def header(
    options: Options,
    argv: Sequence[str],
    load: tuple[str, str],
    history: History,
    node: str | None,
    commit: str,
) -> str:
    peer = f", Node {node} with yjs {yjs_version()}" if node else ""
    return "\n".join(
        [
            "# Version history: content at a version, restore and diff on a long history",
            "",
            *provenance.storage_lines(argv, load, commit, peer),
            f"- history: `{DOC}` trace, first {history.edits:,} edits"
            if options.edits is not None
            else f"- history: the `{DOC}` trace, {history.edits:,} edits",
            f"- one update per edit (one log row each), authors alternating "
            f"{' / '.join(AUTHORS)} every {AUTHOR_RUN:,} edits; replayed with pycrdt in "
            f"{history.replay_seconds:.1f} s ({history.non_ascii_patches} non-ASCII "
            f"patches); final text {len(history.expected):,} characters"
            + (", equal to the trace's `endContent`" if options.edits is None else ""),
            "- engine: `EngineConfig(history=HistoryPolicy(enabled=False))` with compaction "
            "out of reach (nothing writes but the measured call); SQLite files, "
            "`synchronous=FULL`, in the page cache",
            f"- {options.runs} run(s), cases one after the other within each run; diff in "
            f"{min(options.diff_runs, options.runs)} of them; every result checked (see "
            "the script's docstring)",
        ]
    )


ROWS = [  # key, row of the times table, row of the summary, the seq the call loads up to
    ("content oldest", "`history.content`, oldest version (seq {oldest})",
     "content at the oldest version", OLDEST),
    ("content middle", "`history.content`, middle version (seq {middle})",
     "content at the middle version", MIDDLE),
    ("content newest", "`history.content`, newest version (seq {newest})",
     "content at the newest version", NEWEST),
    ("diff", "`history.diff`, middle to newest", "diff, middle to newest", MIDDLE),
    ("restore oldest", "`history.restore` to the oldest version, room not loaded",
     "restore to the oldest version", NEWEST),
    ("restore middle", "`history.restore` to the middle version, room not loaded",
     "restore to the middle version", NEWEST),
    ("open", "for scale: cold `engine.room()` open", "for scale: cold room open", NEWEST),
]  # fmt: skip


def summary_table(history: History, cases: Sequence[Case], reference: Reference) -> str:
    base = median([a + b for a, b in zip(reference.load, reference.rebuild, strict=True)])
    lines = [
        "## Summary: median seconds (and the ratio to loading and rebuilding the whole log)",
        "",
        f"Load + rebuild of the whole log, {history.edits:,} updates, with pycrdt "
        f"(`store.load()` then `rebuild`): {seconds(base)} s"
        + (
            f"; Yjs in Node applying the same updates: {seconds(median(reference.yjs))} s."
            if reference.yjs
            else "."
        ),
        "",
        "| operation | " + " | ".join(case.label for case in cases) + " |",
        "|---|" + "---:|" * len(cases),
    ]
    for key, _, label, _ in ROWS:
        cells = []
        for case in cases:
            runs = case.times.get(key, [])
            if not runs:
                cells.append("n/a")
                continue
            value = median(runs)
            ratio = f" ({value / base:.2f}x)" if base and not math.isnan(base) else ""
            cells.append(f"{seconds(value)}{ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def times_table(history: History, cases: Sequence[Case]) -> str:
    seqs = version_seqs(history.edits)
    values = {name: f"{seqs[name]:,}" for name in (OLDEST, MIDDLE, NEWEST)}
    lines = [
        f"## Times on `{DOC}`, {history.edits:,} edits, in seconds",
        "",
        "Updates replayed: log entries applied after the snapshot the call starts from "
        "(a restore replays those of its version, then opens the room, which replays "
        "those after the newest snapshot; a diff also reads and applies the "
        f"{seqs[NEWEST] - seqs[MIDDLE]:,} entries between its versions"
        + (
            f", and gives {median(cases[0].times['diff changes']):,.0f} text changes"
            if cases and cases[0].times.get("diff changes")
            else ""
        )
        + ").",
        "",
        "| operation | case | updates replayed | median | min | max | runs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, label, _, replayed_at in ROWS:
        for case in cases:
            runs = case.times.get(key, [])
            if not runs:
                continue
            replayed = case.replayed[replayed_at]
            if key.startswith("restore"):
                target = OLDEST if key.endswith(OLDEST) else MIDDLE
                shown = f"{case.replayed[target]:,} + {replayed:,}"
            else:
                shown = f"{replayed:,}"
            lines.append(
                f"| {label.format(**values)} | {case.label} | {shown} | "
                + " | ".join(spread(runs))
                + f" | {len(runs)} |"
            )
    return "\n".join(lines)


def reference_table(history: History, cases: Sequence[Case], reference: Reference) -> str:
    log_only = cases[0]
    rebuild_total = [a + b for a, b in zip(reference.load, reference.rebuild, strict=True)]
    lines = [
        "## Against rebuilding the whole document",
        "",
        "| what | median | min | max | runs |",
        "|---|---:|---:|---:|---:|",
        f"| `store.load()` of the whole log, ({log_only.key}) "
        f"| {' | '.join(spread(reference.load))} | {len(reference.load)} |",
        f"| `rebuild` of it with pycrdt (worker thread) "
        f"| {' | '.join(spread(reference.rebuild))} | {len(reference.rebuild)} |",
        f"| load + rebuild | {' | '.join(spread(rebuild_total))} | {len(rebuild_total)} |",
    ]
    if reference.yjs:
        lines.append(
            f"| Yjs in Node: `Y.applyUpdate` of the {history.edits:,} updates, in memory "
            f"| {' | '.join(spread(reference.yjs))} | {len(reference.yjs)} |"
        )
    base = median(rebuild_total)
    if reference.yjs and base:
        lines += [
            "",
            f"Ratio of medians, pycrdt load + rebuild / Yjs applying the updates: "
            f"{base / median(reference.yjs):.2f}; rebuild alone / Yjs: "
            f"{median(reference.rebuild) / median(reference.yjs):.2f}.",
        ]
    if reference.yjs_note:
        lines += ["", reference.yjs_note]
    return "\n".join(lines)


def build_table(history: History, cases: Sequence[Case]) -> str:
    raw = sum(len(u) for u in history.updates)
    lines = [
        "## The stores",
        "",
        f"Versions (the same ids in every file), recorded with `store.add_version` after "
        f"the log; {history.edits:,} updates, {raw:,} bytes in all.",
        "",
        "| version | id | seq | editors |",
        "|---|---:|---:|---|",
    ]
    for name, version_ in cases[0].versions.items():
        lines.append(
            f"| {name} | {version_.id} | {version_.seq:,} | {', '.join(version_.editors)} |"
        )
    lines += [
        "",
        "| case | appending the log (s) | snapshots | writing them (s) | file bytes "
        "| updates replayed at oldest / quarter / middle / three quarters / newest |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        replayed = " / ".join(f"{case.replayed[name]:,}" for name in case.replayed)
        lines.append(
            f"| {case.label} | {case.append_seconds:.2f} | {case.snapshot_count:,} "
            f"| {case.snapshot_seconds:.2f} | {case.file_bytes:,} | {replayed} |"
        )
    lines += [
        "",
        "Writing the snapshots: (b) is `Engine.compact` (load and rebuild of the whole "
        "log, then the write); (c) is only the writes (the states were taken during the "
        "replay).",
    ]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Version history on the automerge-paper history: content at a version, "
        "restore and diff, against rebuilding the document (pycrdt, Yjs).",
    )
    parser.add_argument("--runs", type=int, help="runs of each measurement (default 5)")
    parser.add_argument(
        "--diff-runs", type=int, help="runs that also time the diff (default: every run)"
    )
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="editing trace")
    parser.add_argument("--edits", type=int, help="use the trace's first N edits (default all)")
    parser.add_argument("--no-node", action="store_true", help="skip the Yjs reference")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 edits, 2 runs")
    parser.add_argument(
        "--output", type=Path,
        help=f"Markdown file to write the results to (default {DEFAULT_OUTPUT.relative_to(REPO)}; "
        "with --quick, none)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    quick = args.quick
    runs = args.runs if args.runs is not None else (2 if quick else 5)
    options = Options(
        runs=runs,
        diff_runs=args.diff_runs if args.diff_runs is not None else runs,
        trace=args.trace,
        edits=args.edits if args.edits is not None else (20_000 if quick else None),
        node=not args.no_node,
        output=args.output if args.output or quick else DEFAULT_OUTPUT,
    )
    if (
        options.runs < 1
        or options.diff_runs < 0
        or (options.edits is not None and options.edits < 8)
    ):
        parser.error("--runs must be positive, --diff-runs not negative, --edits at least 8")
    return options


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    load_before = load_average()
    # The commit measured is the one imported now (the tree may change during a run).
    commit = provenance.commit(
        ["collab_engine", "storage"], "plus uncommitted changes to collab_engine/ or storage/"
    )
    say(f"replaying {options.trace.name} ...")
    history = read_history(
        options.trace,
        options.edits,
        texts_at=lambda edits: version_seqs(edits).values(),
        snapshot_every=SNAPSHOT_EVERY,
    )
    say(f"{history.edits:,} updates in {history.replay_seconds:.1f} s")
    authors = [author_of(seq) for seq in range(1, history.edits + 1)]
    node = node_version() if options.node else None
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        directory = Path(tmp)
        calls = Calls(history, authors, config(), directory)
        reference = calls.reference
        if options.node and node is None:
            reference.yjs_note = (
                "Yjs reference skipped: no `node`, or no tests/interop/node_modules/yjs."
            )
        every = f"(c) snapshot every {SNAPSHOT_EVERY:,} updates"
        cases = [
            Case("a", "(a) log only", directory / "log.db", "none"),
            Case("b", "(b) snapshot at the end", directory / "end.db", "end"),
            Case("c", every, directory / "every.db", "every"),
        ]
        seqs = version_seqs(history.edits)
        for case in cases:
            say(f"writing {case.label} ...")
            await (await build_case(case, history, config(), authors, seqs)).aclose()
        updates_file = directory / "updates.bin"
        if node is not None:
            write_updates(history.updates, updates_file)
        for run in range(1, options.runs + 1):
            for case in cases:
                await calls.reads(case, run, with_diff=run <= options.diff_runs)
                for name in (OLDEST, MIDDLE):
                    await calls.restore(case, run, name)
                say(
                    f"run {run} {case.label}: "
                    + ", ".join(
                        f"{what} {values[-1]:.3f}"
                        for what, values in case.times.items()
                        if what != "diff changes"
                    )  # fmt: skip
                )
            await calls.rebuild(cases[0], run)
            if node is not None:
                await calls.yjs(updates_file, run)
            say(
                f"run {run} reference: load {reference.load[-1]:.3f}, rebuild "
                f"{reference.rebuild[-1]:.3f}"
                + (f", yjs {reference.yjs[-1]:.3f}" if reference.yjs else "")
            )
    report = [
        header(options, argv, (load_before, load_average()), history, node, commit),
        "",
        summary_table(history, cases, reference),
        "",
        times_table(history, cases),
        "",
        reference_table(history, cases, reference),
        "",
        build_table(history, cases),
        "",
    ]
    if calls.problems:
        report += ["**Problems:**", "", *(f"- {p}" for p in calls.problems[:50]), ""]
    text = "\n".join(report)
    publish(text, options.output)
    return 1 if calls.problems else 0


def main() -> None:
    options = parse_options(sys.argv[1:])
    sys.exit(anyio.run(benchmark, options, sys.argv))


if __name__ == "__main__":
    main()
