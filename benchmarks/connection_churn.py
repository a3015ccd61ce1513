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
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from harness import options as flags
from harness import provenance
from harness.fleet import MeasurementFailed, Observer, Peer, Room, RunState, close_all, connect
from harness.footprint import settled_rss
from harness.provenance import load_average
from harness.report import heading, listed, mb, publish, say, table
from harness.servers import RESULTS, SPECS, ServerProcess, commands, ensure_peers_installed

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
            say(
                f"{name}, round {index}: {mb(result.connected[-1])} MB with "
                f"{options.clients} clients, {mb(result.closed[-1])} MB after they closed"
            )
        return result
    finally:
        await server.stop()


def report(results: dict[str, Churn], failures: dict[str, str], options: Options) -> str:
    rounds = range(1, options.rounds + 1)
    head = ["server", "at rest (MB)", *(f"after round {r} closed (MB)" for r in rounds),
            "growth per round after the first (MB)"]  # fmt: skip
    rows = []
    for name, result in results.items():
        closed = result.closed
        per_round = (closed[-1] - closed[0]) / (len(closed) - 1) if len(closed) > 1 else 0.0
        rows.append([SPECS[name].label, mb(result.at_rest), *map(mb, closed),
                     f"{per_round / 1e6:+.1f}"])  # fmt: skip
    lines = table(head, "l" + "r" * (len(head) - 1), rows)
    for name, why in failures.items():
        lines.append(f"| {SPECS[name].label} | failed: {why} |" + " |" * (options.rounds + 1))
    connected = "; ".join(
        f"{SPECS[name].label} " + ", ".join(map(mb, r.connected)) for name, r in results.items()
    )
    lines += ["", f"With the clients connected (MB): {connected}."]
    return "\n".join(lines)


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    started = time.time()
    ensure_peers_installed(options.servers)
    loads = [load_average()]
    results: dict[str, Churn] = {}
    failures: dict[str, str] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        started_as = commands(options.servers, tmp)
        for name in options.servers:
            try:
                results[name] = await churn(name, options, tmp, notes)
            except (RuntimeError, OSError, TimeoutError) as exc:
                failures[name] = str(exc) or repr(exc)
                say(f"{name}: failed: {failures[name]}")
    loads.append(load_average())
    text = "\n".join(
        [
            *heading("Connection churn: memory after connections close", argv, started),
            f"- machine: {provenance.machine()}; "
            f"1-minute load average before and after: {' and '.join(loads)}",
            f"- {provenance.software('hypercorn')}; "
            f"collab-engine commit {provenance.server_commit(True)}",
            f"- per round: {options.clients:,} clients over {options.documents:,} documents "
            f"connect ({options.connect_concurrency} handshakes at once), sync and close; "
            f"{options.rounds} rounds on one server process; RSS read once settled, after "
            f"at least {AFTER_CLOSE:g} s once the clients closed",
            *(f"- {name}: `{command}`" for name, command in started_as.items()),
            "",
            report(results, failures, options),
            "",
            *listed("Notes:", notes, None),
        ]
    )
    publish(text, options.output)
    return 1 if failures else 0


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Memory after rounds of connections opened and closed, per server."
    )
    flags.add_servers(parser, ("ours", "node"))
    parser.add_argument("--clients", type=int, default=1000, help="clients per round")
    parser.add_argument("--documents", type=int, default=100, help="documents they spread over")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per server")
    flags.add_connect_concurrency(parser)
    flags.add_output(parser, DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if min(args.clients, args.documents, args.rounds, args.connect_concurrency) < 1:
        parser.error("clients, documents, rounds and the concurrency must be positive")
    return flags.from_args(Options, args, servers=flags.servers(parser, args))


if __name__ == "__main__":
    flags.main(parse_options, benchmark)
