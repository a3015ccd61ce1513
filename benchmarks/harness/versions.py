"""Version history's calls on a history's files (`harness.history`), timed and checked,
and the reference they are measured against (`Calls`): what `version_history.py` runs.

Every call runs through `Engine(config, store)`, a new engine for each group of
calls, so that a room opened before is not there to read from:

* `Calls.reads`: a cold `engine.room(name)` open, for scale (the part of a restore
  that is loading the room); `engine.history.content(name, id)` at the oldest,
  middle and newest versions, each result's text equal to the replayed text at that
  seq and its `seq` the version's; and, when asked, `engine.history.diff(name,
  middle, newest)`, whose text changes, applied to the middle text in UTF-16 code
  units (`apply_text_changes`), must give the newest text, and whose editors must be
  the authors of that range.
* `Calls.restore`: `engine.history.restore(name, id, author="bench")`, the room not
  loaded (nobody editing: the call loads it). A restore writes (one update and one
  version), so each one runs on its own copy of the case's file, made with SQLite's
  backup API, deleted afterwards. After it, the document's current content and the
  content at the version the restore recorded must both equal the restored
  version's text.
* The reference (`Reference`): the whole log loaded from a case without snapshots
  and rebuilt in a worker thread (`Calls.rebuild`: what the engine does to open a
  room without a snapshot), and Node applying the same updates, one `Y.applyUpdate`
  each, to a new `Y.Doc` (`Calls.yjs`, `benchmarks/peers/yjs_replay.mjs apply`: in
  memory, read from a file first; the timing covers the applying only), whose text
  must equal the final text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from collab_engine import Engine, EngineConfig
from harness.history import DOC, TEXT, Case, History, load_and_rebuild, open_cold, text_of
from harness.report import say
from harness.stores import copy_database, remove_database
from harness.yjs import run_replay
from storage.sql import SQLStore, sqlite_url

SLOW = 60.0
"""A history call slower than this many seconds is reported as a problem."""

OLDEST, QUARTER, MIDDLE, THREE_QUARTERS, NEWEST = (
    "oldest",
    "quarter",
    "middle",
    "three quarters",
    "newest",
)


def version_seqs(edits: int) -> dict[str, int]:
    """The versions recorded on a log of `edits` updates, by name: seq 1, 1/4, 1/2 and
    3/4 of the log, and its last seq."""
    return {
        OLDEST: 1,
        QUARTER: max(1, edits // 4),
        MIDDLE: max(1, edits // 2),
        THREE_QUARTERS: max(1, 3 * edits // 4),
        NEWEST: edits,
    }


def content_text(content: dict[str, Any]) -> str | None:
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


@dataclass(slots=True)
class Reference:
    load: list[float] = field(default_factory=list)
    rebuild: list[float] = field(default_factory=list)
    yjs: list[float] = field(default_factory=list)
    yjs_note: str = ""


class Calls:
    """The version-history calls on one history's files, timed and checked: each time
    goes to its case (`Case.record`), the reference's to `reference`, and each check
    that fails, or call slower than `SLOW`, to `problems`."""

    def __init__(
        self, history: History, authors: Sequence[str], config: EngineConfig, directory: Path
    ) -> None:
        self.history = history
        self.authors = authors
        self.config = config
        self.directory = directory
        """Where a restore copies the case's file."""
        self.problems: list[str] = []
        self.reference = Reference()

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)
            say(f"PROBLEM: {message}")

    def timed(self, what: str, elapsed: float) -> None:
        if elapsed > SLOW:
            self.check(False, f"{what} took {elapsed:.1f} s (over {SLOW:.0f} s)")

    async def reads(self, case: Case, run: int, with_diff: bool) -> None:
        """One run of the read-only calls on the case's own file: a cold open, content at
        three versions, and (when `with_diff`) the diff middle to newest."""
        store = await SQLStore.connect(sqlite_url(str(case.path)))
        try:
            opened, text = await open_cold(store, self.config)
            self.check(
                text == self.history.expected,
                f"{case.key} run {run}: the opened room's text differs",
            )
            case.record("open", opened)
            self.timed(f"{case.key} cold open", opened)
            async with Engine(self.config, store) as engine:
                for name in (OLDEST, MIDDLE, NEWEST):
                    version = case.versions[name]
                    started = time.perf_counter()
                    content = await engine.history.content(DOC, version.id)
                    elapsed = time.perf_counter() - started
                    case.record(f"content {name}", elapsed)
                    self.timed(f"{case.key} content at the {name} version", elapsed)
                    self.check(
                        content_text(content) == self.history.texts[version.seq]
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
                    self.timed(f"{case.key} diff", elapsed)
                    text_changes = changes["roots"][TEXT]["changes"]
                    try:
                        rebuilt = apply_text_changes(self.history.texts[start.seq], text_changes)
                        problem = (
                            None if rebuilt == self.history.texts[end.seq] else "a different text"
                        )
                    except (ValueError, KeyError) as error:
                        problem = str(error)
                    self.check(
                        problem is None,
                        f"{case.key} run {run}: the diff's changes applied to the middle text "
                        f"do not give the newest ({problem})",
                    )
                    editors = list(dict.fromkeys(self.authors[start.seq : end.seq]))
                    self.check(
                        changes["editors"] == editors and changes["seq"] == end.seq,
                        f"{case.key} run {run}: diff editors {changes['editors']} / seq "
                        f"{changes['seq']}, expected {editors} / {end.seq}",
                    )
                    case.record("diff changes", float(len(text_changes)))
        finally:
            await store.aclose()

    async def restore(self, case: Case, run: int, name: str) -> None:
        """Restore to version `name` on a fresh copy of the case's file, the room not loaded."""
        copy = self.directory / f"restore-{case.key}.db"
        remove_database(copy)
        copy_database(case.path, copy)
        version = case.versions[name]
        wanted = self.history.texts[version.seq]
        store = await SQLStore.connect(sqlite_url(str(copy)))
        try:
            async with Engine(self.config, store) as engine:
                started = time.perf_counter()
                restored = await engine.history.restore(DOC, version.id, author="bench")
                elapsed = time.perf_counter() - started
                case.record(f"restore {name}", elapsed)
                self.timed(f"{case.key} restore to the {name} version", elapsed)
                now = await engine.history.content(DOC, None)
                self.check(
                    content_text(now) == wanted,
                    f"{case.key} run {run}: after restoring the {name} version the text differs "
                    "from the text at that version",
                )
            async with Engine(self.config, store) as engine:
                later = await engine.history.content(DOC, restored.id)
                self.check(
                    content_text(later) == wanted
                    and restored.seq == self.history.edits + 1
                    and (restored.label or "").startswith(f"Restored version {version.id}"),
                    f"{case.key} run {run}: the version the restore to {name} recorded "
                    f"(seq {restored.seq}, {restored.label!r}) does not hold the restored text",
                )
        finally:
            await store.aclose()
            remove_database(copy)

    async def rebuild(self, case: Case, run: int) -> None:
        """The whole log of `case` (one without snapshots) loaded and rebuilt."""
        store = await SQLStore.connect(sqlite_url(str(case.path)))
        try:
            loaded, rebuilt, stored, doc = await load_and_rebuild(store)
        finally:
            await store.aclose()
        self.check(
            len(stored.updates) == self.history.edits and stored.snapshot is None,
            f"reference run {run}: load() of ({case.key}) did not return the whole log",
        )
        self.check(
            text_of(doc) == self.history.expected, f"reference run {run}: the rebuilt text differs"
        )
        self.reference.load.append(loaded)
        self.reference.rebuild.append(rebuilt)

    async def yjs(self, updates_file: Path, run: int) -> None:
        """Node, a new process each run: `Y.applyUpdate` of every update into one new `Y.Doc`."""
        try:
            answer = await anyio.to_thread.run_sync(run_replay, "apply", updates_file)
        except RuntimeError as error:
            self.check(False, f"yjs run {run}: {error}")
            return
        self.check(
            answer["updates"] == self.history.edits and answer["text"] == self.history.expected,
            f"yjs run {run}: the text Yjs built differs from the trace's",
        )
        self.reference.yjs.append(float(answer["seconds"]))
