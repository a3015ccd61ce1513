"""The parts of a results file the benchmarks share: number formats, medians over
runs and their ratios, Markdown tables, every run's figures as JSON, and the errors
the servers logged."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.stats import median

REPO = Path(__file__).resolve().parents[2]


def median_of(results: Sequence[Any], name: str) -> float:
    return median(float(getattr(r, name)) for r in results)


def ms(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def number(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def median_latency(results: Sequence[Any], name: str) -> float:
    values = [float(getattr(r, name)) for r in results if not math.isnan(getattr(r, name))]
    if not values:
        return math.nan
    values.sort()
    return values[len(values) // 2] if len(values) % 2 else (
        values[len(values) // 2 - 1] + values[len(values) // 2]) / 2  # fmt: skip


def converged_text(results: Sequence[Any]) -> str:
    ok = sum(r.converged for r in results)
    if ok == len(results):
        return "yes" if len(results) == 1 else f"yes ({ok}/{len(results)})"
    return "no" if ok == 0 else f"{ok}/{len(results)} runs"


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


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> list[str]:
    """A Markdown table's lines; `align` has an `l` or an `r` per column."""
    rules = {"l": "---", "r": "---:"}
    return [
        "| " + " | ".join(header) + " |",
        "|" + "".join(rules[a] + "|" for a in align),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


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
