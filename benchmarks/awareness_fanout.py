"""Awareness (cursor) fan-out to N clients in one room, with and without coalescing.

Usage:

    python benchmarks/awareness_fanout.py                  # N = 10 and 100, 3 runs each
    python benchmarks/awareness_fanout.py --quick          # smoke run: N = 10, 1 short run
    python benchmarks/awareness_fanout.py --sizes 100 --senders 5 --rate 100

Method
------
Two servers run side by side, each as its own process
(`python -m server serve --host 127.0.0.1 --port 0 --db <tmp>/<mode>.db`):

* **coalesced**: the presence policy as shipped, `--presence-rate 20
  --presence-burst 10` (the defaults): a connection may send `burst` awareness
  messages at once and `rate` per second after that; beyond, the server keeps the
  latest state per client id and sends it at the next presence tick (every 50 ms).
* **uncoalesced**: `--presence-rate 1000000 --presence-burst 1000000`: every
  awareness message is forwarded as it arrives.

Runs alternate between the two modes (and the sizes), so both see the same machine.
Each run uses a fresh document on the server of its mode and this one asyncio
process as load generator (offering permessage-deflate, as browsers do;
`--compression none` to measure without): K senders (`--senders`) moving a cursor at
`--rate` messages/s and N observers (`--sizes`) that only read. The clients, the
markers and the identity handshake: `harness/cursors.py`.

The first `--warmup` seconds of sends are left out of every figure (they include
the burst allowance); the measured window is the `--duration` seconds after it.

This process runs as a batch task and the server under the normal policy, so that
the clients, which stand for remote ones, do not preempt the server when its
writes wake them (`--generator-policy`, `benchmarks/harness/scheduling.py`).

What the numbers mean
---------------------
* offered updates/s: awareness messages the K senders sent per second, in total.
* frames / observer / s: awareness frames an observer received per second in the
  window (a frame may carry several entries: the coalescing tick batches them).
* delivered entry-updates/s: entries carrying a newer state of a sender, received
  per second in the window, summed over all N observers. Without coalescing and
  with nothing lost this is offered x N; with it, at most about
  K x min(rate, presence rate) x N. Both rates count, for an observer evicted
  during the window, only the time it was connected.
* latency p50/p99: for each entry that reached an observer with a newer state,
  its receive time minus the send time of *that* state (seq); distribution over
  every such (entry, observer) pair of the measured sends. With coalescing this is
  the latency of the states that got through.
* staleness p50/p99: sampled every `--sample-interval` seconds (jittered) through
  the window, for every (observer, sender): send time of the newest state the
  sender has sent minus send time of the state the observer shows (0 when it shows
  the newest). How far behind the cursor the observer's view is. It is the view of
  the observer task inside this process: frames still unread in its socket do not
  count as received.
* server CPU: user + system time of the server process over the window, from
  /proc/<pid>/stat, as a share of one core; the generator's (`process_time`) in the
  diagnostics, with the CPU the rest of the machine used in the same window (from
  /proc/stat: all busy time minus the two processes).
* converged: after the last send, the observers that end up showing every
  sender's final state within `--timeout` seconds; "final" p50/max is the time
  from a sender's last send to an observer's receipt of it, over all pairs.

Each figure is computed per run; the table shows the median over `--runs` runs.
With coalescing, a connection closed during a run (e.g. 1013, an observer evicted
as too slow) or an observer that does not converge is listed under Problems and the
script exits 1. Without coalescing the same outcomes are the overload that
coalescing prevents: they are listed apart and do not fail the run. A state the
server re-issued, a server error or an aborted run fails it in either mode.

Limits: the generator is one Python process reading every observer's frames one
after the other, on the same 2 cores as the server. When the server sends tens of
thousands of frames per second, the generator's own reading adds to latency and
staleness; its CPU share in the diagnostics says when it was the busy side.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import provenance, scheduling
from harness.cursors import Mode, RunResult, run_once
from harness.provenance import load_average, version
from harness.report import publish
from harness.sampling import settle
from harness.servers import OurServer
from harness.stats import median, pct

from collab_engine.presence import PresencePolicy

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "awareness_fanout.md"

UNLIMITED = 1_000_000
"""Presence rate and burst of the uncoalesced server: never reached."""


# -- clients --------------------------------------------------------------------------


# -- CPU accounting -------------------------------------------------------------------


# -- one run --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    sizes: tuple[int, ...]
    senders: int
    rate: float
    duration: float
    warmup: float
    runs: int
    presence_rate: float
    presence_burst: int
    timeout: float
    connect_timeout: float
    sample_interval: float
    compression: str | None
    outbox_size: int | None
    output: Path
    quick: bool
    quiet_wait: float
    generator_policy: str = "batch"


# -- statistics and report ------------------------------------------------------------


def median_of(results: Sequence[RunResult], name: str) -> float:
    return median(float(getattr(r, name)) for r in results)


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def header(
    options: Options,
    argv: Sequence[str],
    servers: dict[str, OurServer],
    modes: Sequence[Mode],
    load: tuple[str, str],
) -> str:
    commit = provenance.commit(
        ["collab_engine", "server"], "plus uncommitted changes to the server"
    )
    now = provenance.utc_now()
    command = provenance.command_line(argv)
    lines = [
        "# Awareness fan-out: cursors to N clients in one room, with and without coalescing",
        "",
        f"- command: `{command}`",
        f"- date: {now}",
        f"- machine: {provenance.machine()}; "
        f"1-minute load average {load[0]} before the runs, {load[1]} after; each run waits "
        f"(up to {options.quiet_wait:g} s) for the machine to be idle first, and the CPU other "
        "processes used during each window is in the diagnostics",
        f"- Python {sys.version.split()[0]}, pycrdt {version('pycrdt')}, websockets "
        f"{version('websockets')}, hypercorn {version('hypercorn')}, collab-engine commit {commit}",
        f"- load: {options.senders} senders each moving a cursor at {options.rate:g} awareness "
        f"messages/s, N observers that only read; {options.warmup:g} s warm-up then "
        f"{options.duration:g} s measured per run; {options.runs} runs per N and mode, modes "
        "interleaved (median of each figure)",
    ]
    for mode in modes:
        command_line = shlex.join(["python", *servers[mode.name].command[1:]])
        lines.append(f"- {mode.name} server: `{command_line}`")
    lines.append(
        f"- WebSocket compression offered by the clients: {options.compression or 'none'}; "
        "presence tick every 50 ms (`EngineConfig.presence_interval`); this process's "
        f"scheduling policy: {scheduling.current()} (the servers': normal; see "
        "`benchmarks/harness/scheduling.py`)"
    )
    return "\n".join(lines)


def tables(results: dict[tuple[int, str], list[RunResult]], options: Options) -> str:
    lines = [
        "| N observers | mode | offered updates/s | awareness frames / observer / s "
        "| delivered entry-updates/s (all observers) | latency p50 (ms) | latency p99 (ms) "
        "| staleness p50 (ms) | staleness p99 (ms) | server CPU (one core) "
        "| converged observers (per run) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (clients, mode), runs in results.items():
        if all(r.converged == clients for r in runs):
            converged = f"{clients} / {clients} in every run"
        else:
            converged = f"{', '.join(str(r.converged) for r in runs)} / {clients}"
        if any(r.closed for r in runs):
            converged += f" ({', '.join(str(r.closed) for r in runs)} evicted)"
        lines.append(
            f"| {clients} | {mode} | {num(median_of(runs, 'offered_rate'))} "
            f"| {median_of(runs, 'frames_per_observer'):,.1f} "
            f"| {num(median_of(runs, 'delivered_rate'))} "
            f"| {ms(median_of(runs, 'latency_p50'))} | {ms(median_of(runs, 'latency_p99'))} "
            f"| {ms(median_of(runs, 'staleness_p50'))} | {ms(median_of(runs, 'staleness_p99'))} "
            f"| {pct(median_of(runs, 'server_cpu_share'))} | {converged} |"
        )
    lines += [
        "",
        "Diagnostics (median over runs). CPU as a share of one core over the measured window;",
        '"other" is what the rest of the machine used in the same window. Final: time from a',
        "sender's last send until an observer shows it, over all (observer, sender) pairs.",
        "Not newer: entries an observer received that were not newer than what it had",
        "(summed over the runs). Evicted after: seconds from the first send (warm-up",
        f"included; the measured window is {options.warmup:g} s to "
        f"{options.warmup + options.duration:g} s) to the first and the last observer closed, per run.",
        "",
        "| N observers | mode | entries / frame | staleness max (ms) | final p50 (ms) "
        "| final max (ms) | server CPU per offered update (ms) "
        "| server CPU per delivered entry (µs) | generator CPU | other CPU "
        "| not-newer entries | sender lag p99 (ms) | observers evicted after (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (clients, mode), runs in results.items():
        lines.append(
            f"| {clients} | {mode} | {median_of(runs, 'entries_per_frame'):.2f} "
            f"| {ms(median_of(runs, 'staleness_max'))} "
            f"| {ms(median_of(runs, 'final_p50'))} | {ms(median_of(runs, 'final_max'))} "
            f"| {median_of(runs, 'server_cpu_per_offered') * 1000:.3f} "
            f"| {median_of(runs, 'server_cpu_per_entry') * 1e6:.1f} "
            f"| {pct(median_of(runs, 'generator_cpu_share'))} "
            f"| {pct(median_of(runs, 'other_cpu_share'))} "
            f"| {sum(r.not_newer for r in runs)} "
            f"| {ms(median_of(runs, 'send_lag_p99'))} | {evictions(runs)} |"
        )
    return "\n".join(lines)


def evictions(runs: Sequence[RunResult]) -> str:
    """When observers were closed, per run: seconds from the first send, first to last."""
    if not any(r.closed for r in runs):
        return "none"
    return ", ".join(
        "none" if not r.closed else f"{r.first_closed:.1f} to {r.last_closed:.1f}" for r in runs
    )


def interpretation(results: dict[tuple[int, str], list[RunResult]], options: Options) -> str:
    """What the figures say, with the figures: the bound coalescing sets, and what it costs."""
    k, rate = options.senders, options.rate
    capped = min(rate, options.presence_rate)
    lines = [
        "What this shows:",
        "",
        f"- Coalescing bounds the server's fan-out work per sender: each sender gets at most "
        f"about {options.presence_rate:g} states/s through (after a burst of "
        f"{options.presence_burst}), so the server sends about {options.presence_rate:g} x N "
        f"entries (in at most as many frames; the tick batches) per second per sender whatever "
        f"the sender offers; here the bound for the "
        f"room is {k} x {capped:g} x N entry-updates/s, against {k} x {rate:g} x N without it.",
    ]
    for clients in options.sizes:
        on = results.get((clients, "coalesced"))
        off = results.get((clients, "uncoalesced"))
        if not on or not off:
            continue
        lines.append(
            f"- N = {clients}: coalesced, {num(median_of(on, 'delivered_rate'))} entry-updates/s "
            f"delivered (bound {num(k * capped * clients)}) for "
            f"{pct(median_of(on, 'server_cpu_share'))} of a server core, observers behind the "
            f"newest cursor by p50 {ms(median_of(on, 'staleness_p50'))} / p99 "
            f"{ms(median_of(on, 'staleness_p99'))} ms; uncoalesced, "
            f"{num(median_of(off, 'delivered_rate'))} of {num(k * rate * clients)} offered "
            f"for {pct(median_of(off, 'server_cpu_share'))}, behind by p50 "
            f"{ms(median_of(off, 'staleness_p50'))} / p99 {ms(median_of(off, 'staleness_p99'))} ms, "
            f"{min(r.converged for r in off)} / {clients} observers converged in the worst run"
            + (
                f" ({max(r.closed for r in off)} evicted as too slow, at "
                f"{evictions(off)} s after the first send; its rates, latencies and staleness "
                "are those of observers while they were connected)."
                if any(r.closed for r in off)
                else "."
            )
        )
    largest = max(options.sizes)
    on = results.get((largest, "coalesced"))
    off = results.get((largest, "uncoalesced"))
    cost = median_of(on, "server_cpu_per_entry") if on else math.nan
    if off and not math.isnan(cost):
        needed = k * rate * largest * cost
        evicted = max(r.closed for r in off)
        outcome = (
            f"the server cannot keep up: its outboxes grow until observers are evicted as too "
            f"slow (1013; up to {evicted} of {largest} per run here) or, short of that, fall "
            "seconds behind"
            if evicted
            else "the server has to be that fast or fall behind"
        )
        lines.append(
            f"- Cost: with N = {largest} the server spent about {cost * 1e6:.0f} µs of CPU per "
            f"entry delivered to an observer (coalesced run). Forwarding every offered update, "
            f"{num(k * rate * largest)} entries/s, would take about {needed:.1f} cores of its one "
            f"event-loop thread; {outcome}. Coalescing caps it at "
            f"{num(k * capped * largest)} entries/s, about {k * capped * largest * cost:.1f} core."
        )
    lines.append(
        "- Freshness: with coalescing, whenever a token is free the state that goes out is the "
        "sender's newest (the incoming message, or at the next 50 ms presence tick the latest "
        "one kept), so observers skip intermediate positions but their view trails the newest "
        f"cursor by about one token interval (1 / {options.presence_rate:g} s) plus delivery time "
        "(staleness above); the final position goes out at the next tick (final p50/max in the "
        "diagnostics) and every observer converges to it."
    )
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------


def parse_options(argv: Sequence[str]) -> Options:
    defaults = PresencePolicy()
    parser = argparse.ArgumentParser(
        description="Measure awareness fan-out to N clients in one room, with and without "
        "the server's presence coalescing.",
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="observer counts N (default 10 100; --quick: 10)"
    )
    parser.add_argument("--senders", type=int, default=10, help="clients moving a cursor (K)")
    parser.add_argument(
        "--rate", type=float, default=60.0, help="awareness messages/s each sender offers"
    )
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds first (default 2)")
    parser.add_argument("--runs", type=int, help="runs per N and mode (default 3; --quick: 1)")
    parser.add_argument(
        "--presence-rate", type=float, default=defaults.rate,
        help="presence rate of the coalesced server (default: the server's, %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--presence-burst", type=int, default=defaults.burst,
        help="presence burst of the coalesced server (default: the server's, %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=10.0,
        help="seconds to wait after the last send for every observer to converge",
    )  # fmt: skip
    parser.add_argument(
        "--connect-timeout", type=float, default=20.0, help="seconds to connect and sync a client"
    )
    parser.add_argument(
        "--sample-interval", type=float, default=0.025,
        help="mean seconds between two staleness samples",
    )  # fmt: skip
    parser.add_argument(
        "--compression", choices=["deflate", "none"], default="deflate",
        help="offer permessage-deflate like browsers do (default) or not",
    )  # fmt: skip
    parser.add_argument(
        "--outbox-size", type=int,
        help="pass --outbox-size to both servers (default: the server's own default)",
    )  # fmt: skip
    parser.add_argument(
        "--quiet-wait", type=float, default=120.0,
        help="before each run, wait up to this many seconds for the machine to be idle",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: N = 10, 1 run, 0.5 s warm-up, 2 s measured (explicit flags win)",
    )  # fmt: skip
    scheduling.add_option(parser)
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to write the results to"
    )
    args = parser.parse_args(argv)
    sizes = args.sizes or ([10] if args.quick else [10, 100])
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    duration = args.duration if args.duration is not None else (2.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    if (
        min(sizes) < 1
        or runs < 1
        or args.senders < 1
        or args.rate <= 0
        or duration <= 0
        or warmup < 0
        or args.presence_rate <= 0
        or args.presence_burst < 1
        or args.sample_interval <= 0
    ):
        parser.error("sizes, runs, senders, rates, duration and burst must be positive")
    return Options(
        sizes=tuple(sizes),
        senders=args.senders,
        rate=args.rate,
        duration=duration,
        warmup=warmup,
        runs=runs,
        presence_rate=args.presence_rate,
        presence_burst=args.presence_burst,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        sample_interval=args.sample_interval,
        compression=None if args.compression == "none" else args.compression,
        outbox_size=args.outbox_size,
        output=args.output,
        quick=args.quick,
        quiet_wait=args.quiet_wait,
        generator_policy=args.generator_policy,
    )


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    modes = [
        Mode("coalesced", options.presence_rate, options.presence_burst),
        Mode("uncoalesced", UNLIMITED, UNLIMITED),
    ]
    results: dict[tuple[int, str], list[RunResult]] = {}
    problems: list[str] = []
    overloaded: list[str] = []
    load_before = load_average()
    servers: dict[str, OurServer] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            extra = ["--db", str(Path(tmp) / f"{mode.name}.db"), *mode.server_args]
            if options.outbox_size is not None:
                extra += ["--outbox-size", str(options.outbox_size)]
            servers[mode.name] = OurServer(Path(tmp) / f"{mode.name}.log", extra)
        try:
            for server in servers.values():
                await server.start(timeout=30)
            for run in range(1, options.runs + 1):
                for clients in options.sizes:
                    for mode in modes:
                        await settle(servers.values(), options.quiet_wait)
                        result = await run_once(servers[mode.name], mode, clients, options)
                        results.setdefault((clients, mode.name), []).append(result)
                        print(
                            f"N={clients} {mode.name} run {run}: "
                            f"{result.delivered_rate:,.0f} entry-updates/s, "
                            f"{result.frames_per_observer:.1f} frames/observer/s, "
                            f"latency p50 {ms(result.latency_p50)} ms p99 "
                            f"{ms(result.latency_p99)} ms, staleness p50 "
                            f"{ms(result.staleness_p50)} ms p99 {ms(result.staleness_p99)} ms, "
                            f"server CPU {pct(result.server_cpu_share)}, generator CPU "
                            f"{pct(result.generator_cpu_share)}, other CPU "
                            f"{pct(result.other_cpu_share)}, converged "
                            f"{result.converged}/{clients}",
                            file=sys.stderr,
                            flush=True,
                        )
                        label = f"N={clients} {mode.name} run {run}"
                        problems.extend(f"{label}: {p}" for p in result.problems)
                        # Without coalescing, overload is what is being shown, not a failure.
                        outcomes = overloaded if mode.name == "uncoalesced" else problems
                        outcomes.extend(f"{label}: {p}" for p in result.overload)
        except (RuntimeError, OSError, TimeoutError) as exc:
            problems.append(f"aborted: {exc!r}")
        finally:
            for server in servers.values():
                await server.stop(timeout=15)
        logs = {name: server.log_lines() for name, server in servers.items()}

    for name, (server_log, _) in logs.items():
        if any("ERROR" in line or "Traceback" in line for line in server_log):
            problems.append(f"the {name} server logged errors during the runs (see its log below)")
    for name, server in servers.items():
        if server.returncode not in (0, None):
            problems.append(f"the {name} server exited with status {server.returncode}")
    ordered = {
        (clients, mode.name): results[(clients, mode.name)]
        for clients in options.sizes
        for mode in modes
        if (clients, mode.name) in results
    }
    report = [
        header(options, argv, servers, modes, (load_before, load_average())),
        "",
        tables(ordered, options) if ordered else "(no results)",
        "",
        interpretation(ordered, options),
        "",
    ]
    for name, (server_log, _) in logs.items():
        if server_log:
            report += [f"The {name} server's log during the runs:", "", "```"]
            report += [*server_log[:40], "```", ""]
    if overloaded:
        report += [
            "Overload without coalescing (what coalescing prevents; not counted as a failure):",
            "",
            *(f"- {p}" for p in overloaded[:50]),
            "",
        ]
    if problems:
        report += ["**Problems:**", "", *(f"- {p}" for p in problems[:50]), ""]
    elif overloaded:
        report += [
            "With coalescing, every observer converged to every sender's final state and no "
            "connection was closed; no state was re-issued by the server in either mode.",
            "",
        ]
    else:
        report += [
            "Every observer converged to every sender's final state; no connection was "
            "closed during a run; no state was re-issued by the server.",
            "",
        ]
    text = "\n".join(report)
    publish(text, options.output)
    return 1 if problems else 0


def main() -> None:
    options = parse_options(sys.argv[1:])
    scheduling.apply(options.generator_policy)
    sys.exit(asyncio.run(benchmark(options, sys.argv)))


if __name__ == "__main__":
    main()
