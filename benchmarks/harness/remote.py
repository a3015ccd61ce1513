"""The remote path: a trace's updates (one per patch), as a server or a peer receives
them, applied one by one to a fresh document, and merged into one update then applied;
pycrdt in this process, Yjs in Node. Every resulting text is checked."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycrdt import Doc, merge_updates

from harness import yjs
from harness.replay import check_text, text_of
from harness.traces import Sequential

MERGE_FAN_IN = 256
"""A tree merge merges at most this many updates at a time."""
MERGE_SAMPLE = 8_000
"""Merging everything at once is estimated from merging this many first."""


@dataclass(slots=True)
class Remote:
    """The remote path's seconds over the runs, by what was timed (`pycrdt apply`,
    `Yjs tree merge`, ...), and the sizes and estimates of the first run."""

    times: dict[str, list[float]] = field(default_factory=dict)
    merged_bytes: int = 0
    yjs_merged_bytes: int = 0
    merge_all_estimate: float = math.nan
    yjs_merge_all_estimate: float = math.nan

    def record(self, what: str, value: float) -> None:
        self.times.setdefault(what, []).append(value)


def text_of_update(update: bytes) -> str:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return text_of(doc)


def tree_merge(updates: Sequence[bytes]) -> bytes:
    """Merge every `MERGE_FAN_IN`, then the results `MERGE_FAN_IN` at a time, ..."""
    level = list(updates)
    while len(level) > 1:
        level = [
            merge_updates(*level[i : i + MERGE_FAN_IN]) for i in range(0, len(level), MERGE_FAN_IN)
        ]
    return level[0]


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
    """One run of the remote path on `trace.updates`, Yjs's too when `updates_file`
    holds them (`yjs.write_updates`); merging everything at once only in the first run,
    and only when estimated at most `cap` seconds."""
    updates = trace.updates
    doc: Doc[Any] = Doc()
    started = time.perf_counter()
    for update in updates:
        doc.apply_update(update)
    remote.record("pycrdt apply", time.perf_counter() - started)
    check_text(f"{trace.name}, pycrdt applying the updates", text_of(doc), trace.expected)

    started = time.perf_counter()
    merged = tree_merge(updates)
    remote.record("pycrdt tree merge", time.perf_counter() - started)
    remote.merged_bytes = len(merged)
    doc = Doc()
    started = time.perf_counter()
    doc.apply_update(merged)
    remote.record("pycrdt apply merged", time.perf_counter() - started)
    check_text(f"{trace.name}, pycrdt tree-merged update", text_of(doc), trace.expected)

    if run == 1:
        remote.merge_all_estimate = estimate_merge_all(updates)
        if remote.merge_all_estimate <= cap:
            started = time.perf_counter()
            merged = merge_updates(*updates)
            remote.record("pycrdt merge all", time.perf_counter() - started)
            check_text(f"{trace.name}, pycrdt merge_updates(*all)", text_of_update(merged),
                       trace.expected)  # fmt: skip

    if updates_file is not None:
        answer = yjs.remote(updates_file, MERGE_FAN_IN, MERGE_SAMPLE, cap, run == 1)
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
