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
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import options as flags
from harness import provenance, scheduling
from harness.cursors import Mode, RunResult, run_once
from harness.provenance import load_average
from harness.report import (
    code,
    heading,
    listed,
    machine,
    median_of,
    ms,
    num,
    outcome,
    publish,
    say,
    table,
)
from harness.sampling import settle
from harness.servers import RESULTS, OurServer, running
from harness.stats import pct

from collab_engine.presence import PresencePolicy

DEFAULT_OUTPUT = RESULTS / "awareness_fanout.md"

UNLIMITED = 1_000_000
"""Presence rate and burst of the uncoalesced server: never reached."""


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
    quiet_wait: float
    generator_policy: str = "batch"


# -- the report -----------------------------------------------------------------------


def header(
    options: Options,
    argv: Sequence[str],
    servers: dict[str, OurServer],
    loads: Sequence[str],
) -> str:
    lines = [
        *heading(
            "Awareness fan-out: cursors to N clients in one room, with and without coalescing",
            argv,
        ),
        machine(
            loads,
            f"; each run waits (up to {options.quiet_wait:g} s) for the machine to be idle "
            "first, and the CPU other processes used during each window is in the diagnostics",
        ),
        f"- {provenance.software('pycrdt', 'websockets', 'hypercorn')}, "
        f"collab-engine commit {provenance.server_commit()}",
        f"- load: {options.senders} senders each moving a cursor at {options.rate:g} awareness "
        f"messages/s, N observers that only read; {options.warmup:g} s warm-up then "
        f"{options.duration:g} s measured per run; {options.runs} runs per N and mode, modes "
        "interleaved (median of each figure)",
    ]
    lines += [f"- {name} server: `{server.display_command()}`" for name, server in servers.items()]
    lines.append(
        f"- WebSocket compression offered by the clients: {options.compression or 'none'}; "
        "presence tick every 50 ms (`EngineConfig.presence_interval`); this process's "
        f"scheduling policy: {scheduling.current()} (the servers': normal; see "
        "`benchmarks/harness/scheduling.py`)"
    )
    return "\n".join(lines)


