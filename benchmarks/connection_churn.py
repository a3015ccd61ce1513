"""Connection churn: does a server give back the memory of connections that closed?

Usage:

    python benchmarks/connection_churn.py                       # ours and node, 5 rounds
    python benchmarks/connection_churn.py --servers ours --rounds 10
    python benchmarks/connection_churn.py --servers ours,node,hocuspocus,pycrdt

One server process per server, started fresh, then `--rounds` times: `--clients`
clients (light observers, as in `server_fanout.py`) connect to `--documents`
documents, sync, and close. The RSS is read (once settled, as `memory.py` does) at
rest before the first round, with the clients connected, and after they have all
closed. A server that frees what a closed connection held ends every round about
where the first ended; one that keeps it, or leaves it for a collection that does not
come, grows by about the same amount each round.

Our server is run as its default: documents in SQLite (`--db` in a temporary
directory). The peers keep documents in memory. Documents unload a few seconds after
their last client left (ours after `--unload-grace`, 2 s; each peer on its own
terms): the RSS after closing is read once settled, after at least 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from harness import provenance
from harness.fleet import MeasurementFailed, Observer, Peer, Room, RunState, close_all, connect
from harness.provenance import load_average, version
from harness.report import publish
from harness.servers import (
    RESULTS,
    SPECS,
    ServerProcess,
    ensure_peers_installed,
    parse_servers,
    settled_rss,
)

DEFAULT_OUTPUT = RESULTS / "connection_churn.md"
AFTER_CLOSE = 3.0
"""Seconds to wait after the clients closed before the RSS is read (documents unload)."""


@dataclass(frozen=True, slots=True)
class Options:
    servers: tuple[str, ...]
    clients: int
    documents: int
    rounds: int
    connect_concurrency: int
    output: Path


@dataclass(slots=True)
class Churn:
    at_rest: int
    connected: list[int]
    closed: list[int]


async def churn(name: str, options: Options, tmp: Path, notes: list[str]) -> Churn:
    """One fresh server through every round."""
    server = ServerProcess(SPECS[name], Path(tempfile.mkdtemp(dir=tmp)))
    run = RunState(stamps_identity=False)
    hocuspocus = SPECS[name].hocuspocus
    try:
        await server.start()
        result = Churn(await settled_rss(server, f"{name} at rest", notes), [], [])
        for index in range(1, options.rounds + 1):
            tag = uuid.uuid4().hex[:8]
            rooms = [
                Room(i, f"churn-{tag}-{i}", hocuspocus, writers=0, edits_per_writer=0)
                for i in range(options.documents)
            ]
            factories = [
                partial(Observer, run, rooms[j % len(rooms)], server.port, False, f"client {j}")
                for j in range(options.clients)
            ]
            peers: list[Peer] = []
            try:
                await connect(factories, server.port, options.connect_concurrency, peers)
                result.connected.append(await settled_rss(server, f"{name} round {index}", notes))
            finally:
                await close_all(peers)
            await asyncio.sleep(AFTER_CLOSE)
            result.closed.append(await settled_rss(server, f"{name} round {index} closed", notes))
            if not server.alive:
                raise MeasurementFailed(f"the server exited in round {index}")
            print(
                f"{name}, round {index}: {result.connected[-1] / 1e6:.1f} MB with "
                f"{options.clients} clients, {result.closed[-1] / 1e6:.1f} MB after they closed",
                file=sys.stderr,
                flush=True,
            )
        return result
    finally:
        await server.stop()


def report(results: dict[str, Churn], failures: dict[str, str], options: Options) -> str:
    rounds = range(1, options.rounds + 1)
    lines = [
        "| server | at rest (MB) | "
        + " | ".join(f"after round {r} closed (MB)" for r in rounds)
        + " | growth per round after the first (MB) |",
        "|---|---:|" + "---:|" * options.rounds + "---:|",
    ]
    for name, result in results.items():
        closed = result.closed
        per_round = (closed[-1] - closed[0]) / (len(closed) - 1) if len(closed) > 1 else 0.0
        lines.append(
            f"| {SPECS[name].label} | {result.at_rest / 1e6:.1f} | "
            + " | ".join(f"{value / 1e6:.1f}" for value in closed)
            + f" | {per_round / 1e6:+.1f} |"
        )
    for name, why in failures.items():
        lines.append(f"| {SPECS[name].label} | failed: {why} |" + " |" * (options.rounds + 1))
    lines += [
        "",
        "With the clients connected (MB): "
        + "; ".join(
            f"{SPECS[name].label} " + ", ".join(f"{value / 1e6:.1f}" for value in r.connected)
            for name, r in results.items()
        )
        + ".",
    ]
    return "\n".join(lines)


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    started = time.time()
    if any(name in ("node", "hocuspocus") for name in options.servers):
        ensure_peers_installed()
    loads = [load_average()]
    results: dict[str, Churn] = {}
    failures: dict[str, str] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        commands = {
            name: ServerProcess(SPECS[name], tmp).display_command() for name in options.servers
        }
        for name in options.servers:
            try:
                results[name] = await churn(name, options, tmp, notes)
            except (RuntimeError, OSError, TimeoutError) as exc:
                failures[name] = str(exc) or repr(exc)
                print(f"{name}: failed: {failures[name]}", file=sys.stderr, flush=True)
    loads.append(load_average())
    commit = provenance.commit(
        ["collab_engine", "server", "storage"], "plus uncommitted changes to the server"
    )
    text = "\n".join(
        [
            "# Connection churn: memory after connections close",
            "",
            f"- command: `{provenance.command_line(argv)}`",
            f"- date: {provenance.utc_now()}; took {(time.time() - started) / 60:.1f} min",
            f"- machine: {provenance.machine()}; "
            f"1-minute load average before and after: {' and '.join(loads)}",
            f"- Python {sys.version.split()[0]}, hypercorn {version('hypercorn')}; "
            f"collab-engine commit {commit}",
            f"- per round: {options.clients:,} clients over {options.documents:,} documents "
            f"connect ({options.connect_concurrency} handshakes at once), sync and close; "
            f"{options.rounds} rounds on one server process; RSS read once settled, after "
            f"at least {AFTER_CLOSE:g} s once the clients closed",
            *(f"- {name}: `{command}`" for name, command in commands.items()),
            "",
            report(results, failures, options),
            "",
            *(["Notes:", "", *(f"- {n}" for n in notes), ""] if notes else []),
        ]
    )
    publish(text, options.output)
    return 1 if failures else 0


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Memory after rounds of connections opened and closed, per server."
    )
    parser.add_argument(
        "--servers", default="ours,node",
        help=f"comma-separated, from {','.join(SPECS)} (default: ours,node)",
    )  # fmt: skip
    parser.add_argument("--clients", type=int, default=1000, help="clients per round")
    parser.add_argument("--documents", type=int, default=100, help="documents they spread over")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per server")
    parser.add_argument("--connect-concurrency", type=int, default=50, help="handshakes at once")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to write the results to"
    )
    args = parser.parse_args(argv)
    if min(args.clients, args.documents, args.rounds, args.connect_concurrency) < 1:
        parser.error("clients, documents, rounds and the concurrency must be positive")
    return Options(
        servers=parse_servers(parser, args.servers),
        clients=args.clients,
        documents=args.documents,
        rounds=args.rounds,
        connect_concurrency=args.connect_concurrency,
        output=args.output,
    )


def main() -> None:
    options = parse_options(sys.argv[1:])
    sys.exit(asyncio.run(benchmark(options, sys.argv)))


if __name__ == "__main__":
    main()
