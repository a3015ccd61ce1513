"""The timings of trace replays (`replay`, `remote`, `yjs`), per trace and
implementation over the runs, and what they make in a results file: the Markdown
tables of `merge_throughput.py`'s three parts, its bar charts, the raw seconds as JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import plots
from harness.remote import MERGE_FAN_IN, MERGE_SAMPLE, Remote
from harness.replay import (
    ENGINE,
    ENGINE_PEER,
    ENGINE_SQL,
    IMPLEMENTATIONS,
    OBSERVED,
    PYCRDT,
    YJS,
    Timing,
)
from harness.report import rate, ratio, seconds, spread, table
from harness.stats import median
from harness.traces import Concurrent, Sequential


@dataclass(slots=True)
class Timings:
    """A sequential trace's seconds, wall and CPU, by implementation; its remote path's."""

    trace: Sequential
    runs: int
    times: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    remote: Remote = field(default_factory=Remote)

    def record(self, what: str, timing: Timing) -> None:
        self.times.setdefault(what, []).append(timing[0])
        self.cpu.setdefault(what, []).append(timing[1])


@dataclass(slots=True)
class ConcurrentTimings:
    """A concurrent trace's seconds by what was timed (`pycrdt replay`, `Yjs converge`, ...)."""

    trace: Concurrent
    runs: int
    times: dict[str, list[float]] = field(default_factory=dict)

    def record(self, what: str, value: float) -> None:
        self.times.setdefault(what, []).append(value)


RATIOS = (
    ("engine / pycrdt", ENGINE, PYCRDT),
    ("engine, 1 peer / pycrdt", ENGINE_PEER, PYCRDT),
    ("engine, 1 peer / pycrdt + observer", ENGINE_PEER, OBSERVED),
    ("engine (SQLite) / pycrdt", ENGINE_SQL, PYCRDT),
    ("pycrdt / Yjs", PYCRDT, YJS),
)
PER_RUN = (
    ("engine / pycrdt", ENGINE),
    ("engine, 1 peer / pycrdt", ENGINE_PEER),
    ("pycrdt + observer / pycrdt", OBSERVED),
)
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
CONCURRENT_KEYS = ("pycrdt replay", "pycrdt converge", "Yjs replay", "Yjs converge")


