"""Cluster fan-out: what does a second node buy, and what does a cross-node hop cost,
against Hocuspocus with its Redis extension?

    python benchmarks/cluster_fanout.py                # both measurements, 1 and 2 nodes
    python benchmarks/cluster_fanout.py --quick        # smoke run: small sizes, 1 short run
    python benchmarks/cluster_fanout.py --servers ours --rates 10 20 --runs 1

The clusters (`harness/cluster.py`), on the machine's Redis, one node or two:
* **ours**: `python -m server serve` nodes on a fresh PostgreSQL database (the owner
  of a document stores every update). A client on a node that does not own its
  document is relayed to the owner through Redis streams. One node is a cluster of
  one (same command, Redis and database), so that only the second node differs.
* **hocuspocus-redis**: Hocuspocus 3.4.4 with `@hocuspocus/extension-redis` 3.4.4
  (`peers/hocuspocus_redis_server.mjs`): every instance holding a document applies
  every update and passes changes on through Redis pub/sub (it stores nothing).

Measurements
------------
* **throughput**: 1,000 clients over 100 rooms (`--throughput-size`), 2 writers a
  room (`--throughput-writers`) at each of `--rates` edits/s, the others observers. The
  fleet is the load balancer: client j of room r goes to node (j + r) mod 2, so the
  first client of each room (a writer, which opens it) claims half of the rooms for
  each node, each room's other writer is on the other node (its edits cross to the
  owner first), and the observers are split. The default rates bracket where one node
  saturates on this 2-core machine: at 10 it delivers everything within a few ms; at
  20 the cores are full (the node, the generator, PostgreSQL) and fan-out grows to
  tens of ms; 40 offers twice that again.
* **latency**: one room of 100 clients (`--latency-size`), 10 writers at 5 edits/s
  each, on one node and over two (5 writers and 45 observers on each): fan-out then
  includes the cross-node hops (edge to owner to edge).

Each figure is the median over `--runs` interleaved runs (`harness/session.py`: a
warm-up run of the generator first, the machine quiet before each run); fan-out,
deliveries and convergence are `harness/load.py`'s. CPU over the measured window:
each node, Redis (the whole redis-server), PostgreSQL (its own processes and the
cluster's database's backends), the generator (this process) and the rest of the
machine, which add up to its busy time. The generator shares the 2 cores with all of
them: what a second node can buy is bounded by the CPU left for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import options as flags
from harness import plots, provenance, scheduling
from harness.cluster import REDIS_URL, ClusterNodes
from harness.load import RunResult, Size, parse_size
from harness.provenance import load_average
from harness.report import (
    converged_text,
    deflate_accepted,
    heading,
    listed,
    logged_errors,
    median_of,
    ms,
    num,
    publish,
    relative,
    table,
    write_runs_json,
)
from harness.servers import HOCUSPOCUS_REDIS, RESULTS, SPECS, ensure_peers_installed
from harness.session import Session, interleaved
from harness.stats import median, pct
from harness.stores import POSTGRES_URL, postgres_answers, postgres_settings

DEFAULT_OUTPUT = RESULTS / "cluster_fanout.md"
SERVERS = {"ours": SPECS["ours"], HOCUSPOCUS_REDIS.name: HOCUSPOCUS_REDIS}
DEFAULT_RATES = (10.0, 20.0, 40.0)
PARTS = ("node a", "node b", "Redis", "PostgreSQL")
"""The CPU readings of a cluster, in the tables' order."""


@dataclass(frozen=True, slots=True)
class Options:
    servers: tuple[str, ...]
    """The clusters of a measurement, by name (`ours-1`, ...); set per measurement."""
    peers: tuple[str, ...]
    nodes: tuple[int, ...]
    rates: tuple[float, ...]
    throughput_size: Size
    throughput_writers: int
    latency_size: Size
    latency_rate: float
    runs: int
    duration: float
    warmup: float
    timeout: float
    connect_timeout: float
    connect_concurrency: int
    compression: bool
    quiet_wait: float
    redis_url: str
    postgres_url: str
    output: Path
    plots: bool
    quick: bool
    rate: float = 0.0
    """Edits/s per writer of the measurement under way (set per measurement)."""
    writers: int | None = None
    profile: Path | None = None
    profiler: str = "py-spy"
    ours_args: tuple[str, ...] = ()
    generator_policy: str = "batch"


