"""The parts of a results file the benchmarks share: its heading, number formats,
medians over runs and their ratios, Markdown tables and lists, every run's figures as
JSON, and the errors the servers logged."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import provenance
from harness.stats import median

REPO = Path(__file__).resolve().parents[2]


def median_of(results: Sequence[Any], name: str) -> float:
    return median(float(getattr(r, name)) for r in results)


def ms(seconds: float, digits: int = 1) -> str:
    if math.isinf(seconds):
        return "never"
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.{digits}f}"


def us(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e6:,.1f}"


def mb(size: float) -> str:
    """Bytes as MB (10^6), one decimal."""
    return f"{size / 1e6:.1f}"


def kb(size: float) -> str:
    """Bytes as KB (10^3): one decimal below 10 KB, none above."""
    if math.isnan(size):
        return "n/a"
    return f"{size / 1e3:.1f}" if abs(size) < 1e4 else f"{size / 1e3:.0f}"


def seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def number(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def median_latency(results: Sequence[Any], name: str) -> float:
    """`median_of` for latencies, where "never" (infinite) ranks last."""
    return median_of(results, name)


def converged_text(results: Sequence[Any]) -> str:
    ok = sum(r.converged for r in results)
    if ok == len(results):
        return "yes" if len(results) == 1 else f"yes ({ok}/{len(results)})"
    return "no" if ok == 0 else f"{ok}/{len(results)} runs"


def heading(title: str, argv: Sequence[str], started: float | None = None) -> list[str]:
    """The first lines of a results file: its title, the command that produced it, and
    the date (with the minutes it took since `started`, a `time.time()`, if given)."""
    took = "" if started is None else f"; took {(time.time() - started) / 60:.1f} min"
    return [
        f"# {title}",
        "",
        f"- command: `{provenance.command_line(argv)}`",
        f"- date: {provenance.utc_now()}{took}",
    ]


def machine(loads: Sequence[str], more: str = "") -> str:
    """The header's machine line, with the load average before and after the runs."""
    before, after = loads
    return (
        f"- machine: {provenance.machine()}; 1-minute load average {before} before the "
        f"runs, {after} after{more}"
    )


def row(cells: Iterable[object]) -> str:
    """One row of a Markdown table."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def table(head: Sequence[str], align: str, rows: Iterable[Iterable[object]] = ()) -> list[str]:
    """A Markdown table's lines: `align` has a letter per column, "l" or "r"."""
    rule = "|" + "".join("---|" if a == "l" else "---:|" for a in align)
    return [row(head), rule, *map(row, rows)]


def listed(title: str, items: Sequence[str], limit: int | None = 50) -> list[str]:
    """A titled list of the first `limit` items (all if None; nothing if there are none)."""
    if not items:
        return []
    return [title, "", *(f"- {item}" for item in items[:limit]), ""]


def outcome(problems: Sequence[str], fine: str, limit: int = 50) -> list[str]:
    """The end of a report: its problems, or else the sentence `fine`."""
    return listed("**Problems:**", problems, limit) if problems else [fine, ""]


def code(title: str, lines: Sequence[str], limit: int = 40) -> list[str]:
    """A titled code block of the first `limit` lines (nothing if there are none)."""
    if not lines:
        return []
    return [title, "", "```", *lines[:limit], "```", ""]


def deflate_accepted(compression: bool, extensions: Mapping[str, str]) -> str:
    """The header's line on permessage-deflate: offered or not, and who accepted it."""
    accepted = ", ".join(
        f"{name} {'yes' if 'deflate' in ext else 'no'}" for name, ext in extensions.items()
    )
    return f"- clients offer permessage-deflate: {'yes' if compression else 'no'}" + (
        f"; accepted by: {accepted}" if accepted else ""
    )


def error_lines(lines: Iterable[str]) -> list[str]:
    """The lines of a server's log that hold an error record or start a traceback."""
    return [line for line in lines if "ERROR" in line or "Traceback" in line]


def relative(path: Path) -> str:
    """`path` as seen from the repository."""
    return os.path.relpath(path, REPO)


def write_runs_json(path: Path, runs: Sequence[Any]) -> None:
    """Every run's figures (dataclasses), for replotting or other comparisons; NaN and
    infinity as null."""
    per_run = [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
         for k, v in dataclasses.asdict(r).items()}
        for r in runs
    ]  # fmt: skip
    path.write_text(json.dumps(per_run, indent=1) + "\n")


def logged_errors(logs: Mapping[str, str], problems: list[str]) -> list[str]:
    """For each server log (by label) with errors in it: a report section with the
    first error record and 40 lines after it; a line for each in `problems`."""
    report: list[str] = []
    error_logs = {
        name: [line for line in text.splitlines() if line.strip() and not line.startswith("---")]
        for name, text in logs.items()
    }
    noisy = {
        name: lines
        for name, lines in error_logs.items()
        if any("Error" in line or "ERROR" in line or "Traceback" in line for line in lines)
    }
    for name, lines in noisy.items():
        problems.append(f"{name} logged errors (see its log below)")
        first = next(
            i for i, line in enumerate(lines)
            if "Error" in line or "ERROR" in line or "Traceback" in line
        )  # fmt: skip
        errors = sum("ERROR" in line or "Traceback" in line for line in lines)
        report += [
            f"Log of {name}: {errors} error records; the first one:",
            "",
            "```",
            *lines[first : first + 40],
            "```",
            "",
        ]
    return report


def say(message: str) -> None:
    """Progress, on standard error (standard output is the report)."""
    print(message, file=sys.stderr, flush=True)


def publish(text: str, output: Path | None) -> None:
    """Print the report, and write it to `output` (its folder made) unless None."""
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)


def rate(count: int, seconds: float) -> str:
    """`count` a second, whole; `n/a` without a time."""
    if math.isnan(seconds) or seconds <= 0:
        return "n/a"
    return f"{count / seconds:,.0f}"


def spread(values: Sequence[float]) -> str:
    """Median (min–max, how many), in seconds."""
    if not values:
        return "n/a"
    return f"{median(values):.3f} ({min(values):.3f}–{max(values):.3f}, {len(values)})"


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> str:
    """The ratio of two medians."""
    if not numerator or not denominator:
        return "n/a"
    return f"{median(numerator) / median(denominator):.2f}"