def per_run(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    return [a / b for a, b in zip(numerator, denominator, strict=False) if b > 0]


def local_tables(measured: Sequence[Timings]) -> list[str]:
    """Part 1: patches/s, the ratios in wall and CPU time, each run's, the seconds."""
    each_run: list[list[str]] = []
    for m in measured:
        cells = [m.trace.name]
        for _, key in PER_RUN:
            values = per_run(m.times.get(key, []), m.times.get(PYCRDT, []))
            cells += [" ".join(f"{v:.2f}" for v in values) or "n/a",
                      f"{median(values):.2f}" if values else "n/a"]  # fmt: skip
        each_run.append(cells)
    lines = [
        "## 1. Local editing: patches/s (median)",
        "",
        "Each patch its own transaction. Ratios are of median times: engine / pycrdt "
        "1.10 means the engine takes 10 % longer than raw pycrdt (goal: at most 1.10); "
        "pycrdt / Yjs above 1 means pycrdt is slower than Yjs.",
        "",
        *table(
            ["trace", "patches", *IMPLEMENTATIONS, *(label for label, _, _ in RATIOS)],
            "lr" + "r" * (len(IMPLEMENTATIONS) + len(RATIOS)),
            (
                [m.trace.name, f"{len(m.trace.patches):,}"]
                + [rate(len(m.trace.patches), median(m.times.get(k, []))) for k in IMPLEMENTATIONS]
                + [ratio(m.times.get(a, []), m.times.get(b, [])) for _, a, b in RATIOS]
                for m in measured
            ),
        ),
        "",
        "The same ratios in CPU time (`time.process_time` of this process, all threads; "
        "Node's `process.cpuUsage` for Yjs), less sensitive to the other jobs on the "
        "machine than wall time.",
        "",
        *table(
            ["trace", *(f"CPU: {label}" for label, _, _ in RATIOS)],
            "l" + "r" * len(RATIOS),
            (
                [m.trace.name, *(ratio(m.cpu.get(a, []), m.cpu.get(b, [])) for _, a, b in RATIOS)]
                for m in measured
            ),
        ),
        "",
        "Per run (the implementations of one run measured one after the other), wall "
        "time: each run's ratio, then their median.",
        "",
        *table(
            ["trace", *(c for label, _ in PER_RUN for c in (f"{label}, each run", "median"))],
            "l" + "lr" * len(PER_RUN),
            each_run,
        ),
    ]
    for title, wall in (("Seconds per replay, wall", True), ("CPU seconds per replay", False)):
        lines += [
            "",
            f"{title}: median (min–max, runs).",
            "",
            *table(
                ["trace", *IMPLEMENTATIONS],
                "l" + "r" * len(IMPLEMENTATIONS),
                (
                    [m.trace.name]
                    + [spread((m.times if wall else m.cpu).get(k, [])) for k in IMPLEMENTATIONS]
                    for m in measured
                ),
            ),
        ]
    return [
        *lines,
        "",
        *table(
            ["trace", "trace transactions", "patches", "patches inserting non-ASCII text",
             "final characters"],
            "lrrrr",
            (
                [t.name, f"{t.txns:,}", f"{len(t.patches):,}", str(t.non_ascii),
                 f"{len(t.expected):,}"]
                for t in (m.trace for m in measured)
            ),
        ),
    ]  # fmt: skip


def merge_all_cell(times: Sequence[float], estimate: float, cap: float) -> str:
    if times:
        return f"{median(times):.3f}"
    if math.isnan(estimate):
        return "n/a"
    return f"skipped (est. {estimate:,.0f} > {cap:.0f})"


def remote_row(m: Timings, cap: float) -> list[str]:
    r, t, n = m.remote, m.remote.times, len(m.trace.updates)

    def secs(key: str) -> str:
        return seconds(median(t.get(key, [])))

    return [
        m.trace.name,
        f"{n:,}",
        f"{sum(len(u) for u in m.trace.updates):,}",
        rate(n, median(t.get("pycrdt apply", []))),
        rate(n, median(t.get("Yjs apply", []))),
        ratio(t.get("pycrdt apply", []), t.get("Yjs apply", [])),
        f"{secs('pycrdt tree merge')} + {secs('pycrdt apply merged')}",
        f"{secs('Yjs tree merge')} + {secs('Yjs apply merged')}",
        f"{r.merged_bytes:,} / {r.yjs_merged_bytes:,}",
        merge_all_cell(t.get("pycrdt merge all", []), r.merge_all_estimate, cap),
        merge_all_cell(t.get("Yjs merge all", []), r.yjs_merge_all_estimate, cap),
    ]


def remote_tables(measured: Sequence[Timings], cap: float) -> list[str]:
    """Part 2: updates/s applied one by one, seconds to merge and apply the merged."""
    return [
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
        *table(
            ["trace", "updates", "bytes", "pycrdt apply, updates/s", "Yjs apply, updates/s",
             "pycrdt / Yjs (apply)", "pycrdt tree merge + apply merged (s)",
             "Yjs tree merge + apply merged (s)", "merged bytes (pycrdt / Yjs)",
             "pycrdt merge all at once (s)", "Yjs merge all at once (s)"],
            "l" + "r" * 10,
            (remote_row(m, cap) for m in measured),
        ),
        "",
        "Seconds: median (min–max, runs).",
        "",
        *table(
            ["trace", *REMOTE_KEYS],
            "l" + "r" * len(REMOTE_KEYS),
            ([m.trace.name, *(spread(m.remote.times.get(k, [])) for k in REMOTE_KEYS)]
             for m in measured),
        ),
    ]  # fmt: skip


def concurrent_tables(measured: Sequence[ConcurrentTimings]) -> list[str]:
    """Part 3: patches/s of the replay with one replica per agent, convergence."""
    return [
        "## 3. Concurrent traces: one replica per agent",
        "",
        "Patches/s of the replay (the deliveries it needs included), and the time for "
        "every replica to take what it still misses at the end (converge), median.",
        "",
        *table(
            ["trace", "agents", "transactions", "patches", "merge points", "updates delivered",
             "pycrdt, patches/s", "Yjs, patches/s", "pycrdt / Yjs", "pycrdt converge (s)",
             "Yjs converge (s)"],
            "l" + "r" * 10,
            (
                [t.name, str(t.agents), f"{len(t.steps):,}", f"{t.patches:,}", f"{t.merges:,}",
                 f"{t.delivered:,}", rate(t.patches, median(s.get("pycrdt replay", []))),
                 rate(t.patches, median(s.get("Yjs replay", []))),
                 ratio(s.get("pycrdt replay", []), s.get("Yjs replay", [])),
                 seconds(median(s.get("pycrdt converge", []))),
                 seconds(median(s.get("Yjs converge", [])))]
                for t, s in ((m.trace, m.times) for m in measured)
            ),
        ),
        "",
        "Seconds: median (min–max, runs).",
        "",
        *table(
            ["trace", *CONCURRENT_KEYS],
            "l" + "r" * len(CONCURRENT_KEYS),
            ([m.trace.name, *(spread(m.times.get(k, [])) for k in CONCURRENT_KEYS)]
             for m in measured),
        ),
    ]  # fmt: skip


def per_second(count: int, times: Sequence[float]) -> float:
    elapsed = median(times)
    return count / elapsed if elapsed > 0 else math.nan


def plot(
    measured: Sequence[Timings], concurrent: Sequence[ConcurrentTimings], stem: Path
) -> list[Path]:
    """Bar charts beside the results, `<stem>_local.png`, `_remote.png` and
    `_concurrent.png`, for the parts that have traces."""
    written: list[Path] = []
    if measured:
        names = [m.trace.name for m in measured]
        written.append(
            plots.bars(
                names,
                {k: [per_second(len(m.trace.patches), m.times.get(k, [])) for m in measured]
                 for k in IMPLEMENTATIONS},
                "Local editing: patches/s (median), one transaction per patch",
                "patches / s",
                stem.with_name(stem.name + "_local.png"),
            )
        )  # fmt: skip

        def applied(m: Timings, who: str) -> float:
            return per_second(len(m.trace.updates), m.remote.times.get(f"{who} apply", []))

        def merged(m: Timings, who: str) -> float:
            t = m.remote.times
            elapsed = median(t.get(f"{who} tree merge", [])) + median(
                t.get(f"{who} apply merged", [])
            )
            return len(m.trace.updates) / elapsed if elapsed > 0 else math.nan

        written.append(
            plots.bars(
                names,
                {
                    "pycrdt apply one by one": [applied(m, "pycrdt") for m in measured],
                    "Yjs apply one by one": [applied(m, "Yjs") for m in measured],
                    "pycrdt tree merge + apply merged": [merged(m, "pycrdt") for m in measured],
                    "Yjs tree merge + apply merged": [merged(m, "Yjs") for m in measured],
                },
                "Remote path: updates/s (median)",
                "updates / s (log scale)",
                stem.with_name(stem.name + "_remote.png"),
                log=True,
            )
        )
    if concurrent:
        written.append(
            plots.bars(
                [m.trace.name for m in concurrent],
                {
                    label: [per_second(m.trace.patches, m.times.get(key, [])) for m in concurrent]
                    for label, key in (("pycrdt", "pycrdt replay"), ("Yjs", "Yjs replay"))
                },
                "Concurrent traces: patches/s of the replay (median)",
                "patches / s",
                stem.with_name(stem.name + "_concurrent.png"),
            )
        )  # fmt: skip
    return written


def write_raw(
    path: Path, measured: Sequence[Timings], concurrent: Sequence[ConcurrentTimings]
) -> None:
    """Every run's seconds as JSON, its folder made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = {
        "sequential": {
            m.trace.name: {"wall": m.times, "cpu": m.cpu, "remote": m.remote.times}
            for m in measured
        },
        "concurrent": {m.trace.name: m.times for m in concurrent},
    }
    path.write_text(json.dumps(raw, indent=1))