@dataclass(frozen=True, slots=True)
class Point:
    """One measurement: its name, load, and the runs' results by cluster."""

    name: str
    size: Size
    rate: float
    session: Session


def cpu_cells(runs: Sequence[RunResult]) -> list[str]:
    """CPU shares (median over runs): each part of the cluster, the generator, the rest."""
    cells = []
    for part in PARTS:
        values = [r.cpu_shares[part] for r in runs if part in r.cpu_shares]
        cells.append(pct(median(values)) if values else "–")
    rest = [
        r.other_cpu_share - r.cpu_shares.get("Redis", 0.0) - r.cpu_shares.get("PostgreSQL", 0.0)
        for r in runs
    ]
    return [*cells, pct(median_of(runs, "generator_cpu_share")), pct(max(0.0, median(rest)))]


def results_table(
    points: Sequence[Point], clusters: dict[str, ClusterNodes], lead: str
) -> list[str]:
    head = [lead, "server", "offered (deliveries/s)", "delivered (deliveries/s)", "delivered / offered",
            "fan-out p50 (ms)", "fan-out p99 (ms)", "converged", "CPU node a", "CPU node b", "CPU Redis",
            "CPU PostgreSQL", "CPU generator", "CPU rest", "runs"]  # fmt: skip
    rows = []
    for point in points:
        for name, cluster in clusters.items():
            runs = point.session.results.get((point.size.key, False, name))
            if not runs:
                continue
            delivered, offered = median_of(runs, "delivered_rate"), runs[0].offered_rate
            rows.append([
                f"{point.rate:g}" if lead.startswith("edits") else point.size.label, cluster.label,
                num(offered), num(delivered), pct(delivered / offered),
                ms(median_of(runs, "fanout_p50")), ms(median_of(runs, "fanout_p99")),
                converged_text(runs), *cpu_cells(runs), len(runs),
            ])  # fmt: skip
    return table(head, "ll" + "r" * 5 + "l" + "r" * 7, rows)


