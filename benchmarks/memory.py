"""Server memory, side by side: resident memory per idle connection and per loaded idle
document, ours against the Node y-websocket server, Hocuspocus and pycrdt-websocket.

Usage:

    python benchmarks/memory.py                  # N = 250 500 1000, M = 100 500, 3 runs
    python benchmarks/memory.py --quick          # smoke run: N = 100, M = 50, 1 run
    python benchmarks/memory.py --servers ours,node --connections 1000 --documents 100 --runs 1

Servers
-------
The four of `server_fanout.py`, started by `harness.servers.ServerProcess` with the same
commands on 127.0.0.1: ours (`python -m server serve`, documents stored in SQLite in a temporary
directory), the Node y-websocket server (`@y/websocket-server` 0.1.1, in memory),
Hocuspocus 3.4.4 (in memory) and pycrdt-websocket on hypercorn (in memory). Every
measurement gets a fresh server process, so none inherits another's heap: it is started,
its RSS read with no client, the clients connected, its RSS read again, then the clients
are closed and the process stopped.

Measurements
------------
* idle connections: N clients (`--connections`) to one document, each of which has
  done the y-websocket sync handshake as an empty document (it answers the server's
  sync step 1 with a step 2 holding an empty update, and sends its own step 1 with an
  empty state vector; for Hocuspocus an authentication message first and the document
  name before every message), then stays idle. For pycrdt-websocket's sake the first
  client connects alone (its rooms open badly under concurrent first joins).
* empty documents: M documents (`--documents`), one client each, the same handshake.
* loaded documents: the same, then each client sends one sync update message holding
  about 10 KB of text: one pycrdt update, 10,000 characters inserted into the `Text`
  "t" of a fresh `Doc` (the same update for every document). Once the RSS is read, a
  fresh client syncs the last document and checks that it gets the text back.

The clients are the `Observer`s of `harness/fleet.py` (on its minimal asyncio
WebSocket client), `--connect-concurrency` handshakes at once. Like browsers they offer
permessage-deflate (`--compression none`: they do not), and each server accepts or
declines it as its default configuration does (the header says which); a server that
accepts keeps compression state per connection.

RSS is `memory_info().rss` (psutil) of the server process plus its children, read once
it has settled: 1 s after the server listens or after the last client synced (or sent
its update), then every 0.5 s until two readings differ by less than 1 % (at most 20 s;
a reading that never settled is listed under the table). MB and KB are 10^6 and 10^3
bytes.

Figures
-------
* KB per idle connection: (RSS with N clients - RSS of the same process before any
  client) / N for each N, and the median of those over the N values; next to it the
  least-squares slope of that growth against N, which leaves out what is paid once
  (the document, whatever the first connection loads).
* KB per loaded idle document: ((RSS with M loaded documents - its RSS at 0) - (RSS with
  M empty documents - its RSS at 0)) / M for each M, the cost of the connections and of
  the empty documents thus subtracted; the median over the M values. The details also
  give (RSS with M empty documents - its RSS at 0) / M: one connection plus one empty
  document.
Each figure is the median over `--runs` runs (run r pairs the loaded and empty
measurements of run r), the servers in a rotated order each run. A server that fails a
measurement (cannot connect or sync every client in time, closes connections, dies) gets
no further runs of it, and the table shows why.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from harness import provenance
from harness.fleet import (
    FullClient,
    MeasurementFailed,
    Observer,
    Peer,
    Room,
    RunState,
    close_all,
    connect,
)
from harness.provenance import load_average, version
from harness.report import publish
from harness.servers import (
    RESULTS,
    SPECS,
    ServerProcess,
    ServerSpec,
    ensure_peers_installed,
    parse_servers,
    settled_rss,
)
from harness.stats import median
from pycrdt import Doc, Text

from collab_engine import protocol

DEFAULT_OUTPUT = RESULTS / "memory.md"
CONTENT_CHARS = 10_000


@dataclass(frozen=True, slots=True)
class Measurement:
    kind: str
    """"connections" (N clients, one document), "empty" or "loaded" (M documents)."""
    count: int

    @property
    def documents(self) -> int:
        return 1 if self.kind == "connections" else self.count

    @property
    def label(self) -> str:
        what = {"connections": "idle connections", "empty": "empty documents"}
        return f"{self.count} {what.get(self.kind, 'loaded documents')}"


@dataclass(frozen=True, slots=True)
class Sample:
    base: int
    """RSS in bytes of the fresh server before any client connected."""
    rss: int
    """RSS in bytes with the clients connected (and the documents loaded)."""
    extensions: str
    """The WebSocket extensions the server accepted."""

    @property
    def growth(self) -> int:
        return self.rss - self.base


@dataclass(frozen=True, slots=True)
class Options:
    servers: tuple[str, ...]
    connections: tuple[int, ...]
    documents: tuple[int, ...]
    runs: int
    compression: bool
    connect_concurrency: int
    output: Path


def text_update() -> tuple[str, bytes]:
    """About 10 KB of text and the pycrdt update that inserts it into a fresh document."""
    sentence = "The quick brown fox jumps over the lazy dog while the server keeps count. "
    content = (sentence * (CONTENT_CHARS // len(sentence) + 1))[:CONTENT_CHARS]
    doc: Doc[Text] = Doc()
    doc.get("t", type=Text).insert(0, content)
    return content, doc.get_update()


async def measure(
    spec: ServerSpec,
    measurement: Measurement,
    options: Options,
    tmp: Path,
    update: tuple[str, bytes],
    notes: list[str],
    label: str,
) -> Sample:
    """One fresh server: its RSS at rest, then with the measurement's clients."""
    server = ServerProcess(spec, Path(tempfile.mkdtemp(dir=tmp)))
    run = RunState(stamps_identity=False)
    tag = uuid.uuid4().hex[:8]
    rooms = [
        Room(i, f"memory-{tag}-{i}", spec.hocuspocus, writers=0, edits_per_writer=0)
        for i in range(measurement.documents)
    ]
    deflate = options.compression
    peers: list[Peer] = []
    try:
        await server.start()
        base = await settled_rss(server, f"{label} at 0", notes)
        if measurement.kind == "connections":
            factories = [
                partial(Observer, run, rooms[0], server.port, deflate, f"client {j}")
                for j in range(measurement.count)
            ]
            # The first client alone: pycrdt-websocket starts a room twice when its
            # first clients race to open it, and leaves some of them unserved.
            await connect(factories[:1], server.port, 1, peers)
            await connect(factories[1:], server.port, options.connect_concurrency, peers)
        else:
            factories = [
                partial(Observer, run, room, server.port, deflate, f"client {room.index}")
                for room in rooms
            ]
            message = (
                protocol.encode_sync_update(update[1]) if measurement.kind == "loaded" else b""
            )
            await connect(factories, server.port, options.connect_concurrency, peers, message)
        rss = await settled_rss(server, label, notes)
        if not server.alive:
            raise MeasurementFailed("the server exited with the clients connected")
        if run.closures:
            raise MeasurementFailed(f"{len(run.closures)} connections closed while idle: "
                                    f"{run.closures[0]}")  # fmt: skip
        if measurement.kind == "loaded":
            verifier: list[Peer] = []
            try:
                await connect(
                    [partial(FullClient, run, rooms[-1], server.port, deflate, "verifier")],
                    server.port,
                    1,
                    verifier,
                )
                client = verifier[0]
                assert isinstance(client, FullClient)
                got = str(client.doc.get("t", type=Text))
            finally:
                await close_all(verifier)
            if got != update[0]:
                raise MeasurementFailed(
                    f"a fresh client got {len(got)} characters of text back, not {len(update[0])}"
                )
        return Sample(base, rss, peers[0].extensions)
    finally:
        await close_all(peers)
        await server.stop()
        if any(rc not in (0, None, -signal.SIGTERM, -signal.SIGKILL) for rc in server.returncodes):
            notes.append(f"{label}: exit status {server.returncodes}")
        errors = [line for line in server.log_text().splitlines()
                  if "Traceback" in line or "ERROR" in line]  # fmt: skip
        if errors:
            notes.append(f"{label}: the server logged {len(errors)} errors, the first: "
                         f"{errors[0][:160]!r}")  # fmt: skip


