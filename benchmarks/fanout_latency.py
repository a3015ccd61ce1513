"""Fan-out latency of one document update to N clients in one room, over loopback.

Usage:

    python benchmarks/fanout_latency.py                    # N = 10 and 100, 3 runs each
    python benchmarks/fanout_latency.py --sizes 10 --runs 1 --edits 100 --rate 20
    python benchmarks/fanout_latency.py --compression none      # no permessage-deflate

Method
------
The server runs as a separate process (`python -m server serve --port 0`) on
127.0.0.1. This script is the load generator: one asyncio process holding, per
run, one *writer* and N *observers*, all plain `websockets` clients speaking the
y-websocket protocol through `collab_engine.protocol`, connected to one fresh
document (a new name per run, so every run starts from an empty room). Like
browsers, the clients offer permessage-deflate, which hypercorn accepts, so the
server compresses each frame once per client; `--compression none` measures
without it.

The clients (a writer's pycrdt `Text`, observers that find each edit's marker in the
raw frames) and how one run is timed: `harness/one_writer.py`.

This process runs as a batch task and the server under the normal policy, so that
the clients, which stand for remote ones, do not preempt the server when its
writes wake them (`--generator-policy`, `benchmarks/harness/scheduling.py`).

What the numbers mean
---------------------
* delivery latency = receive time at one observer - send time of the edit.
  "per delivery p50/p99" is the distribution over every (edit, observer) pair.
* fan-out latency of an edit = the largest delivery latency of that edit over the
  N observers: the time until *every* observer has it. "all observers p50/p99/max"
  is the distribution over the measured edits.
* Each figure is computed per run; the table shows the median over `--runs` runs
  (delivery counts are summed over the runs).

Both latencies include the generator's own time to read and dispatch frames: 100
observers in one Python process read 100 frames per edit one after the other. The
diagnostics table helps tell whether the server or the generator limited the
numbers:

* CPU time of each process over the measured window (the server's from
  /proc/<pid>/stat, ours from `time.process_time()`), as a share of one core and
  per edit;
* during fan-out: the event-loop thread of each process, read from
  /proc/<pid>/schedstat when an edit is sent and when its last observer gets it,
  summed over the edits and divided by the summed fan-out latencies: the share of
  that time it ran on a CPU ("busy") and was runnable but waiting for a CPU
  ("queued", which is contention: the two processes and anything else on the
  machine). The rest it was idle, waiting for the other side. The process that is
  busy (or queued) through most of the fan-out is the one that sets its length;
* how late the writer's sends were against their schedule (a busy generator loop
  sends late).

Everything is bounded: every connection, sync and drain has a timeout. If a
delivery is still missing after `--timeout` seconds, or a connection is closed
during a run (e.g. 1013, evicted as too slow), the table says so and the script
exits with status 1.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import options as flags
from harness import provenance, scheduling
from harness.one_writer import RunResult, run_once
from harness.provenance import load_average
from harness.report import code, heading, machine, median_of, outcome, publish, say, table
from harness.report import ms as milliseconds
from harness.servers import RESULTS, OurServer, running
from harness.stats import pct

DEFAULT_OUTPUT = RESULTS / "fanout_latency.md"


@dataclass(frozen=True, slots=True)
class Options:
    sizes: tuple[int, ...]
    runs: int
    edits: int
    warmup: int
    rate: float
    timeout: float
    connect_timeout: float
    compression: str | None
    outbox_size: int | None
    output: Path
    generator_policy: str = "batch"


# -- the report -----------------------------------------------------------------------


def ms(seconds: float) -> str:
    return milliseconds(seconds, 2)


def header(options: Options, argv: Sequence[str], server: OurServer, loads: Sequence[str]) -> str:
    lines = [
        *heading("Fan-out latency: one update to N clients in one room", argv),
        machine(loads),
        f"- {provenance.software('pycrdt', 'websockets', 'hypercorn')}, "
        f"collab-engine commit {provenance.server_commit()}",
        f"- load: {options.edits} measured edits after {options.warmup} warm-up edits, "
        f"{options.rate:g} edits/s, one writer + N observers, {options.runs} runs per N "
        f"(median of each figure; deliveries summed over the runs)",
        f"- server: `{server.display_command()}` (its own process); "
        f"WebSocket compression offered by the clients: {options.compression or 'none'}",
        f"- this process's scheduling policy: {scheduling.current()} (the server's: normal; "
        "see `benchmarks/harness/scheduling.py`)",
    ]
    return "\n".join(lines)


def tables(results: dict[int, list[RunResult]]) -> str:
    head = ["N clients", "edits/run", "deliveries received / expected", "all observers p50 (ms)",
            "all observers p99 (ms)", "all observers max (ms)", "per delivery p50 (ms)",
            "per delivery p99 (ms)"]  # fmt: skip
    rows = [
        [
            clients, runs[0].edits,
            f"{sum(r.delivered for r in runs)} / {sum(r.expected for r in runs)}",
            *(ms(median_of(runs, name)) for name in
              ("fanout_p50", "fanout_p99", "fanout_max", "delivery_p50", "delivery_p99")),
        ]
        for clients, runs in results.items()
    ]  # fmt: skip
    lines = table(head, "r" * 8, rows)
    lines += [
        "",
        "Diagnostics (median over runs). CPU: share of one core over the whole measured",
        "window, and CPU time per edit. During fan-out: over the time from each send to its",
        "last delivery, the share each process's event-loop thread spent on a CPU (busy) and",
        "runnable but waiting for one (queued); a process busy most of that time is the one",
        "that set the pace.",
        "",
    ]
    head = ["N clients", "server CPU", "generator CPU", "server CPU per edit (ms)",
            "generator CPU per edit (ms)", "during fan-out: server busy / queued",
            "during fan-out: generator busy / queued", "writer send lag p99 (ms)"]  # fmt: skip
    rows = [
        [
            clients, pct(median_of(runs, "server_cpu_share")),
            pct(median_of(runs, "generator_cpu_share")),
            ms(median_of(runs, "server_cpu_per_edit")), ms(median_of(runs, "generator_cpu_per_edit")),
            f"{pct(median_of(runs, 'fanout_server_busy'))} / "
            f"{pct(median_of(runs, 'fanout_server_waiting'))}",
            f"{pct(median_of(runs, 'fanout_generator_busy'))} / "
            f"{pct(median_of(runs, 'fanout_generator_waiting'))}",
            ms(median_of(runs, "send_lag_p99")),
        ]
        for clients, runs in results.items()
    ]  # fmt: skip
    return "\n".join(lines + table(head, "r" * 8, rows))


# -- main -----------------------------------------------------------------------------


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Measure p50/p99 fan-out latency of one update to N clients in one room.",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100], help="observer counts N")
    parser.add_argument("--runs", type=int, default=3, help="runs per size (median reported)")
    parser.add_argument("--edits", type=int, default=200, help="measured edits per run")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured edits before them")
    parser.add_argument("--rate", type=float, default=50.0, help="edits per second")
    parser.add_argument(
        "--timeout", type=float, default=10.0,
        help="seconds to wait for missing deliveries after the last edit",
    )  # fmt: skip
    flags.add_connect_timeout(parser)
    flags.add_compression(parser)
    flags.add_outbox_size(parser)
    scheduling.add_option(parser)
    flags.add_output(parser, DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.runs < 1 or args.edits < 1 or args.warmup < 0 or args.rate <= 0:
        parser.error("sizes, runs and edits must be positive, warmup not negative, rate > 0")
    return flags.from_args(
        Options, args, sizes=tuple(args.sizes), compression=flags.websockets_compression(args)
    )


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    results: dict[int, list[RunResult]] = {}
    problems: list[str] = []
    loads = [load_average()]
    with tempfile.TemporaryDirectory() as tmp:
        server = OurServer(Path(tmp) / "server.log", flags.outbox_args(options.outbox_size))
        async with running({"": server}, problems):
            for clients in options.sizes:
                for run in range(1, options.runs + 1):
                    result = await run_once(server, clients, options)
                    results.setdefault(clients, []).append(result)
                    say(
                        f"N={clients} run {run}: {result.delivered}/{result.expected} delivered, "
                        f"all-observers p50 {ms(result.fanout_p50)} ms, "
                        f"p99 {ms(result.fanout_p99)} ms, "
                        f"server CPU {pct(result.server_cpu_share)}, "
                        f"generator CPU {pct(result.generator_cpu_share)}"
                    )
                    problems.extend(f"N={clients} run {run}: {p}" for p in result.problems)
        server_log, shutdown_log = server.log_lines()
    loads.append(load_average())
    report = [
        header(options, argv, server, loads),
        "",
        tables(results) if results else "(no results)",
        "",
        *code("Server log during the runs:", server_log),
    ]
    if shutdown_log:
        errors = sum("ERROR" in line for line in shutdown_log)
        report += code(
            f"Server log after SIGTERM (not counted as a failure): {len(shutdown_log)} lines, "
            f"{errors} ERROR records; the first ones:",
            shutdown_log,
            8,
        )
    report += outcome(problems, "Every delivery arrived; no connection was closed during a run.")
    publish("\n".join(report), options.output)
    return 1 if problems else 0


if __name__ == "__main__":
    flags.main(parse_options, benchmark)