def verdicts(throughput: Sequence[Point], latency: Point | None, options: Options) -> list[str]:
    """Two nodes' figures against one's, for each server and measurement; our targets."""

    def pair(point: Point, server: str) -> tuple[Sequence[RunResult], Sequence[RunResult]]:
        one, two = (point.session.results.get((point.size.key, False, f"{server}-{n}"), [])
                    for n in (1, 2))  # fmt: skip
        return (one, two) if one and two else ((), ())

    def p99(runs: Sequence[RunResult]) -> float:
        return median_of(runs, "fanout_p99")

    def rate(runs: Sequence[RunResult]) -> float:
        return median_of(runs, "delivered_rate")

    lines = ["**Two nodes against one** (medians):", ""]
    for server, point in ((s, p) for s in options.peers for p in [*throughput, latency] if p):
        one, two = pair(point, server)
        if not one:
            continue
        what = (f"{point.rate:g} edits/s per writer" if point.name == "throughput"
                else f"one room of {point.size.clients}")  # fmt: skip
        cpu = [1e6 * median_of(r, "server_cpu_share") / rate(r) for r in (two, one)]
        lines.append(
            f"- {'ours' if server == 'ours' else HOCUSPOCUS_REDIS.label}, {what}: delivered "
            f"{num(rate(two))} against {num(rate(one))}/s ({rate(two) / rate(one):.2f}x; "
            f"{one[0].offered_rate / rate(one):.2f}x at most at this load); fan-out p50 "
            f"{ms(median_of(two, 'fanout_p50'))} against {ms(median_of(one, 'fanout_p50'))} ms, "
            f"p99 {ms(p99(two))} against {ms(p99(one))} ({times(p99(two), p99(one))}); the "
            f"nodes' CPU {cpu[0]:.0f} against {cpu[1]:.0f} µs a delivery"
        )
    targets = []
    if throughput and (both := pair(throughput[-1], "ours"))[0]:
        one, two = both
        ratio = rate(two) / rate(one)
        met = ratio >= 1.7 and p99(two) <= p99(one)
        targets.append(
            f"two nodes carry at least 1.7x the deliveries/s of one at no worse p99, at the "
            f"highest load ({throughput[-1].rate:g} edits/s per writer): {ratio:.2f}x, p99 "
            f"{ms(p99(two))} against {ms(p99(one))} ms: **{'met' if met else 'not met'}**"
        )
    if latency is not None and (both := pair(latency, "ours"))[0]:
        one, two = both
        ratio = p99(two) / p99(one)
        targets.append(f"cross-node fan-out p99 at most 2x single-node: {ratio:.2f}x "
                       f"({ms(p99(two))} against {ms(p99(one))} ms): "
                       f"**{'met' if ratio <= 2 else 'not met'}**")  # fmt: skip
        if theirs := pair(latency, HOCUSPOCUS_REDIS.name)[1]:
            ratio = p99(two) / p99(theirs)
            targets.append(
                f"cross-node fan-out p99 at most Hocuspocus + Redis's over two instances: "
                f"{ms(p99(two))} against {ms(p99(theirs))} ms ({ratio:.2f}x): "
                f"**{'met' if ratio <= 1 else 'not met'}**"
            )
    return [*lines, "", *listed("**Our targets:**", targets)]


def times(a: float, b: float) -> str:
    """a / b as "1.23x", or "n/a" where either is "never" (infinite) or missing."""
    return f"{a / b:.2f}x" if math.isfinite(a) and math.isfinite(b) and b else "n/a"