# -- the report -----------------------------------------------------------------------


Key = tuple[str, Measurement]


def mb(value: float) -> str:
    return f"{value / 1e6:.1f}"


def kb(value: float) -> str:
    return (
        "n/a"
        if value != value
        else f"{value / 1e3:.1f}"
        if abs(value) < 1e4
        else f"{value / 1e3:.0f}"
    )


def per_connection(runs: Sequence[Sample], count: int) -> float:
    """Bytes per client: the median over runs of the growth divided by `count`."""
    return median(s.growth / count for s in runs)


def per_loaded_document(
    loaded_runs: Sequence[Sample], empty_runs: Sequence[Sample], count: int
) -> float:
    """Bytes per loaded document beyond an empty one: run r's loaded growth minus run r's
    empty growth, over `count`; the median over the runs both have."""
    pairs = zip(loaded_runs, empty_runs, strict=False)
    return median((loaded.growth - empty.growth) / count for loaded, empty in pairs)


def slope(runs: dict[int, list[Sample]]) -> float:
    """Least-squares bytes per connection: the growth of every run against N."""
    points = [(n, s.growth) for n, samples in runs.items() for s in samples]
    if len({n for n, _ in points}) < 2:
        return float("nan")
    xs, ys = zip(*points, strict=True)
    return statistics.linear_regression(xs, ys).slope


