"""A long editing history as a document's log in SQLite files, and the two ways a room
comes back from it, timed: what `durable_storage.py` and `version_history.py` share.

The history (`read_history`): an editing trace (/work/shared/traces) replayed with
pycrdt into one `Doc` with a `Text` root "text", one transaction per trace
transaction; each transaction's update (`Doc.observe`) is one entry of the log.
Trace positions are Unicode code points and pycrdt indexes `Text` by UTF-8 bytes, so
before the replay the trace is applied to a Python string, which converts every
position (and deleted length) to bytes (the identity while the text is ASCII, as
`automerge-paper` is throughout). The string is the independent check: when the
whole trace is used it must equal the trace's `endContent`, and the document's text
must equal it after the replay. It also gives the text after any seq asked for. The
replay alone is timed; it also keeps the state after every `snapshot_every`th
update, when asked.

The files (`Case`, `build_case`): the updates appended with `SQLStore.append` in
batches of 10,000 (one transaction each), with the caller's authors; then, as the
case says, no snapshot, one written by `Engine.compact` after all but the case's
last `tail` updates (which follow it), or the replay's states written with
`store.snapshot`; then `PRAGMA wal_checkpoint(TRUNCATE)` and the file's size. The
engines here keep compaction out of reach (`engine_config`): a background
compaction would take the CPU and change what later calls load.

The timings: `load_and_rebuild`, `store.load()` then `rebuild` in a worker thread
(what the engine does to open a room), and `open_cold`, `engine.room(name)` in a new
`Engine`, both; `measure_opening` takes the three on one case. "Cold" is the room's state: the file is in the operating system's
page cache, as a recently written database would be.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from pycrdt import Doc, Text, TransactionEvent

from collab_engine import Engine, EngineConfig
from collab_engine.store import Entry, Stored, Version, rebuild
from collab_engine.types import Update
from harness.replay import TEXT, text_of
from harness.report import seconds
from harness.stats import median
from harness.stores import checkpoint, file_bytes
from harness.traces import read_trace
from storage.sql import SQLStore, sqlite_url

DOC = "automerge-paper"
"""The document's name in every file (the default trace's)."""
APPEND_BATCH = 10_000
"""Updates per `SQLStore.append` (one transaction) when the log is written."""
NEVER = 10**15
"""A compaction threshold never reached: the benchmarks decide when snapshots are made."""


def engine_config(**settings: Any) -> EngineConfig:
    """`EngineConfig(**settings)` with compaction out of reach."""
    return EngineConfig(compact_after_updates=NEVER, compact_after_bytes=NEVER, **settings)


@dataclass(slots=True)
class History:
    """An editing trace replayed with pycrdt, one update per trace transaction."""

    updates: list[Update]
    expected: str
    """The text at the end, from the trace applied to a Python string."""
    edits: int
    replay_seconds: float
    """The pycrdt replay alone."""
    texts: dict[int, str]
    """The text after each seq asked for."""
    snapshots: list[tuple[int, Update]]
    """The state after every `snapshot_every`th update, when asked."""
    non_ascii_patches: int


Patch = tuple[int, int, str]
"""Where (UTF-8 bytes), how many bytes to delete, and what to insert."""


def byte_patches(
    txns: Sequence[dict[str, Any]], wanted: Collection[int]
) -> tuple[list[list[Patch]], str, dict[int, str], int]:
    """The trace's transactions with UTF-8 positions, its text at the end and after
    each seq in `wanted`, and how many patches insert non-ASCII text."""
    plain = ""  # the text in code points, as the trace counts
    wide = 0  # its characters that are more than one UTF-8 byte
    non_ascii_patches = 0
    steps: list[list[Patch]] = []
    texts: dict[int, str] = {}
    for seq, txn in enumerate(txns, 1):
        step: list[Patch] = []
        for position, deleted, inserted in txn["patches"]:
            position, deleted, inserted = int(position), int(deleted), str(inserted)
            start = len(plain[:position].encode()) if wide else position
            length = deleted
            if deleted and wide:
                gone = plain[position : position + deleted]
                if not gone.isascii():
                    length = len(gone.encode())
                    wide -= sum(1 for c in gone if ord(c) > 0x7F)
            if inserted and not inserted.isascii():
                non_ascii_patches += 1
                wide += sum(1 for c in inserted if ord(c) > 0x7F)
            step.append((start, length, inserted))
            plain = plain[:position] + inserted + plain[position + deleted :]
        steps.append(step)
        if seq in wanted:
            texts[seq] = plain
    return steps, plain, texts, non_ascii_patches


def read_history(
    path: Path,
    limit: int | None = None,
    *,
    texts_at: Callable[[int], Collection[int]] = lambda edits: (),
    snapshot_every: int = 0,
) -> History:
    """Replay the trace (its first `limit` transactions) with pycrdt; keep the text
    after the seqs `texts_at(edits)` names, and the state every `snapshot_every`."""
    trace = read_trace(path)
    assert trace.get("startContent", "") == "", "the trace must start from an empty text"
    txns = trace["txns"] if limit is None else trace["txns"][:limit]
    edits = len(txns)
    steps, expected, texts, non_ascii_patches = byte_patches(txns, set(texts_at(edits)))
    if limit is None or limit >= len(trace["txns"]):
        assert expected == trace["endContent"], "the replayed string differs from endContent"

    started = time.perf_counter()
    doc: Doc[Any] = Doc()
    text = doc.get(TEXT, type=Text)
    updates: list[Update] = []

    def keep(event: TransactionEvent) -> None:
        updates.append(event.update)

    subscription = doc.observe(keep)
    snapshots: list[tuple[int, Update]] = []
    for seq, step in enumerate(steps, 1):
        with doc.transaction():
            for start, length, inserted in step:
                if length:
                    del text[start : start + length]
                if inserted:
                    text.insert(start, inserted)
        if snapshot_every and seq % snapshot_every == 0:
            snapshots.append((seq, doc.get_update()))
    doc.unobserve(subscription)
    replay_seconds = time.perf_counter() - started
    assert str(text) == expected, "pycrdt's text differs from the trace applied to a string"
    assert len(updates) == edits, f"{len(updates)} updates for {edits} transactions"
    return History(updates, expected, edits, replay_seconds, texts, snapshots, non_ascii_patches)


@dataclass(slots=True)
class Case:
    """One SQLite file holding the history: how it is built, what building it took, and
    the times measured on it (by name, one value a run)."""

    key: str
    label: str
    path: Path
    snapshots: str = "none"
    """"none", "end" (`Engine.compact` after all but `tail` updates) or "every" (the
    replay's states)."""
    tail: int = 0
    append_seconds: float = math.nan
    """Appending the log before the snapshot."""
    snapshot_seconds: float = math.nan
    snapshot_count: int = 0
    file_bytes: int = 0
    snapshot_bytes: int = 0
    """The newest snapshot's."""
    replayed_on_load: int = 0
    """Updates after the newest snapshot: what opening the room replays."""
    versions: dict[str, Version] = field(default_factory=dict)
    replayed: dict[str, int] = field(default_factory=dict)
    """Updates after the snapshot a load up to each version's seq returns."""
    times: dict[str, list[float]] = field(default_factory=dict)

    def record(self, what: str, value: float) -> None:
        self.times.setdefault(what, []).append(value)


async def append_log(store: SQLStore, updates: Sequence[Update], authors: Sequence[str]) -> float:
    """Append the updates in batches of `APPEND_BATCH`; the seconds it took."""
    started = time.perf_counter()
    for start in range(0, len(updates), APPEND_BATCH):
        await store.append(
            [
                Entry(DOC, update, author)
                for update, author in zip(
                    updates[start : start + APPEND_BATCH],
                    authors[start : start + APPEND_BATCH],
                    strict=True,
                )
            ]
        )
    return time.perf_counter() - started


async def build_case(
    case: Case,
    history: History,
    config: EngineConfig,
    authors: Sequence[str],
    versions: Mapping[str, int] | None = None,
) -> SQLStore:
    """Write the log, the `versions` (name: seq, after the log) and the case's
    snapshots to a new SQLite file; the store, still open, for the caller to close."""
    store = await SQLStore.connect(sqlite_url(str(case.path)))
    try:
        head = history.edits - case.tail
        case.append_seconds = await append_log(store, history.updates[:head], authors[:head])
        for name, seq in (versions or {}).items():
            case.versions[name] = await store.add_version(DOC, seq, label=name, author="bench")
        started = time.perf_counter()
        if case.snapshots == "end":
            async with Engine(config, store) as engine:
                compacted = await engine.compact(DOC)
            assert compacted == head, (compacted, head)
            case.snapshot_count = 1
        elif case.snapshots == "every":
            for at, state in history.snapshots:
                await store.snapshot(DOC, state, at)
            case.snapshot_count = len(history.snapshots)
        case.snapshot_seconds = time.perf_counter() - started
        await append_log(store, history.updates[head:], authors[head:])
        await checkpoint(store)
        case.file_bytes = file_bytes(case.path)
        for name, version in case.versions.items():
            case.replayed[name] = len((await store.load(DOC, version.seq)).updates)
        stored = await store.load(DOC)
        assert stored.last_seq == history.edits, (stored.last_seq, history.edits)
        case.snapshot_bytes = len(stored.snapshot or b"")
        case.replayed_on_load = len(stored.updates)
    except BaseException:
        await store.aclose()
        raise
    return store


async def load_and_rebuild(store: SQLStore) -> tuple[float, float, Stored, Doc[Any]]:
    """Seconds to `store.load()` the document, and to rebuild it in a worker thread."""
    started = time.perf_counter()
    stored = await store.load(DOC)
    loaded = time.perf_counter()
    doc = await anyio.to_thread.run_sync(rebuild, DOC, stored)
    return loaded - started, time.perf_counter() - loaded, stored, doc


async def open_cold(store: SQLStore, config: EngineConfig) -> tuple[float, str]:
    """Seconds to open the document's room in a new `Engine`, and the room's text."""
    async with Engine(config, store) as engine:
        started = time.perf_counter()
        async with engine.room(DOC) as room:
            opened = time.perf_counter() - started
            return opened, text_of(room.doc)


async def measure_opening(case: Case, store: SQLStore, config: EngineConfig, expected: str) -> None:
    """One run of the three timings of bringing the room back: `store.load()`, the
    rebuild, and a cold open; each text checked."""
    loaded, rebuilt, stored, doc = await load_and_rebuild(store)
    assert text_of(doc) == expected, f"{case.key}: rebuilt text differs"
    del doc, stored
    opened, text = await open_cold(store, config)
    assert text == expected, f"{case.key}: the opened room's text differs"
    for what, value in (("load", loaded), ("rebuild", rebuilt), ("open", opened)):
        case.record(what, value)


def history_tables(
    history: History, cases: Sequence[Case], space: dict[str, int], runs: int
) -> str:
    """Parts 2 and 3 of durable_storage: opening the long history, and its bytes on disk
    (`space`: SQLite's `dbstat` of the file with a snapshot)."""
    edits = history.edits
    raw = sum(len(update) for update in history.updates)
    per_thousand = 1000 / edits
    lines = [
        f"## 2. Opening a room with a long history: `{DOC}`, {edits:,} edits",
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
        f"| {case.label} | {case.replayed_on_load:,} | {seconds(median(case.times['load']))} "
        f"| {seconds(median(case.times['rebuild']))} | {seconds(median(case.times['open']))} |"
        for case in cases
    )
    log_only = next(c for c in cases if c.key == "a")
    lines += [
        "",
        f"Writing the history: {edits:,} updates appended in batches of {APPEND_BATCH:,} took "
        f"{log_only.append_seconds:.2f} s ({edits / log_only.append_seconds:,.0f} updates/s); "
        + "; ".join(
            f"`Engine.compact` for ({c.key}) {c.snapshot_seconds:.2f} s"
            for c in cases
            if c.snapshot_count
        )
        + ".",
        "",
        f"## 3. Bytes on disk for `{DOC}` (SQLite, after `wal_checkpoint(TRUNCATE)`)",
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
    if space:
        names = {
            "updates": "`updates` table (rowid B-tree: document, seq, data, author, created_at)",
            "sqlite_autoindex_updates_1": "`updates` primary key index (document, seq)",
            "snapshots": "`snapshots` table",
            "sqlite_autoindex_snapshots_1": "`snapshots` primary key index",
        }
        space = dict(space)
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
