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
accepts keeps compression state per connection. One measurement, and the figures
below: `harness/footprint.py`.

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
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import options as flags
from harness import provenance
from harness.footprint import (
    CONTENT_CHARS,
    Measurement,
    Sample,
    measure,
    per_connection,
    per_loaded_document,
    slope,
    text_update,
)
from harness.provenance import load_average
from harness.report import deflate_accepted, heading, kb, listed, mb, publish, row, say, table
from harness.servers import RESULTS, SPECS, commands, ensure_peers_installed, rotated
from harness.stats import median

DEFAULT_OUTPUT = RESULTS / "memory.md"


@dataclass(frozen=True, slots=True)
class Options:
    servers: tuple[str, ...]
    connections: tuple[int, ...]
    documents: tuple[int, ...]
    runs: int
    compression: bool
    connect_concurrency: int
    output: Path


# -- the report -----------------------------------------------------------------------


Key = tuple[str, Measurement]


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
    rows = []
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
        rows.append(
            [
                SPECS[name].label,
                mb(median(bases)) if bases else "n/a",
                *(cell(samples, failures, (name, Measurement("connections", n)))
                  for n in options.connections),
                kb(median(per_n)) if per_n else "n/a",
                kb(slope(connections)),
                *(cell(samples, failures, (name, Measurement("loaded", m)))
                  for m in options.documents),
                kb(median(per_m)) if per_m else "n/a",
            ]
        )  # fmt: skip
    return "\n".join(table(head, "l" + "r" * (len(head) - 1), rows))


def details_table(
    samples: dict[Key, list[Sample]], failures: dict[Key, str], options: Options
) -> str:
    head = ["server", "measurement", "RSS at 0 (MB)", "RSS with the clients (MB)", "growth (MB)",
            "KB per client", "KB per loaded document beyond an empty one", "runs"]  # fmt: skip
    lines = table(head, "llrrrrrr")
    for name in options.servers:
        for (server, m), runs in samples.items():
            if server != name:
                continue
            extra = "-"
            if m.kind == "loaded" and (name, Measurement("empty", m.count)) in samples:
                empty = samples[(name, Measurement("empty", m.count))]
                extra = kb(per_loaded_document(runs, empty, m.count))
            lines.append(row([
                name, m.label, mb(median(s.base for s in runs)), mb(median(s.rss for s in runs)),
                mb(median(s.growth for s in runs)), kb(per_connection(runs, m.count)), extra,
                len(runs),
            ]))  # fmt: skip
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
    uname = os.uname()
    lines = [
        *heading(
            "Server memory: ours, the Node y-websocket server, Hocuspocus and pycrdt-websocket",
            argv,
            started,
        ),
        f"- machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
        f"{provenance.cpu_model()}, {uname.sysname} {uname.release}; 1-minute load average before "
        f"and after: {' and '.join(loads)}",
        f"- {provenance.software('pycrdt', 'hypercorn', 'pycrdt-websocket', 'psutil')}; "
        f"{provenance.peer_versions()}; collab-engine commit {provenance.server_commit(True)}",
        f"- idle connections: N = {', '.join(map(str, options.connections))} clients on one "
        f"document; documents: M = {', '.join(map(str, options.documents))}, one client each, "
        f"empty or loaded with {CONTENT_CHARS:,} characters of text (one update of "
        f"{len(update):,} bytes); {options.runs} run(s) per figure (median); "
        f"{options.connect_concurrency} handshakes at once; a fresh server per measurement",
        deflate_accepted(options.compression, extensions),
    ]
    lines += [f"- {name}: `{command}`" for name, command in commands.items()]
    return "\n".join(lines)


# -- the run --------------------------------------------------------------------------


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    started = time.time()
    ensure_peers_installed(options.servers)
    update = text_update()
    measurements = [Measurement("connections", n) for n in options.connections] + [
        Measurement(kind, m) for m in options.documents for kind in ("empty", "loaded")
    ]
    samples: dict[Key, list[Sample]] = {
        (name, m): [] for name in options.servers for m in measurements
    }
    failures: dict[Key, str] = {}
    notes: list[str] = []
    loads = [load_average()]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        started_as = commands(options.servers, tmp)
        for attempt in range(1, options.runs + 1):
            for name in rotated(options.servers, attempt):
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
                        say(f"{label}: failed: {failures[key]}")
                        continue
                    samples[key].append(sample)
                    say(
                        f"{label}: RSS {mb(sample.base)} -> {mb(sample.rss)} MB, "
                        f"{kb(sample.growth / measurement.count)} KB each"
                    )
    loads.append(load_average())
    ordered = {key: runs for key, runs in samples.items() if runs}
    extensions = {
        name: next(
            s.extensions for (server, _), runs in ordered.items() if server == name for s in runs
        )
        for name in options.servers
        if any(server == name for server, _ in ordered)
    }
    report = [
        header(options, argv, started_as, extensions, update[1], loads, started),
        "",
        main_table(ordered, failures, options),
        "",
        EXPLANATION,
        "",
        "Details (medians over the runs):",
        "",
        details_table(ordered, failures, options),
        "",
        *listed("Notes:", notes, None),
    ]
    publish("\n".join(report), options.output)
    return 1 if any(server == "ours" for server, _ in failures) else 0


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Server memory per idle connection and per loaded idle document: ours, "
        "the Node y-websocket server, Hocuspocus and pycrdt-websocket side by side.",
    )
    flags.add_servers(parser)
    parser.add_argument(
        "--connections", type=int, nargs="+",
        help="idle clients on one document (default 250 500 1000; --quick: 100)",
    )  # fmt: skip
    parser.add_argument(
        "--documents", type=int, nargs="+",
        help="documents, one idle client each (default 100 500; --quick: 50)",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; --quick: 1)")
    flags.add_compression(parser)
    flags.add_connect_concurrency(parser)
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: N = 100, M = 50, 1 run (explicit flags win)",
    )  # fmt: skip
    flags.add_output(parser, DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    connections = args.connections or ([100] if args.quick else [250, 500, 1000])
    documents = args.documents or ([50] if args.quick else [100, 500])
    runs = flags.given(args.runs, 1 if args.quick else 3)
    if runs < 1 or min(connections) < 1 or min(documents) < 1 or args.connect_concurrency < 1:
        parser.error("runs, client and document counts and the concurrency must be positive")
    return flags.from_args(
        Options,
        args,
        servers=flags.servers(parser, args),
        connections=tuple(sorted(set(connections))),
        documents=tuple(sorted(set(documents))),
        runs=runs,
        compression=flags.deflate(args),
    )


if __name__ == "__main__":
    flags.main(parse_options, benchmark)