def cell(samples: dict[Key, list[Sample]], failures: dict[Key, str], key: Key) -> str:
    if key in samples:
        return mb(median(s.rss for s in samples[key]))
    return f"failed: {failures[key]}" if key in failures else "n/a"


def main_table(samples: dict[Key, list[Sample]], failures: dict[Key, str], options: Options) -> str:
    head = ["server", "RSS at 0 clients (MB)"]
    head += [f"RSS, {n} idle connections (MB)" for n in options.connections]
    head += ["KB per idle connection (median over N)", "KB per idle connection (slope)"]
    head += [f"RSS, {m} loaded documents (MB)" for m in options.documents]
    head += ["KB per loaded idle document"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name in options.servers:
        mine = {m: runs for (server, m), runs in samples.items() if server == name}
        bases = [s.base for runs in mine.values() for s in runs]
        connections = {m.count: runs for m, runs in mine.items() if m.kind == "connections"}
        per_n = [per_connection(runs, n) for n, runs in connections.items()]
        per_m = [
            per_loaded_document(mine[Measurement("loaded", m)], mine[Measurement("empty", m)], m)
            for m in options.documents
            if Measurement("loaded", m) in mine and Measurement("empty", m) in mine
        ]
        row = [SPECS[name].label, mb(median(bases)) if bases else "n/a"]
        row += [
            cell(samples, failures, (name, Measurement("connections", n)))
            for n in options.connections
        ]
        row += [kb(median(per_n)) if per_n else "n/a", kb(slope(connections))]
        row += [
            cell(samples, failures, (name, Measurement("loaded", m))) for m in options.documents
        ]
        row += [kb(median(per_m)) if per_m else "n/a"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def details_table(
    samples: dict[Key, list[Sample]], failures: dict[Key, str], options: Options
) -> str:
    lines = [
        "| server | measurement | RSS at 0 (MB) | RSS with the clients (MB) | growth (MB) "
        "| KB per client | KB per loaded document beyond an empty one | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in options.servers:
        for (server, m), runs in samples.items():
            if server != name:
                continue
            extra = "-"
            if m.kind == "loaded" and (name, Measurement("empty", m.count)) in samples:
                empty = samples[(name, Measurement("empty", m.count))]
                extra = kb(per_loaded_document(runs, empty, m.count))
            lines.append(
                f"| {name} | {m.label} | {mb(median(s.base for s in runs))} "
                f"| {mb(median(s.rss for s in runs))} | {mb(median(s.growth for s in runs))} "
                f"| {kb(per_connection(runs, m.count))} | {extra} | {len(runs)} |"
            )
        lines += [f"| {name} | {m.label} | failed: {why} | | | | | |"
                  for (server, m), why in failures.items()
                  if server == name and (server, m) not in samples]  # fmt: skip
    return "\n".join(lines)


EXPLANATION = """\
How the figures are computed. Every measurement starts a fresh server process and reads
its RSS (psutil `memory_info().rss`, the process plus its children) twice, each time once
it has settled (1 s, then every 0.5 s until two readings agree within 1 %): with no client
("at 0"), and with the clients connected. *RSS at 0 clients* is the median of all the
server's readings at 0; the *RSS* columns are medians over the runs. *KB per idle
connection (median over N)*: (RSS with N clients on one document - RSS of the same
process at 0) / N, the median over runs for each N, then the median over the N values;
it includes the one document and whatever the first connection loads, spread over N.
*KB per idle connection (slope)*: the least-squares slope of that growth against N over
every run, which leaves out what is paid once. *KB per loaded idle document*: for each
M, ((RSS with M documents loaded with the ~10 KB text, one connection each - its RSS at
0) - (RSS with M empty documents, one connection each - its RSS at 0)) / M, run r against
run r, the median over runs and then over the M values: the connection and the empty
document are subtracted, so this is what holding the text costs. In the details, *KB
per client* is the growth divided by the number of clients (for the document rows: one
connection plus one empty or loaded document). MB and KB are 10^6 and 10^3 bytes."""


def header(
    options: Options,
    argv: Sequence[str],
    commands: dict[str, str],
    extensions: dict[str, str],
    update: bytes,
    loads: Sequence[str],
    started: float,
) -> str:
    commit = provenance.commit(
        ["collab_engine", "server", "storage"], "plus uncommitted changes to the server"
    )
    uname = os.uname()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    accepted = ", ".join(
        f"{name} {'yes' if 'permessage-deflate' in ext else 'no'}"
        for name, ext in extensions.items()
    )
    lines = [
        "# Server memory: ours, the Node y-websocket server, Hocuspocus and pycrdt-websocket",
        "",
        f"- command: `{provenance.command_line(argv)}`",
        f"- date: {provenance.utc_now()}; took {(time.time() - started) / 60:.1f} min",
        f"- machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
        f"{provenance.cpu_model()}, {uname.sysname} {uname.release}; 1-minute load average before "
        f"and after: {' and '.join(loads)}",
        f"- Python {sys.version.split()[0]}, pycrdt {version('pycrdt')}, hypercorn "
        f"{version('hypercorn')}, pycrdt-websocket {version('pycrdt-websocket')}, psutil "
        f"{version('psutil')}; Node {node}, @y/websocket-server 0.1.1, @hocuspocus/server "
        f"3.4.4 (benchmarks/peers/package-lock.json); collab-engine commit {commit}",
        f"- idle connections: N = {', '.join(map(str, options.connections))} clients on one "
        f"document; documents: M = {', '.join(map(str, options.documents))}, one client each, "
        f"empty or loaded with {CONTENT_CHARS:,} characters of text (one update of "
        f"{len(update):,} bytes); {options.runs} run(s) per figure (median); "
        f"{options.connect_concurrency} handshakes at once; a fresh server per measurement",
        f"- clients offer permessage-deflate: {'yes' if options.compression else 'no'}"
        + (f"; accepted by: {accepted}" if accepted else ""),
    ]
    lines += [f"- {name}: `{command}`" for name, command in commands.items()]
    return "\n".join(lines)


# -- the run --------------------------------------------------------------------------


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    started = time.time()
    if any(name in ("node", "hocuspocus") for name in options.servers):
        ensure_peers_installed()
    update = text_update()
    measurements = [Measurement("connections", n) for n in options.connections] + [
        Measurement(kind, m) for m in options.documents for kind in ("empty", "loaded")
    ]
    samples: dict[Key, list[Sample]] = {}
    failures: dict[Key, str] = {}
    notes: list[str] = []
    loads = [load_average()]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        commands = {
            name: ServerProcess(SPECS[name], tmp).display_command() for name in options.servers
        }
        for attempt in range(1, options.runs + 1):
            shift = (attempt - 1) % len(options.servers)
            for name in options.servers[shift:] + options.servers[:shift]:
                for measurement in measurements:
                    key = (name, measurement)
                    if key in failures:
                        continue
                    label = f"{name}, {measurement.label}, run {attempt}"
                    try:
                        sample = await measure(
                            SPECS[name], measurement, options, tmp, update, notes, label
                        )
                    except (RuntimeError, OSError, TimeoutError) as exc:
                        failures[key] = str(exc) or repr(exc)
                        notes.append(f"{label}: failed: {failures[key]}; no further runs of it")
                        print(f"{label}: failed: {failures[key]}", file=sys.stderr, flush=True)
                        continue
                    samples.setdefault(key, []).append(sample)
                    print(
                        f"{label}: RSS {mb(sample.base)} -> {mb(sample.rss)} MB, "
                        f"{kb(sample.growth / measurement.count)} KB each",
                        file=sys.stderr,
                        flush=True,
                    )
    loads.append(load_average())
    ordered = {
        (name, m): samples[(name, m)]
        for name in options.servers
        for m in measurements
        if (name, m) in samples
    }
    extensions = {
        name: next(
            s.extensions for (server, _), runs in ordered.items() if server == name for s in runs
        )
        for name in options.servers
        if any(server == name for server, _ in ordered)
    }
    report = [
        header(options, argv, commands, extensions, update[1], loads, started),
        "",
        main_table(ordered, failures, options),
        "",
        EXPLANATION,
        "",
        "Details (medians over the runs):",
        "",
        details_table(ordered, failures, options),
        "",
    ]
    if notes:
        report += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    text = "\n".join(report)
    publish(text, options.output)
    return 1 if any(server == "ours" for server, _ in failures) else 0


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Server memory per idle connection and per loaded idle document: ours, "
        "the Node y-websocket server, Hocuspocus and pycrdt-websocket side by side.",
    )
    parser.add_argument(
        "--servers", default=",".join(SPECS),
        help=f"comma-separated, from {','.join(SPECS)} (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--connections", type=int, nargs="+",
        help="idle clients on one document (default 250 500 1000; --quick: 100)",
    )  # fmt: skip
    parser.add_argument(
        "--documents", type=int, nargs="+",
        help="documents, one idle client each (default 100 500; --quick: 50)",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; --quick: 1)")
    parser.add_argument(
        "--compression", choices=["deflate", "none"], default="deflate",
        help="offer permessage-deflate like browsers do (default) or not",
    )  # fmt: skip
    parser.add_argument("--connect-concurrency", type=int, default=50, help="handshakes at once")
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: N = 100, M = 50, 1 run (explicit flags win)",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to write the results to"
    )
    args = parser.parse_args(argv)
    servers = parse_servers(parser, args.servers)
    connections = args.connections or ([100] if args.quick else [250, 500, 1000])
    documents = args.documents or ([50] if args.quick else [100, 500])
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if runs < 1 or min(connections) < 1 or min(documents) < 1 or args.connect_concurrency < 1:
        parser.error("runs, client and document counts and the concurrency must be positive")
    return Options(
        servers=servers,
        connections=tuple(sorted(set(connections))),
        documents=tuple(sorted(set(documents))),
        runs=runs,
        compression=args.compression == "deflate",
        connect_concurrency=args.connect_concurrency,
        output=args.output,
    )


def main() -> None:
    options = parse_options(sys.argv[1:])
    sys.exit(asyncio.run(benchmark(options, sys.argv)))


if __name__ == "__main__":
    main()
