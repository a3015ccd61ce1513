"""Server fan-out, side by side: ours, the Node y-websocket server, Hocuspocus and
pycrdt-websocket, under the same load in the same run.

Question: how long until an edit reaches every other client of its room, and at what
server CPU and memory, as clients (and rooms) grow, with awareness off and on?

Usage:

    python benchmarks/server_fanout.py                 # every size, awareness off and on, 3 runs
    python benchmarks/server_fanout.py --quick         # smoke run: sizes 10 and 50, 1 short run
    python benchmarks/server_fanout.py --servers ours,node --sizes 100 500 --runs 1
    python benchmarks/server_fanout.py --servers ours --sizes 500 --awareness on \\
        --runs 1 --profile benchmarks/results/profiles     # py-spy profile of our server

The servers and how they are started: `harness/servers.py`. The load (writers and
observers per room, awareness) and what each figure means: `harness/load.py`. The
clients: `harness/fleet.py` on the minimal WebSocket client of `harness/wire.py`.
The runs at each size and mode: `harness/session.py`.

Runs
----

Each figure is computed per run; the tables show the median over `--runs` runs, which
are interleaved (before them, at each size with more clients than any before it, one
run against the first server that is not counted: the generator's first run with that
many clients costs it twice the CPU of the next ones, and would set that run's
latency): within each size and awareness mode, run 1 of every server, then run
2 (servers in a rotated order), each after the machine has been quiet for half a
second (up to `--quiet-wait` seconds). A server that does not converge in a run gets no
further runs at that size and mode (its figures are that run's). A server still busy
10 s after its run is restarted before the next one, so its backlog does not steal
the next server's CPU.

Scheduling
----------
The generator stands for clients on other machines, but shares the server's two
cores. It runs as a batch task (`SCHED_BATCH`, `--generator-policy batch`), so that
its wake-ups do not preempt the server mid-broadcast, and the servers start under the
normal policy (`harness/scheduling.py`; the perf and tcpdump forensics behind this are
in `benchmarks/results/notes/`). The diagnostics give, per server, how often a second
its event-loop thread was preempted in the measured window.

Limits: 2 cores for the server under test and the generator together (the other three
servers idle meanwhile); the generator's CPU share is in the diagnostics, and when it
nears a full core it, not the server, may set the latency. Everything is bounded: a
connect phase (`--connect-timeout`), the wait for convergence (`--timeout`), closing.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import options as flags
from harness import plots, provenance, scheduling
from harness.load import RunResult, Size, parse_size, size_label
from harness.provenance import load_average
from harness.report import (
    converged_text,
    deflate_accepted,
    heading,
    listed,
    logged_errors,
    median_latency,
    median_of,
    ms,
    num,
    publish,
    relative,
    row,
    table,
    write_runs_json,
)
from harness.servers import RESULTS, ServerProcess, ensure_peers_installed
from harness.session import Session, size_and_mode
from harness.stats import pct

DEFAULT_OUTPUT = RESULTS / "server_fanout.md"


@dataclass(frozen=True, slots=True)
class Options:
    servers: tuple[str, ...]
    sizes: tuple[Size, ...]
    awareness: tuple[bool, ...]
    runs: int
    duration: float
    warmup: float
    rate: float
    writers: int | None
    timeout: float
    connect_timeout: float
    connect_concurrency: int
    compression: bool
    quiet_wait: float
    output: Path
    plots: bool
    profile: Path | None
    profiler: str
    quick: bool
    ours_args: tuple[str, ...] = ()
    generator_policy: str = "batch"


def header(
    options: Options,
    argv: Sequence[str],
    servers: dict[str, ServerProcess],
    extensions: dict[str, str],
    load: list[str],
    started: float,
) -> str:
    title = "Server fan-out: ours, the Node y-websocket server, Hocuspocus and pycrdt-websocket"
    lines = [
        *heading(title, argv, started),
        f"- machine: {provenance.machine()}; "
        f"1-minute load average before each size and mode: {', '.join(load)}; each run waits "
        f"(up to {options.quiet_wait:g} s) for the machine to be quiet first, and the CPU "
        "the rest of the machine used during each run is in the diagnostics",
        f"- {provenance.software('pycrdt', 'hypercorn', 'pycrdt-websocket', 'psutil')}; "
        f"{provenance.peer_versions(yjs=True)}; "
        f"collab-engine commit {provenance.server_commit(True)}",
        f"- load: per room W writers (full pycrdt clients) at {options.rate:g} edits/s each, "
        f"the other clients light observers; {options.warmup:g} s of warm-up edits then "
        f"{options.duration:g} s measured per run; up to {options.runs} runs per server, size "
        "and mode, interleaved (median of each figure), after one run not counted at each "
        "size with more clients than any before it (the generator's own warm-up); wait for "
        f"convergence capped at {options.timeout:g} s after the last edit",
        f"- generator's scheduling policy: {scheduling.current()} (the servers': normal; see "
        "'Scheduling' in the script's docstring)",
        deflate_accepted(options.compression, extensions),
    ]
    lines += [f"- {name}: `{server.display_command()}`" for name, server in servers.items()]
    return "\n".join(lines)


def tables(results: dict[tuple[str, bool, str], list[RunResult]], options: Options) -> str:
    head = ["clients", "awareness", "W", "server", "fan-out p50 (ms)", "fan-out p99 (ms)",
            "delivered / offered (updates/s)", "converged", "CPU s", "CPU % (one core)",
            "peak RSS (MB)", "runs"]  # fmt: skip
    rows = [
        [
            size_label(size), "on" if awareness else "off", runs[0].writers, server,
            ms(median_latency(runs, "fanout_p50")), ms(median_latency(runs, "fanout_p99")),
            f"{num(median_of(runs, 'delivered_rate'))} / {num(runs[0].offered_rate)}",
            converged_text(runs), f"{median_of(runs, 'server_cpu'):.1f}",
            pct(median_of(runs, "server_cpu_share")), f"{median_of(runs, 'peak_rss'):.0f}",
            len(runs),
        ]
        for (size, awareness, server), runs in results.items()
    ]  # fmt: skip
    lines = table(head, "llrlrrrlrrrr", rows)
    lines += [
        "",
        "W: writers in all (one room: min(clients, 10); with rooms: 1 per room), 5 edits/s "
        'each. Fan-out: time until every other client of the room has an edit ("never": '
        "some client never got it). CPU s: server CPU from the first edit to convergence "
        "(or the end of the wait); CPU %: share of one core over the measured window. "
        "Runs: how many runs the medians are over (a server that does not converge gets no "
        "further runs at that size and mode).",
        "",
        "Diagnostics (median over runs). Fan-out p95/max and per-delivery latencies; "
        "deliveries of the measured edits received by the end (summed over runs); the "
        "generator's and the rest of the machine's CPU over the measured window; how "
        "often a second the server's event-loop thread was preempted (its involuntary "
        "context switches) in that window; the writers' send lag p99; seconds to connect "
        "and sync every client.",
        "",
    ]
    head = ["clients", "awareness", "server", "fan-out p95 (ms)", "fan-out max (ms)",
            "per delivery p50 (ms)", "per delivery p99 (ms)",
            "deliveries received / expected", "generator CPU", "other CPU",
            "server preempted (/s)", "send lag p99 (ms)", "connect + sync (s)"]  # fmt: skip
    lines += table(head, "lll" + "r" * 10)
    for (size, awareness, server), runs in results.items():
        lines.append(row([
            size_label(size), "on" if awareness else "off", server,
            ms(median_latency(runs, "fanout_p95")), ms(median_latency(runs, "fanout_max")),
            ms(median_of(runs, "delivery_p50")), ms(median_of(runs, "delivery_p99")),
            f"{sum(r.delivered for r in runs):,} / {sum(r.expected for r in runs):,}",
            pct(median_of(runs, "generator_cpu_share")), pct(median_of(runs, "other_cpu_share")),
            num(median_of(runs, "preempted_rate")), ms(median_of(runs, "send_lag_p99")),
            f"{median_of(runs, 'setup_seconds'):.1f}",
        ]))  # fmt: skip
    return "\n".join(lines)


def comparison(results: dict[tuple[str, bool, str], list[RunResult]], options: Options) -> str:
    """Ours against the Node server, size by size: the figures side by side."""
    if "ours" not in options.servers or "node" not in options.servers:
        return ""
    lines = ["Ours against the Node y-websocket server (medians):", ""]
    for size in options.sizes:
        for awareness in options.awareness:
            ours = results.get((size.key, awareness, "ours"))
            node = results.get((size.key, awareness, "node"))
            if not ours or not node:
                continue
            lines.append(
                f"- {size.label}, awareness {'on' if awareness else 'off'}: fan-out p99 "
                f"{ms(median_latency(ours, 'fanout_p99'))} ms against "
                f"{ms(median_latency(node, 'fanout_p99'))} ms, p50 "
                f"{ms(median_latency(ours, 'fanout_p50'))} against "
                f"{ms(median_latency(node, 'fanout_p50'))} ms; server CPU "
                f"{pct(median_of(ours, 'server_cpu_share'))} against "
                f"{pct(median_of(node, 'server_cpu_share'))} of a core; converged "
                f"{converged_text(ours)} / {converged_text(node)}"
            )
    return "\n".join(lines)


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Fan-out of document updates to N clients: ours, the Node y-websocket "
        "server, Hocuspocus and pycrdt-websocket side by side.",
    )
    flags.add_servers(parser)
    parser.add_argument(
        "--sizes", type=parse_size, nargs="+",
        help="client counts: N (one room) or N/ROOMS (default 10 50 100 500 1000/100; "
        "--quick: 10 50)",
    )  # fmt: skip
    parser.add_argument("--awareness", default="off,on", help="off, on or off,on (default: both)")
    parser.add_argument(
        "--runs", type=int, help="runs per server, size and mode (default 3; --quick: 1)"
    )
    parser.add_argument(
        "--duration", type=float, help="measured seconds per run (default 5; --quick: 3)"
    )
    parser.add_argument(
        "--warmup", type=float, help="seconds of unmeasured edits first (default 1)"
    )
    parser.add_argument("--rate", type=float, default=5.0, help="edits per second per writer")
    parser.add_argument(
        "--writers", type=int,
        help="writers per room (default: min(clients, 10) in one room; 1 per room with rooms)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=10.0,
        help="seconds to wait for convergence after the last edit (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--connect-timeout", type=float,
        help="seconds to connect and sync every client of a run (default 20 + 0.05 per client)",
    )  # fmt: skip
    flags.add_connect_concurrency(parser)
    flags.add_compression(parser)
    flags.add_quiet_wait(parser, 3.0)
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument(
        "--profile", type=Path,
        help="directory: profile our server with py-spy during its runs (raw stacks + summary)",
    )  # fmt: skip
    parser.add_argument(
        "--profiler", choices=["py-spy", "cprofile"], default="py-spy",
        help="with --profile: py-spy attached to our server during each of its runs "
        "(default), or our server run under cProfile for each size and mode (its event-loop "
        "thread only, whole process lifetime; slower)",
    )  # fmt: skip
    parser.add_argument(
        "--ours-args", default="", metavar="ARGS",
        help="more `serve` arguments for our server, as one shell-quoted string "
        "(e.g. '--asgi --loop asyncio')",
    )  # fmt: skip
    scheduling.add_option(parser)
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: sizes 10 and 50, 1 run of 3 s (explicit flags win)",
    )  # fmt: skip
    flags.add_output(parser, DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    modes = {"off": False, "on": True}
    try:
        awareness = tuple(modes[m.strip()] for m in args.awareness.split(","))
    except KeyError:
        parser.error("--awareness takes off, on or off,on")
    sizes = args.sizes or [
        parse_size(s)
        for s in (["10", "50"] if args.quick else ["10", "50", "100", "500", "1000/100"])
    ]
    runs = flags.given(args.runs, 1 if args.quick else 3)
    duration = flags.given(args.duration, 3.0 if args.quick else 5.0)
    warmup = flags.given(args.warmup, 1.0)
    if runs < 1 or duration <= 0 or warmup < 0 or args.rate <= 0:
        parser.error("runs, duration and rate must be positive, warmup not negative")
    return flags.from_args(
        Options,
        args,
        servers=flags.servers(parser, args),
        sizes=tuple(sizes),
        awareness=awareness,
        runs=runs,
        duration=duration,
        warmup=warmup,
        connect_timeout=flags.given(
            args.connect_timeout, 20 + 0.05 * max(s.clients for s in sizes)
        ),
        compression=flags.deflate(args),
        plots=not args.no_plots,
        profile=args.profile.resolve() if args.profile is not None else None,
        ours_args=tuple(shlex.split(args.ours_args)),
    )


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    started = time.time()
    ensure_peers_installed(options.servers)
    session = Session()
    with tempfile.TemporaryDirectory() as tmp:
        for size in options.sizes:
            for awareness in options.awareness:
                await size_and_mode(session, options, size, awareness, Path(tmp))
    session.loads.append(f"{load_average()} (after)")
    ordered = {
        (size.key, awareness, name): session.results[(size.key, awareness, name)]
        for size in options.sizes
        for awareness in options.awareness
        for name in options.servers
        if (size.key, awareness, name) in session.results
    }
    servers = {name: session.servers[name] for name in options.servers if name in session.servers}
    report = [
        header(options, argv, servers, session.extensions, session.loads, started),
        "",
        tables(ordered, options) if ordered else "(no results)",
        "",
        comparison(ordered, options),
        "",
    ]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    write_runs_json(
        options.output.with_suffix(".json"), [r for runs in ordered.values() for r in runs]
    )
    if options.plots and ordered:
        sizes = [s.key for s in options.sizes]
        written = plots.fanout_by_size(
            ordered, options.servers, sizes, options.awareness, options.output
        )
        report += [f"Plots: {', '.join(f'`{relative(p)}`' for p in written)}", ""]
    problems = session.problems
    report += listed("Notes:", session.notes, None)
    report += logged_errors(session.logs, problems)
    report += listed("**Problems:**", problems, 60)
    publish("\n".join(report), options.output)
    return 1 if problems else 0


if __name__ == "__main__":
    flags.main(parse_options, benchmark)
