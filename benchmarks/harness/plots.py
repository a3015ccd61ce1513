"""PNG figures of benchmark results (matplotlib, the `bench` extra)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.load import RunResult, size_label
from harness.report import median_latency, median_of
from harness.servers import SPECS


def fanout_by_size(
    results: Mapping[tuple[str, bool, str], Sequence[RunResult]],
    servers: Sequence[str],
    sizes: Sequence[str],
    modes: Sequence[bool],
    output: Path,
) -> list[Path]:
    """PNG figures next to the Markdown, named after it (`<stem>_latency.png`,
    `<stem>_cpu_rss.png`): fan-out p99 and p50 by size, and server CPU and peak RSS
    by size; one line per server, awareness off and on side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    from matplotlib.transforms import blended_transform_factory

    written: list[Path] = []
    figures = [
        (f"{output.stem}_latency.png", [("fanout_p99", "fan-out p99 (ms, log)"), ("fanout_p50", "fan-out p50 (ms, log)")], True),
        (f"{output.stem}_cpu_rss.png", [("server_cpu_share", "server CPU (% of one core)"), ("peak_rss", "server peak RSS (MB, log)")], False),
    ]  # fmt: skip
    for filename, metrics, latency in figures:
        fig, axes = plt.subplots(
            len(metrics), len(modes), figsize=(5.8 * len(modes), 3.8 * len(metrics)),
            squeeze=False, sharey="row",
        )  # fmt: skip
        for row, (metric, ylabel) in enumerate(metrics):
            for col, awareness in enumerate(modes):
                ax = axes[row][col]
                marks = blended_transform_factory(ax.transData, ax.transAxes)
                for index, name in enumerate(servers):
                    # NaN breaks the line where a server has no figure (or "never").
                    xs, ys, failed, never = [], [], [], []
                    for x, size in enumerate(sizes):
                        runs = results.get((size, awareness, name))
                        value = math.nan
                        if runs:
                            if latency:
                                value = median_latency(runs, metric) * 1000
                            else:
                                scale = 100 if metric == "server_cpu_share" else 1
                                value = median_of(runs, metric) * scale
                            if math.isinf(value):
                                never.append(x)
                                value = math.nan
                            elif not math.isnan(value) and not all(r.converged for r in runs):
                                failed.append((x, value))
                        xs.append(x)
                        ys.append(value)
                    (line,) = ax.plot(xs, ys, marker="o", label=SPECS[name].label)
                    color = line.get_color()
                    for x, value in failed:
                        ax.plot([x], [value], marker="X", markersize=11, color=color, alpha=0.6)
                    shift = (index - (len(servers) - 1) / 2) * 0.09
                    for x in never:
                        ax.plot(
                            [x + shift], [0.97], marker="v", markersize=9, color=color,
                            transform=marks, clip_on=False,
                        )  # fmt: skip
                ax.set_xticks(range(len(sizes)), [size_label(s) for s in sizes], fontsize=8)
                if latency or metric == "peak_rss":
                    ax.set_yscale("log")
                    ax.yaxis.set_major_formatter(ScalarFormatter())
                    ax.yaxis.set_minor_formatter(NullFormatter())
                ax.set_ylabel(ylabel)
                ax.set_xlabel("clients")
                ax.set_title(f"awareness {'on' if awareness else 'off'}", fontsize=10)
                ax.grid(True, which="both", alpha=0.3)
                if row == 0 and col == 0:
                    ax.legend(fontsize=8, loc="upper left")
        fig.suptitle(
            "Server fan-out, median of runs (X: did not converge; \u25bc at the top: never "
            "delivered to every client)",
            fontsize=10,
        )
        fig.tight_layout()
        path = output.parent / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str,
    path: Path,
    log: bool = False,
) -> Path:
    """Grouped bars: one group per name in `groups`, one bar per series in each (NaN
    drawn as 0), the legend outside on the right; written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(7.0, 1.3 * len(groups) + 4), 4.8))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        axes.bar(xs, [0 if math.isnan(v) else v for v in values], width, label=label)
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels(groups, rotation=25, ha="right")
    if log:
        axes.set_yscale("log")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.grid(axis="y", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
