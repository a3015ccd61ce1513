"""A server's memory footprint: its resident memory (RSS) once settled, at rest and
with idle clients on it, each measurement on a fresh server process.

A `Measurement` is N idle clients on one document ("connections"), or M documents
with one client each, "empty" or "loaded" with about 10 KB of text (one sync update
of `text_update`). `measure` starts the server, reads its settled RSS with no
client, connects the clients (`fleet.Observer`s, as empty documents; for
pycrdt-websocket's sake the first of N connects alone), reads it again, and stops
the server; a loaded measurement then checks that a fresh client gets the text
back. RSS is psutil's of the process and its children, read `SETTLE_PAUSE` after
the last change and then every `SETTLE_INTERVAL` until two readings agree within
`SETTLE_TOLERANCE` (at most `SETTLE_LIMIT`; a reading that never settled is noted).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from pycrdt import Doc, Text

from collab_engine import protocol
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
from harness.report import error_lines
from harness.servers import ServerProcess, ServerSpec
from harness.stats import median

CONTENT_CHARS = 10_000
"""The text of a loaded document, in characters."""


class Clients(Protocol):
    """What `measure` reads of a benchmark's options."""

    @property
    def compression(self) -> bool: ...
    @property
    def connect_concurrency(self) -> int: ...


SETTLE_PAUSE = 1.0
SETTLE_INTERVAL = 0.5
SETTLE_TOLERANCE = 0.01
SETTLE_LIMIT = 20.0
"""Settling: first pause, interval and tolerance between readings, limit (seconds)."""


async def settled_rss(server: ServerProcess, label: str, notes: list[str]) -> int:
    """The server's RSS once two readings `SETTLE_INTERVAL` apart agree within 1 %."""
    await asyncio.sleep(SETTLE_PAUSE)
    server.refresh_family()
    deadline = time.perf_counter() + SETTLE_LIMIT
    previous = server.rss()
    while True:
        await asyncio.sleep(SETTLE_INTERVAL)
        current = server.rss()
        if abs(current - previous) < SETTLE_TOLERANCE * previous:
            return current
        if time.perf_counter() >= deadline:
            notes.append(f"{label}: RSS still moving after {SETTLE_LIMIT:g} s "
                         f"({previous / 1e6:.1f} -> {current / 1e6:.1f} MB); last reading kept")  # fmt: skip
            return current
        previous = current


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
    clients: Clients,
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
    deflate = clients.compression
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
            await connect(factories[1:], server.port, clients.connect_concurrency, peers)
        else:
            factories = [
                partial(Observer, run, room, server.port, deflate, f"client {room.index}")
                for room in rooms
            ]
            message = (
                protocol.encode_sync_update(update[1]) if measurement.kind == "loaded" else b""
            )
            await connect(factories, server.port, clients.connect_concurrency, peers, message)
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
        if server.unclean_exits:
            notes.append(f"{label}: exit status {server.returncodes}")
        errors = error_lines(server.log_text().splitlines())
        if errors:
            notes.append(f"{label}: the server logged {len(errors)} errors, the first: "
                         f"{errors[0][:160]!r}")  # fmt: skip


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