def tables(results: dict[tuple[int, str], list[RunResult]], options: Options) -> str:
    head = ["N observers", "mode", "offered updates/s", "awareness frames / observer / s",
            "delivered entry-updates/s (all observers)", "latency p50 (ms)", "latency p99 (ms)",
            "staleness p50 (ms)", "staleness p99 (ms)", "server CPU (one core)",
            "converged observers (per run)"]  # fmt: skip
    rows = []
    for (clients, mode), runs in results.items():
        if all(r.converged == clients for r in runs):
            converged = f"{clients} / {clients} in every run"
        else:
            converged = f"{', '.join(str(r.converged) for r in runs)} / {clients}"
        if any(r.closed for r in runs):
            converged += f" ({', '.join(str(r.closed) for r in runs)} evicted)"
        rows.append([
            clients, mode, num(median_of(runs, "offered_rate")),
            f"{median_of(runs, 'frames_per_observer'):,.1f}", num(median_of(runs, "delivered_rate")),
            *(ms(median_of(runs, name)) for name in
              ("latency_p50", "latency_p99", "staleness_p50", "staleness_p99")),
            pct(median_of(runs, "server_cpu_share")), converged,
        ])  # fmt: skip
    lines = table(head, "rl" + "r" * 9, rows)
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
    ]
    head = ["N observers", "mode", "entries / frame", "staleness max (ms)", "final p50 (ms)",
            "final max (ms)", "server CPU per offered update (ms)",
            "server CPU per delivered entry (µs)", "generator CPU", "other CPU",
            "not-newer entries", "sender lag p99 (ms)", "observers evicted after (s)"]  # fmt: skip
    rows = [
        [
            clients, mode, f"{median_of(runs, 'entries_per_frame'):.2f}",
            *(ms(median_of(runs, name)) for name in ("staleness_max", "final_p50", "final_max")),
            f"{median_of(runs, 'server_cpu_per_offered') * 1000:.3f}",
            f"{median_of(runs, 'server_cpu_per_entry') * 1e6:.1f}",
            pct(median_of(runs, "generator_cpu_share")), pct(median_of(runs, "other_cpu_share")),
            sum(r.not_newer for r in runs), ms(median_of(runs, "send_lag_p99")), evictions(runs),
        ]
        for (clients, mode), runs in results.items()
    ]  # fmt: skip
    return "\n".join(lines + table(head, "rl" + "r" * 10 + "l", rows))


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
        verdict = (
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
            f"event-loop thread; {verdict}. Coalescing caps it at "
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
    flags.add_connect_timeout(parser)
    parser.add_argument(
        "--sample-interval", type=float, default=0.025,
        help="mean seconds between two staleness samples",
    )  # fmt: skip
    flags.add_compression(parser)
    flags.add_outbox_size(parser, "both servers")
    flags.add_quiet_wait(parser, 120.0)
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: N = 10, 1 run, 0.5 s warm-up, 2 s measured (explicit flags win)",
    )  # fmt: skip
    scheduling.add_option(parser)
    flags.add_output(parser, DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    quick = args.quick
    options = flags.from_args(
        Options,
        args,
        sizes=tuple(args.sizes or ([10] if quick else [10, 100])),
        runs=flags.given(args.runs, 1 if quick else 3),
        duration=flags.given(args.duration, 2.0 if quick else 5.0),
        warmup=flags.given(args.warmup, 0.5 if quick else 2.0),
        compression=flags.websockets_compression(args),
    )
    if (
        min(options.sizes) < 1
        or min(options.runs, options.senders, options.presence_burst) < 1
        or min(options.rate, options.duration, options.presence_rate) <= 0
        or options.warmup < 0
        or options.sample_interval <= 0
    ):
        parser.error("sizes, runs, senders, rates, duration and burst must be positive")
    return options


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    modes = [
        Mode("coalesced", options.presence_rate, options.presence_burst),
        Mode("uncoalesced", UNLIMITED, UNLIMITED),
    ]
    results: dict[tuple[int, str], list[RunResult]] = {
        (clients, mode.name): [] for clients in options.sizes for mode in modes
    }
    problems: list[str] = []
    overloaded: list[str] = []
    loads = [load_average()]
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            mode.name: OurServer(
                Path(tmp) / f"{mode.name}.log",
                ["--db", str(Path(tmp) / f"{mode.name}.db"), *mode.server_args,
                 *flags.outbox_args(options.outbox_size)],
            )
            for mode in modes
        }  # fmt: skip
        async with running(servers, problems):
            for run in range(1, options.runs + 1):
                for clients in options.sizes:
                    for mode in modes:
                        await settle(servers.values(), options.quiet_wait)
                        result = await run_once(servers[mode.name], mode, clients, options)
                        results[(clients, mode.name)].append(result)
                        label = f"N={clients} {mode.name} run {run}"
                        say(f"{label}: {result.summary()}")
                        problems.extend(f"{label}: {p}" for p in result.problems)
                        # Without coalescing, overload is what is being shown, not a failure.
                        outcomes = overloaded if mode.name == "uncoalesced" else problems
                        outcomes.extend(f"{label}: {p}" for p in result.overload)
        logs = {name: server.log_lines()[0] for name, server in servers.items()}
    loads.append(load_average())
    ordered = {key: runs for key, runs in results.items() if runs}
    report = [
        header(options, argv, servers, loads),
        "",
        tables(ordered, options) if ordered else "(no results)",
        "",
        interpretation(ordered, options),
        "",
    ]
    for name, server_log in logs.items():
        report += code(f"The {name} server's log during the runs:", server_log)
    report += listed(
        "Overload without coalescing (what coalescing prevents; not counted as a failure):",
        overloaded,
    )
    report += outcome(
        problems,
        "With coalescing, every observer converged to every sender's final state and no "
        "connection was closed; no state was re-issued by the server in either mode."
        if overloaded
        else "Every observer converged to every sender's final state; no connection was "
        "closed during a run; no state was re-issued by the server.",
    )
    publish("\n".join(report), options.output)
    return 1 if problems else 0


if __name__ == "__main__":
    flags.main(parse_options, benchmark)