def header(
options: Options, argv: Sequence[str], clusters: dict[str, ClusterNodes],
           session: Session, pg: str, started: float) -> str:  # fmt: skip
    lines = [
        *heading(
            "Cluster fan-out: one node against two, ours and Hocuspocus + Redis", argv, started
        ),
        f"- machine: {provenance.machine()} (2 cores shared by every node, Redis, PostgreSQL "
        f"and the load generator); 1-minute load average: {', '.join(session.loads)}",
        f"- {provenance.software('pycrdt', 'redis', 'psutil')}; {provenance.peer_versions()}, "
        f"@hocuspocus/extension-redis 3.4.4; collab-engine commit {provenance.server_commit(True)}",
        f"- {pg}; Redis at {options.redis_url}; a fresh database and key prefix per cluster",
        f"- load: throughput {options.throughput_size.label}, {options.throughput_writers} "
        f"writers a room at {', '.join(f'{r:g}' for r in options.rates)} edits/s each; latency "
        f"{options.latency_size.label} in one room, {options.latency_size.writers_per_room(None)} "
        f"writers at {options.latency_rate:g} "
        f"edits/s each; {options.warmup:g} s of warm-up edits then {options.duration:g} s "
        f"measured per run, {options.runs} runs (median), awareness off",
        f"- generator's scheduling policy: {scheduling.current()} (the servers': normal)",
        deflate_accepted(options.compression, session.extensions),
    ]
    for cluster in clusters.values():
        lines += [f"- {cluster.label}: `{c}`" for c in cluster.display_commands()]
    return "\n".join(lines)


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    # fmt: off
    add("--servers", default="ours,hocuspocus-redis",
        help="comma-separated, from ours and hocuspocus-redis (default: both)")
    add("--nodes", type=int, nargs="+", default=[1, 2], help="node counts (default 1 2)")
    add("--rates", type=float, nargs="+", help="throughput: edits/s per writer (default "
        f"{' '.join(f'{r:g}' for r in DEFAULT_RATES)}; --quick: 10)")
    add("--throughput-size", type=parse_size, help="N/ROOMS (default 1000/100; --quick 200/20)")
    add("--throughput-writers", type=int, default=2, help="writers a room (default 2)")
    add("--latency-size", type=parse_size, help="clients in one room (default 100; --quick 20)")
    add("--latency-rate", type=float, default=5.0, help="edits/s per writer (default 5)")
    add("--runs", type=int, help="runs per cluster and measurement (default 3; --quick 1)")
    add("--duration", type=float, help="measured seconds per run (default 5; --quick 2)")
    add("--warmup", type=float, default=1.0, help="seconds of unmeasured edits first")
    add("--timeout", type=float, default=15.0,
        help="seconds to wait for convergence after the last edit (default 15)")
    add("--connect-timeout", type=float, default=60.0,
        help="seconds to connect and sync every client of a run (default 60)")
    add("--redis-url", default=REDIS_URL, help=f"the Redis the clusters share ({REDIS_URL})")
    add("--postgres-url", default=POSTGRES_URL,
        help="a PostgreSQL database; ours' clusters each get a fresh one on its server")
    # fmt: on
    flags.add_connect_concurrency(parser)
    flags.add_compression(parser)
    flags.add_quiet_wait(parser, 3.0)
    add("--no-plots", action="store_true", help="write no PNG plots")
    scheduling.add_option(parser)
    add("--quick", action="store_true", help="smoke run: small sizes, 1 short run (flags win)")
    flags.add_output(parser, DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    peers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    if not peers or set(peers) - set(SERVERS):
        parser.error(f"--servers takes {', '.join(SERVERS)}")
    if min(args.nodes) < 1 or max(args.nodes) > 8:
        parser.error("--nodes: 1 to 8")
    quick = args.quick
    return flags.from_args(
        Options, args, servers=(), peers=peers, nodes=tuple(sorted(set(args.nodes))),
        rates=tuple(args.rates or ((10.0,) if quick else DEFAULT_RATES)),
        throughput_size=args.throughput_size or parse_size("200/20" if quick else "1000/100"),
        latency_size=args.latency_size or parse_size("20" if quick else "100"),
        runs=flags.given(args.runs, 1 if quick else 3),
        duration=flags.given(args.duration, 2.0 if quick else 5.0),
        compression=flags.deflate(args), plots=not args.no_plots,
    )  # fmt: skip


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    started = time.time()
    if not postgres_answers():
        raise SystemExit("no PostgreSQL answers at 127.0.0.1:5432: ours' cluster needs one")
    if HOCUSPOCUS_REDIS.name in options.peers:
        ensure_peers_installed(["hocuspocus"])
    pg = await postgres_settings(options.postgres_url)
    overall = Session()
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as tmp:
        clusters = {
            c.name: c
            for c in (
                ClusterNodes(SERVERS[s], n, Path(tmp), options.redis_url, options.postgres_url)
                for s in options.peers
                for n in options.nodes
            )
        }
        names = tuple(clusters)
        measured = [("throughput", options.throughput_size, r, options.throughput_writers)
                    for r in options.rates]  # fmt: skip
        measured.append(("latency", options.latency_size, options.latency_rate, None))
        try:
            for cluster in clusters.values():
                await cluster.start()
            for name, size, rate, writers in measured:
                overall.loads.append(f"{load_average()} ({name}, {rate:g}/s)")
                session = Session(most_clients=overall.most_clients)
                point = Point(name, size, rate, session)
                points.append(point)
                these = dataclasses.replace(options, servers=names, rate=rate, writers=writers)
                await interleaved(session, clusters, these, size, False)
                overall.most_clients = session.most_clients
                overall.extensions.update(session.extensions)
            for cluster in clusters.values():
                if cluster.count > 1 and (owned := await cluster.owned()):
                    counts = ", ".join(f"{node} {n:,}" for node, n in owned.items())
                    overall.notes.append(f"{cluster.label}, documents each node owned at the "
                                         f"end (its clients opened them first): {counts}")  # fmt: skip
        finally:
            for cluster in clusters.values():
                await cluster.stop()
                overall.logs[cluster.label], refusals = cluster.log_text()
                if refusals:
                    overall.notes.append(
                        f"{cluster.label}: its Redis extension refused {refusals} time(s) to "
                        "let an instance store a document another was storing (logged as "
                        "errors by Hocuspocus; the extension's design, taken out of the log)"
                    )
                if cluster.unclean_exits:
                    overall.problems.append(f"{cluster.label}: a node exited uncleanly")
    overall.loads.append(f"{load_average()} (after)")
    throughput = [p for p in points if p.name == "throughput"]
    latency = next((p for p in points if p.name == "latency"), None)
    report = [
        header(options, argv, clusters, overall, pg, started),
        "",
        "## Throughput: one node against two",
        "",
        *results_table(throughput, clusters, "edits/s per writer"),
        "",
        "## Latency: one room over two nodes against one",
        "",
        *results_table([latency] if latency else [], clusters, "clients"),
        "",
        "Delivered: update deliveries received per second in the measured window, all "
        "rooms; offered: writers x rate x (clients a room - 1). Fan-out: time until every "
        "other client of the room has an edit. CPU: share of one core over the measured "
        "window (node a opens half of the rooms, node b the other half); Redis: the whole "
        "redis-server; PostgreSQL: its own processes and the cluster's database's "
        "backends; rest: everything else (other work on this shared machine, and kernel time "
        "charged to no process: interrupts taken while idle, ksoftirqd). 200 % is both cores.",
        "",
        *verdicts(throughput, latency, options),
    ]
    everything = [r for p in points for runs in p.session.results.values() for r in runs]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    write_runs_json(options.output.with_suffix(".json"), everything)
    if options.plots and everything:
        written = draw(points, clusters, options.output)
        report += [f"Plots: {', '.join(f'`{relative(p)}`' for p in written)}", ""]
    problems = overall.problems + [q for p in points for q in p.session.problems]
    report += listed("Notes:", overall.notes + [n for p in points for n in p.session.notes], None)
    report += logged_errors(overall.logs, problems)
    report += listed("**Problems:**", problems, 60)
    publish("\n".join(report), options.output)
    return 1 if problems else 0


def draw(points: Sequence[Point], clusters: dict[str, ClusterNodes], output: Path) -> list[Path]:
    labels = [c.label for c in clusters.values()]

    def series(point: Point, metric: str, scale: float) -> list[float]:
        """Each cluster's median (NaN where it has none, or "never": no bar)."""
        runs = [point.session.results.get((point.size.key, False, n)) for n in clusters]
        values = [median_of(r, metric) * scale if r else math.nan for r in runs]
        return [v if math.isfinite(v) else math.nan for v in values]

    rates = [p for p in points if p.name == "throughput"]
    throughput = {f"{p.rate:g} edits/s per writer": series(p, "delivered_rate", 1) for p in rates}
    waits = {f"{p.rate:g} edits/s per writer": series(p, "fanout_p99", 1000) for p in rates}
    latency = {f"fan-out {q}": series(p, f"fanout_{q}", 1000)
               for p in points if p.name == "latency" for q in ("p50", "p99")}  # fmt: skip
    return [
        plots.bars(labels, throughput, f"Throughput, {points[0].size.label}",
                   "delivered (deliveries/s)", output.parent / f"{output.stem}_throughput.png"),
        plots.bars(labels, waits, f"Fan-out p99 under the throughput load, {points[0].size.label}",
                   "fan-out p99 (ms, log)", output.parent / f"{output.stem}_throughput_p99.png", log=True),
        plots.bars(labels, latency, "Latency, one room spread over the nodes", "ms",
                   output.parent / f"{output.stem}_latency.png"),
    ]  # fmt: skip


if __name__ == "__main__":
    flags.main(parse_options, benchmark)
