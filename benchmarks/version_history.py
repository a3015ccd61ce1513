"""Version history on a long document: content at a version, restore, and diff.

Usage:

    python benchmarks/version_history.py            # the whole trace, 5 runs (about 6 minutes)
    python benchmarks/version_history.py --quick    # smoke run: 20,000 edits, 2 runs (about 15 s)
    python benchmarks/version_history.py --runs 3 --diff-runs 1 --no-node

Everything runs in this one process through the engine's own code (`Engine`,
`engine.history`, `SQLStore` over SQLite files in a temporary directory), except
the Yjs reference, which runs in Node.

The history
-----------
The `automerge-paper` editing trace (/work/shared/traces, 259,778 transactions of
one one-character patch each) is replayed into one pycrdt `Doc`, a `Text` root
"text", one transaction per trace transaction; each transaction's update
(`Doc.observe`) is one entry of the document's log, so the log has one row per
edit. Trace positions are Unicode code points and pycrdt indexes `Text` by UTF-8
bytes: the replay keeps the text as a Python string beside the document and
converts every position (and deleted length) to bytes through it, the identity
while the text is ASCII (the whole trace is; the conversion is there for any
other). The string is the independent check: at the end it must equal the trace's
`endContent` (with `--edits`, the first N edits applied to a string), and the
document's text must equal it. The texts at the versions' seqs are kept to check
every content, restore and diff against.

The entries are appended with `SQLStore.append` in batches of 10,000 (one
transaction each), the author changing every 10,000 edits between "user:alice"
and "user:bob", so that a version's editors and a diff's authors are more than
one. Then five versions are recorded with `store.add_version`: at seq 1 (the
oldest), at 1/4, 1/2 (the middle) and 3/4 of the log, and at its last seq (the
newest). Three SQLite files hold the same log and versions:

* (a) log only: no snapshot, so content at any version replays the log from seq 1;
* (b) snapshot at the end: then `Engine.compact` (a snapshot at the last seq, as
  the engine's compaction leaves a document after a burst of edits); content at
  the newest version is that snapshot, at any other the log from seq 1;
* (c) a snapshot every 1,000 updates: the state after every 1,000th edit written
  with `store.snapshot`, what the engine's default compaction
  (`compact_after_updates` = 1,000) leaves behind a document edited for a long
  time; content at any version replays at most 999 updates after a snapshot.

Measured
--------
Per run and per case (cases one after the other within each run), with
`Engine(EngineConfig(history=HistoryPolicy(enabled=False), compact_after_updates=
NEVER, compact_after_bytes=NEVER), store)`: compaction is kept out of reach so
that nothing but the measured call reads or writes (a background compaction
would both take the CPU and change what later calls load).

* `engine.history.content(name, id)` at the oldest, middle and newest versions;
  each result's text must equal the replayed text at that seq, and its `seq` the
  version's.
* `engine.history.diff(name, middle, newest)` (`--diff-runs` of the runs); its
  text changes, applied to the middle text in UTF-16 code units, must give the
  newest text, and its editors must be the authors of that range.
* `engine.history.restore(name, id, author="bench")` to the oldest and to the
  middle version, the room not loaded (nobody editing: the call loads it). A
  restore writes (one update and one version), so each one runs on its own copy
  of the case's file, made with SQLite's backup API, in a fresh `Engine`; the
  copy is deleted afterwards. After it, the document's current content and the
  content at the version the restore recorded must both equal the restored
  version's text. For scale, the same run times a cold `engine.room(name)` open
  on the case's file (compaction off, so opening writes nothing): the part of a
  restore that is loading the room.

The reference, per run: the whole log read with `store.load()` from (a) and
rebuilt with `collab_engine.store.rebuild` in a worker thread (what the engine
does to open a room without a snapshot), and, when Node and the `yjs` package of
tests/interop are there, Node applying the same updates, one `Y.applyUpdate` each,
to a new `Y.Doc` (in memory, read from a file first; the timing covers the
applying only), whose text must equal the final text. The ratio content /
(load + rebuild) tells what version history adds on top of plain rebuilding.

Every figure is the median over the runs, with the smallest and largest. A
check that fails is listed under Problems and the script exits 1. With
`--quick`, the table is printed only, not written, unless `--output` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from harness import provenance
from harness.provenance import (
    INTEROP,
    filesystem_of,
    load_average,
    node_version,
    version,
    yjs_version,
)
from harness.report import publish, say, seconds
from harness.stats import median
from harness.stores import checkpoint
from harness.traces import AUTOMERGE_PAPER, read_trace
from pycrdt import Doc, Text, TransactionEvent

from collab_engine import Engine, EngineConfig
from collab_engine.history import HistoryPolicy
from collab_engine.store import Entry, Version, rebuild
from collab_engine.types import Update
from storage.sql import SQLStore, sqlite_url

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "version_history.md"
DEFAULT_TRACE = AUTOMERGE_PAPER
"""Where the npm `yjs` used by the interoperability tests is installed."""

DOC = "automerge-paper"
TEXT = "text"
AUTHORS = ("user:alice", "user:bob")
AUTHOR_RUN = 10_000
"""Edits in a row by one author."""
APPEND_BATCH = 10_000
SNAPSHOT_EVERY = 1_000
"""Case (c): a snapshot after every this many updates (the default `compact_after_updates`)."""
NEVER = 10**15
SLOW = 60.0
"""A history call slower than this many seconds is reported as a problem."""

OLDEST, QUARTER, MIDDLE, THREE_QUARTERS, NEWEST = (
    "oldest",
    "quarter",
    "middle",
    "three quarters",
    "newest",
)


def config() -> EngineConfig:
    return EngineConfig(
        history=HistoryPolicy(enabled=False),
        compact_after_updates=NEVER,
        compact_after_bytes=NEVER,
    )


# -- the history -----------------------------------------------------------------------


@dataclass(slots=True)
class History:
    updates: list[Update]
    authors: list[str]
    seqs: dict[str, int]
    """The seq of each version, by name."""
    texts: dict[int, str]
    """The text after each version's seq."""
    snapshots: list[tuple[int, Update]]
    """The state after every `SNAPSHOT_EVERY`th update, for case (c)."""
    expected: str
    edits: int
    replay_seconds: float
    non_ascii_patches: int


def version_seqs(edits: int) -> dict[str, int]:
    return {
        OLDEST: 1,
        QUARTER: max(1, edits // 4),
        MIDDLE: max(1, edits // 2),
        THREE_QUARTERS: max(1, 3 * edits // 4),
        NEWEST: edits,
    }


def author_of(seq: int) -> str:
    return AUTHORS[((seq - 1) // AUTHOR_RUN) % len(AUTHORS)]


def read_history(path: Path, limit: int | None) -> History:
    """Replay the trace (its first `limit` transactions) with pycrdt, one transaction
    and so one update each, converting code-point positions to UTF-8 byte offsets."""
    trace = read_trace(path)
    assert trace.get("startContent", "") == "", "the trace must start from an empty text"
    txns = trace["txns"] if limit is None else trace["txns"][:limit]
    edits = len(txns)
    seqs = version_seqs(edits)
    wanted = set(seqs.values())

    started = time.perf_counter()
    doc: Doc[Any] = Doc()
    text = doc.get(TEXT, type=Text)
    updates: list[Update] = []

    def keep(event: TransactionEvent) -> None:
        updates.append(event.update)

    subscription = doc.observe(keep)
    plain = ""  # the text in code points, as the trace counts
    wide = 0  # its characters that are more than one UTF-8 byte
    non_ascii_patches = 0
    texts: dict[int, str] = {}
    snapshots: list[tuple[int, Update]] = []
    for seq, txn in enumerate(txns, 1):
        with doc.transaction():
            for position, deleted, inserted in txn["patches"]:
                position, deleted, inserted = int(position), int(deleted), str(inserted)
                start = len(plain[:position].encode()) if wide else position
                if deleted:
                    gone = plain[position : position + deleted]
                    if wide and not gone.isascii():
                        length = len(gone.encode())
                        wide -= sum(1 for c in gone if ord(c) > 0x7F)
                    else:
                        length = deleted
                    del text[start : start + length]
                if inserted:
                    if not inserted.isascii():
                        non_ascii_patches += 1
                        wide += sum(1 for c in inserted if ord(c) > 0x7F)
                    text.insert(start, inserted)
                plain = plain[:position] + inserted + plain[position + deleted :]
        if seq in wanted:
            texts[seq] = plain
        if seq % SNAPSHOT_EVERY == 0:
            snapshots.append((seq, doc.get_update()))
    doc.unobserve(subscription)
    replay_seconds = time.perf_counter() - started
    if limit is None or limit >= len(trace["txns"]):
        assert plain == trace["endContent"], "the replayed string differs from endContent"
    assert str(text) == plain, "pycrdt's text differs from the trace applied to a string"
    assert len(updates) == edits, f"{len(updates)} updates for {edits} transactions"
    return History(
        updates=updates,
        authors=[author_of(seq) for seq in range(1, edits + 1)],
        seqs=seqs,
        texts=texts,
        snapshots=snapshots,
        expected=plain,
        edits=edits,
        replay_seconds=replay_seconds,
        non_ascii_patches=non_ascii_patches,
    )


# -- the cases -------------------------------------------------------------------------


@dataclass(slots=True)
class Case:
    key: str
    label: str
    path: Path
    snapshots: str
    """"none", "end" or "every"."""
    versions: dict[str, Version] = field(default_factory=dict)
    append_seconds: float = math.nan
    snapshot_seconds: float = math.nan
    snapshot_count: int = 0
    file_bytes: int = 0
    replayed: dict[str, int] = field(default_factory=dict)
    """Updates after the snapshot a load up to each version's seq returns."""
    times: dict[str, list[float]] = field(default_factory=dict)

    def record(self, what: str, value: float) -> None:
        self.times.setdefault(what, []).append(value)


async def build_case(case: Case, history: History) -> None:
    """Write the log, the versions and the case's snapshots to a new SQLite file."""
    store = await SQLStore.connect(sqlite_url(str(case.path)))
    try:
        started = time.perf_counter()
        for start in range(0, history.edits, APPEND_BATCH):
            await store.append(
                [
                    Entry(DOC, update, author)
                    for update, author in zip(
                        history.updates[start : start + APPEND_BATCH],
                        history.authors[start : start + APPEND_BATCH],
                        strict=True,
                    )
                ]
            )
        case.append_seconds = time.perf_counter() - started
        for name, seq in history.seqs.items():
            case.versions[name] = await store.add_version(DOC, seq, label=name, author="bench")
        started = time.perf_counter()
        if case.snapshots == "end":
            async with Engine(config(), store) as engine:
                compacted = await engine.compact(DOC)
            assert compacted == history.edits, (compacted, history.edits)
            case.snapshot_count = 1
        elif case.snapshots == "every":
            for at, state in history.snapshots:
                await store.snapshot(DOC, state, at)
            case.snapshot_count = len(history.snapshots)
        case.snapshot_seconds = time.perf_counter() - started
        for name, seq in history.seqs.items():
            case.replayed[name] = len((await store.load(DOC, seq)).updates)
        await checkpoint(store)
    finally:
        await store.aclose()
    case.file_bytes = case.path.stat().st_size


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite file, write-ahead log included (backup API)."""
    with contextlib.closing(sqlite3.connect(source)) as src:
        with contextlib.closing(sqlite3.connect(target)) as dst:
            src.backup(dst)


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def text_of(content: dict[str, Any]) -> str | None:
    root = content["roots"].get(TEXT)
    return None if root is None else root.get("text")


def utf16(text: str) -> bytes:
    return text.encode("utf-16-le", "surrogatepass")


def apply_text_changes(before: str, changes: list[dict[str, Any]]) -> str:
    """The text `changes` (a diff's, indexes in the text at the second point, UTF-16
    code units) make of `before`; raises ValueError when a deletion does not match."""
    old = utf16(before)
    out: list[bytes] = []
    cursor = 0  # in `old`, code units
    index = 0  # in the result, code units
    for change in changes:
        kept = change["index"] - index
        if kept < 0:
            raise ValueError(f"change out of order: {change}")
        out.append(old[2 * cursor : 2 * (cursor + kept)])
        cursor += kept
        index += kept
        data = utf16(change["text"])
        if change["op"] == "insert":
            out.append(data)
            index += change["length"]
        else:
            if old[2 * cursor : 2 * (cursor + change["length"])] != data:
                raise ValueError(f"deleted text differs at {cursor}: {change['text'][:40]!r}")
            cursor += change["length"]
    out.append(old[2 * cursor :])
    return b"".join(out).decode("utf-16-le", "surrogatepass")


class Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)
            say(f"PROBLEM: {message}")

    def timed(self, what: str, elapsed: float) -> None:
        if elapsed > SLOW:
            self.check(False, f"{what} took {elapsed:.1f} s (over {SLOW:.0f} s)")


async def measure_reads(
    case: Case, history: History, checker: Checker, run: int, with_diff: bool
) -> None:
    """One run of the read-only calls on the case's own file: a cold open, content at
    three versions, and (when `with_diff`) the diff middle to newest."""
    store = await SQLStore.connect(sqlite_url(str(case.path)))
    try:
        async with Engine(config(), store) as engine:
            started = time.perf_counter()
            async with engine.room(DOC) as room:
                opened = time.perf_counter() - started
                checker.check(
                    str(room.doc.get(TEXT, type=Text)) == history.expected,
                    f"{case.key} run {run}: the opened room's text differs",
                )
            case.record("open", opened)
            checker.timed(f"{case.key} cold open", opened)
        # A new engine, so that the room opened above is not there to read from.
        async with Engine(config(), store) as engine:
            for name in (OLDEST, MIDDLE, NEWEST):
                version = case.versions[name]
                started = time.perf_counter()
                content = await engine.history.content(DOC, version.id)
                elapsed = time.perf_counter() - started
                case.record(f"content {name}", elapsed)
                checker.timed(f"{case.key} content at the {name} version", elapsed)
                checker.check(
                    text_of(content) == history.texts[version.seq]
                    and content["seq"] == version.seq,
                    f"{case.key} run {run}: content at the {name} version (seq {version.seq}) "
                    "differs from the trace's text there",
                )
            if with_diff:
                start, end = case.versions[MIDDLE], case.versions[NEWEST]
                started = time.perf_counter()
                changes = await engine.history.diff(DOC, start.id, end.id)
                elapsed = time.perf_counter() - started
                case.record("diff", elapsed)
                checker.timed(f"{case.key} diff", elapsed)
                text_changes = changes["roots"][TEXT]["changes"]
                try:
                    rebuilt = apply_text_changes(history.texts[start.seq], text_changes)
                    problem = None if rebuilt == history.texts[end.seq] else "a different text"
                except (ValueError, KeyError) as error:
                    problem = str(error)
                checker.check(
                    problem is None,
                    f"{case.key} run {run}: the diff's changes applied to the middle text "
                    f"do not give the newest ({problem})",
                )
                authors = list(dict.fromkeys(history.authors[start.seq : end.seq]))
                checker.check(
                    changes["editors"] == authors and changes["seq"] == end.seq,
                    f"{case.key} run {run}: diff editors {changes['editors']} / seq "
                    f"{changes['seq']}, expected {authors} / {end.seq}",
                )
                case.record("diff changes", float(len(text_changes)))
    finally:
        await store.aclose()


async def measure_restore(
    case: Case, history: History, checker: Checker, run: int, name: str, directory: Path
) -> None:
    """Restore to version `name` on a fresh copy of the case's file, the room not loaded."""
    copy = directory / f"restore-{case.key}.db"
    remove_database(copy)
    copy_database(case.path, copy)
    version = case.versions[name]
    wanted = history.texts[version.seq]
    store = await SQLStore.connect(sqlite_url(str(copy)))
    try:
        async with Engine(config(), store) as engine:
            started = time.perf_counter()
            restored = await engine.history.restore(DOC, version.id, author="bench")
            elapsed = time.perf_counter() - started
            case.record(f"restore {name}", elapsed)
            checker.timed(f"{case.key} restore to the {name} version", elapsed)
            now = await engine.history.content(DOC, None)
            checker.check(
                text_of(now) == wanted,
                f"{case.key} run {run}: after restoring the {name} version the text differs "
                "from the text at that version",
            )
        async with Engine(config(), store) as engine:
            later = await engine.history.content(DOC, restored.id)
            checker.check(
                text_of(later) == wanted
                and restored.seq == history.edits + 1
                and (restored.label or "").startswith(f"Restored version {version.id}"),
                f"{case.key} run {run}: the version the restore to {name} recorded "
                f"(seq {restored.seq}, {restored.label!r}) does not hold the restored text",
            )
    finally:
        await store.aclose()
        remove_database(copy)


# -- the reference ---------------------------------------------------------------------


@dataclass(slots=True)
class Reference:
    load: list[float] = field(default_factory=list)
    rebuild: list[float] = field(default_factory=list)
    yjs: list[float] = field(default_factory=list)
    yjs_note: str = ""


async def measure_rebuild(
    case: Case, history: History, reference: Reference, checker: Checker, run: int
) -> None:
    store = await SQLStore.connect(sqlite_url(str(case.path)))
    try:
        started = time.perf_counter()
        stored = await store.load(DOC)
        loaded = time.perf_counter()
        doc = await anyio.to_thread.run_sync(rebuild, DOC, stored)
        rebuilt = time.perf_counter()
    finally:
        await store.aclose()
    checker.check(
        len(stored.updates) == history.edits and stored.snapshot is None,
        f"reference run {run}: load() of ({case.key}) did not return the whole log",
    )
    checker.check(
        str(doc.get(TEXT, type=Text)) == history.expected,
        f"reference run {run}: the rebuilt text differs",
    )
    reference.load.append(loaded - started)
    reference.rebuild.append(rebuilt - loaded)


NODE_SCRIPT = r"""
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
const [packageJson, updatesPath] = process.argv.slice(1);
const require = createRequire(packageJson);
const Y = require("yjs");
const data = readFileSync(updatesPath);
const updates = [];
for (let offset = 0; offset < data.length; ) {
  const length = data.readUInt32LE(offset);
  updates.push(new Uint8Array(data.buffer, data.byteOffset + offset + 4, length));
  offset += 4 + length;
}
const doc = new Y.Doc();
const started = performance.now();
for (const update of updates) Y.applyUpdate(doc, update);
const applied = performance.now();
const text = doc.getText("text").toString();
process.stdout.write(JSON.stringify({
  seconds: (applied - started) / 1000, updates: updates.length, text,
}));
"""


def write_updates(updates: Sequence[Update], path: Path) -> None:
    with path.open("wb") as file:
        for update in updates:
            file.write(len(update).to_bytes(4, "little"))
            file.write(update)


async def measure_yjs(
    updates_file: Path, history: History, reference: Reference, checker: Checker, run: int
) -> None:
    """Node, a new process each run: `Y.applyUpdate` of every update into one new `Y.Doc`."""
    result = await anyio.run_process(
        [
            "node",
            "--input-type=module",
            "-e",
            NODE_SCRIPT,
            str(INTEROP / "package.json"),
            str(updates_file),
        ],
        check=False,
    )
    if result.returncode != 0:
        checker.check(False, f"yjs run {run}: node failed: {result.stderr.decode()[-500:]}")
        return
    answer = json.loads(result.stdout)
    checker.check(
        answer["updates"] == history.edits and answer["text"] == history.expected,
        f"yjs run {run}: the text Yjs built differs from the trace's",
    )
    reference.yjs.append(float(answer["seconds"]))


# -- the report ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    runs: int
    diff_runs: int
    trace: Path
    edits: int | None
    node: bool
    output: Path | None
    quick: bool


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
    tmp = tempfile.gettempdir()
    peer = f", Node {node} with yjs {yjs_version()}" if node else ""
    return "\n".join(
        [
            "# Version history: content at a version, restore and diff on a long history",
            "",
            f"- command: `{provenance.command_line(argv)}`",
            f"- date: {provenance.utc_now()}",
            f"- machine: {provenance.machine()}; "
            f"1-minute load average {load[0]} before, {load[1]} after; "
            f"temporary files in {tmp} ({filesystem_of(os.path.realpath(tmp))})",
            f"- Python {sys.version.split()[0]}, pycrdt {version('pycrdt')}, SQLAlchemy "
            f"{version('sqlalchemy')}, aiosqlite {version('aiosqlite')} (SQLite "
            f"{sqlite3.sqlite_version}){peer}, collab-engine commit {commit}",
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


ROWS = [
    ("content oldest", "`history.content`, oldest version (seq {oldest})", OLDEST),
    ("content middle", "`history.content`, middle version (seq {middle})", MIDDLE),
    ("content newest", "`history.content`, newest version (seq {newest})", NEWEST),
    ("diff", "`history.diff`, middle to newest", MIDDLE),
    ("restore oldest", "`history.restore` to the oldest version, room not loaded", NEWEST),
    ("restore middle", "`history.restore` to the middle version, room not loaded", NEWEST),
    ("open", "for scale: cold `engine.room()` open", NEWEST),
]


SUMMARY = [
    ("content oldest", "content at the oldest version"),
    ("content middle", "content at the middle version"),
    ("content newest", "content at the newest version"),
    ("diff", "diff, middle to newest"),
    ("restore oldest", "restore to the oldest version"),
    ("restore middle", "restore to the middle version"),
    ("open", "for scale: cold room open"),
]


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
    for key, label in SUMMARY:
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
    values = {
        "oldest": f"{history.seqs[OLDEST]:,}",
        "middle": f"{history.seqs[MIDDLE]:,}",
        "newest": f"{history.seqs[NEWEST]:,}",
    }
    lines = [
        f"## Times on `{DOC}`, {history.edits:,} edits, in seconds",
        "",
        "Updates replayed: log entries applied after the snapshot the call starts from "
        "(a restore replays those of its version, then opens the room, which replays "
        "those after the newest snapshot; a diff also reads and applies the "
        f"{history.seqs[NEWEST] - history.seqs[MIDDLE]:,} entries between its versions"
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
    for key, label, replayed_at in ROWS:
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
        replayed = " / ".join(f"{case.replayed[name]:,}" for name in history.seqs)
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
        quick=quick,
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
    checker = Checker()
    say(f"replaying {options.trace.name} ...")
    history = read_history(options.trace, options.edits)
    say(f"{history.edits:,} updates in {history.replay_seconds:.1f} s")
    node = node_version() if options.node else None
    reference = Reference()
    if options.node and node is None:
        reference.yjs_note = (
            "Yjs reference skipped: no `node`, or no tests/interop/node_modules/yjs."
        )
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        directory = Path(tmp)
        cases = [
            Case("a", "(a) log only", directory / "log.db", "none"),
            Case("b", "(b) snapshot at the end", directory / "end.db", "end"),
            Case(
                "c",
                f"(c) snapshot every {SNAPSHOT_EVERY:,} updates",
                directory / "every.db",
                "every",
            ),
        ]
        for case in cases:
            say(f"writing {case.label} ...")
            await build_case(case, history)
        updates_file = directory / "updates.bin"
        if node is not None:
            write_updates(history.updates, updates_file)
        for run in range(1, options.runs + 1):
            for case in cases:
                await measure_reads(case, history, checker, run, run <= options.diff_runs)
                for name in (OLDEST, MIDDLE):
                    await measure_restore(case, history, checker, run, name, directory)
                say(
                    f"run {run} {case.label}: "
                    + ", ".join(
                        f"{what} {values[-1]:.3f}"
                        for what, values in case.times.items()
                        if what != "diff changes"
                    )  # fmt: skip
                )
            await measure_rebuild(cases[0], history, reference, checker, run)
            if node is not None:
                await measure_yjs(updates_file, history, reference, checker, run)
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
    if checker.problems:
        report += ["**Problems:**", "", *(f"- {p}" for p in checker.problems[:50]), ""]
    text = "\n".join(report)
    publish(text, options.output)
    return 1 if checker.problems else 0


def main() -> None:
    options = parse_options(sys.argv[1:])
    sys.exit(anyio.run(benchmark, options, sys.argv))


if __name__ == "__main__":
    main()
