"""The editing load: one run of W writers and many observers per room against one
server, measured (`run_once`).

Load
----
This process is the load generator (asyncio). Per run, a fresh document per room on
each server; per room, W **writers** and the other clients **observers**:

* a writer is a full client: a pycrdt `Doc` with a `Text`, synced like any
  y-websocket client (answers the server's sync step 1, sends its own, waits for
  step 2), applying every update it receives. It makes 5 edits/s (`--rate`), each
  one small insert at the end of its text in one transaction, carrying a marker
  `#e<id>#`; the update pycrdt emits is sent as one update message. The writers'
  schedules are staggered evenly over all rooms.
* an observer only reads: it syncs as an empty document, then finds the markers in
  the raw bytes of the update messages it receives and timestamps them
  (`time.perf_counter()` when the frame is read); it decodes nothing else.

With awareness on, every client has an awareness state as y-websocket clients do:
each sends one on joining (`user` with a name and colour, `cursor` null), observers
renew theirs every 15 s (y-protocols' renewal interval; each at a random phase, as
if they had joined at different times), and each writer sends a cursor move (two
relative positions at the end of its text, as y-codemirror.next writes) with every
edit, right after the update. Our server stamps `user.id` into states and re-issues
a state that lacks it; every client adopts the stamped state it gets back, as
y-protocols does, so later states pass unchanged (the other servers stamp nothing).
States are sent and timed like everything else, but only the edits are measured:
awareness is load here.

Protocols: y-websocket framing for ours, node and pycrdt; Hocuspocus framing for
Hocuspocus: every message is prefixed by varString(documentName), a client first sends
an authentication message (type 2, token type 0, an empty token: the server has no
onAuthenticate hook) and its sync step 1, and the server answers with
"authenticated" (2, 2, "read-write"), its sync step 1 and step 2, a sync-status
message (8) per update applied, and updates as y-websocket does (0, 2) with the
prefix. Observers parse that framing too.

The clients are a minimal WebSocket client written for this script (an
`asyncio.Protocol`: RFC 6455 handshake, masked client frames, unmasked server frames
read straight from the socket buffer, ping answered with pong, permessage-deflate
decompressed when a server accepts it): `websockets` costs several times more CPU per
frame, and with 500 clients the generator reads tens of thousands of frames per
second on the same 2 cores as the server. Like browsers, the clients offer
permessage-deflate (`--compression none`: they do not); each server accepts or
declines it as its default configuration does (the header lists what each did).

What the numbers mean
---------------------
* fan-out latency of an edit: the time from its send until *every other client of its
  room* (writers and observers) has it; p50/p95/p99/max over the measured edits (the
  first `--warmup` seconds of edits are left out). An edit some client never got
  counts as infinitely late: a percentile it reaches shows as "never".
* per delivery p50/p99: receive time minus send time over every (edit, recipient) pair
  that arrived.
* delivered / offered: update deliveries per second received in the measured window
  (all recipients, all rooms) against those offered: W x rate x (clients per room - 1)
  per room.
* converged: after the last edit, within `--timeout` seconds, every client has every
  edit (the writers' too), every writer's text is the same, and a fresh full client
  that joins each room and syncs gets exactly that text, holding every marker sent.
* server CPU s: user + system time of the server process (and its children) from the
  first edit to the end of the wait for convergence; CPU %: the share of one core over
  the measured window. Peak RSS: the largest resident set of the server process and its
  children, sampled every 0.2 s through the run (connections included).
* The diagnostics also give the generator's CPU share (this process), the CPU the rest
  of the machine used meanwhile (from /proc/stat: all busy time minus the server and
  the generator), how late the writers' sends were, and the time to connect and sync
  every client.

Several servers
---------------
The target may be a cluster (`harness/cluster.py`): several ports, clients of one
room spread over them. Client j of room r (writers first, then observers) connects to
port (j + r) mod n, so the first client of each room, which opens it, goes to each
node in turn, and the fresh client that checks convergence goes to the next port
after it. The server CPU is then the nodes' together; `cpu_shares` has each reading
of `cpu_readings()` (each node, and the services they share) over the measured window.

Each figure is computed per run; the tables show the median over `--runs` runs, which
are interleaved (before them, at each size with more clients than any before it, one
run against the first server that is not counted: the generator's first run with that
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from harness.fleet import (
    RENEW_INTERVAL,
    FullClient,
    Observer,
    Peer,
    Room,
    RunState,
    Writer,
    close_all,
    connect_all,
    quiesce,
)
from harness.profiling import start_profiler, stop_profiler
from harness.report import ms, num
from harness.sampling import machine_busy_seconds
from harness.servers import ServerProcess, ServerSpec
from harness.stats import pct, percentile

NEVER = math.inf
"""The latency of an edit some client never got."""


@dataclass(frozen=True, slots=True)
class Size:
    clients: int
    rooms: int

    @property
    def per_room(self) -> int:
        return self.clients // self.rooms

    @property
    def label(self) -> str:
        return str(self.clients) if self.rooms == 1 else f"{self.clients} in {self.rooms} rooms"

    @property
    def key(self) -> str:
        return str(self.clients) if self.rooms == 1 else f"{self.clients}/{self.rooms}"

    def writers_per_room(self, override: int | None) -> int:
        if override is not None:
            return min(override, self.per_room)
        return min(self.per_room, 10) if self.rooms == 1 else 1


class LoadOptions(Protocol):
    """What `run_once` reads of a benchmark's options."""

    @property
    def rate(self) -> float: ...
    @property
    def warmup(self) -> float: ...
    @property
    def duration(self) -> float: ...
    @property
    def writers(self) -> int | None: ...
    @property
    def timeout(self) -> float: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def connect_concurrency(self) -> int: ...
    @property
    def compression(self) -> bool: ...
    @property
    def profile(self) -> Path | None: ...
    @property
    def profiler(self) -> str: ...


class Target(Protocol):
    """What `run_once` reads of the server under test: a `ServerProcess`, or a
    cluster's nodes (`harness/cluster.py`)."""

    @property
    def spec(self) -> ServerSpec: ...
    @property
    def ports(self) -> tuple[int, ...]: ...
    def cpu_seconds(self) -> float: ...
    def cpu_readings(self) -> dict[str, float]: ...
    def rss(self) -> int: ...
    def preempted(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RunResult:
    server: str
    size: str
    awareness: bool
    writers: int
    fanout_p50: float
    fanout_p95: float
    fanout_p99: float
    fanout_max: float
    delivery_p50: float
    delivery_p99: float
    delivered_rate: float
    offered_rate: float
    delivered: int
    expected: int
    converged: bool
    why_not: str
    server_cpu: float
    server_cpu_share: float
    peak_rss: float
    generator_cpu_share: float
    other_cpu_share: float
    preempted_rate: float
    """The server's event-loop thread preempted, per second of the window."""
    send_lag_p99: float
    setup_seconds: float
    extensions: str
    problems: tuple[str, ...]
    cpu_shares: dict[str, float] = field(default_factory=dict)
    """Each of the target's `cpu_readings()` over the measured window, as a share of
    one core (the server alone, or each node of a cluster and the services)."""

    def summary(self) -> str:
        """The run's figures on one line, as progress."""
        return (
            f"fan-out p50 {ms(self.fanout_p50)} ms p99 {ms(self.fanout_p99)} ms, delivered "
            f"{num(self.delivered_rate)}/{num(self.offered_rate)}/s, converged {self.converged}"
            f"{' (' + self.why_not + ')' if self.why_not else ''}, CPU "
            f"{self.server_cpu:.1f} s {pct(self.server_cpu_share)}, RSS "
            f"{self.peak_rss:.0f} MB, generator {pct(self.generator_cpu_share)}, "
            f"other {pct(self.other_cpu_share)}, preempted "
            f"{num(self.preempted_rate)}/s, setup {self.setup_seconds:.1f} s"
        )


async def run_once(
    server: Target, size: Size, awareness: bool, options: LoadOptions, attempt: int
) -> RunResult:
    spec = server.spec
    run = RunState(spec.stamps_identity and awareness)
    writers_per_room = size.writers_per_room(options.writers)
    edits_per_writer = max(1, round((options.warmup + options.duration) * options.rate))
    warmup_edits = round(options.warmup * options.rate)
    tag = uuid.uuid4().hex[:10]
    rooms = [
        Room(r, f"fanout-{size.key.replace('/', 'x')}-{tag}-{r}", spec.hocuspocus,
             writers_per_room, edits_per_writer)
        for r in range(size.rooms)
    ]  # fmt: skip
    deflate = options.compression
    ports = server.ports

    def port(room: Room, j: int) -> int:
        """The port of client j of `room` (see "Several servers")."""
        return ports[(j + room.index) % len(ports)]

    factories: list[Callable[[], Peer]] = []
    for room in rooms:
        factories.extend(
            partial(Writer, run, room, port(room, k), deflate, f"writer {room.index}.{k}", k)
            for k in range(writers_per_room)
        )
        factories.extend(
            partial(Observer, run, room, port(room, j), deflate, f"reader {room.index}.{j}")
            for j in range(writers_per_room, size.per_room)
        )

    peak_rss = 0
    sampling = True

    async def sample_rss() -> None:
        nonlocal peak_rss
        while sampling:
            peak_rss = max(peak_rss, server.rss())
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample_rss())
    problems: list[str] = []
    peers: list[Peer] = []
    verifiers: list[FullClient] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        setup0 = time.perf_counter()
        try:
            # The first client of each room alone, then the others: pycrdt-websocket
            # leaves clients that race to open a new room unserved (its get_room starts
            # the same room twice), and real rooms open with one client anyway.
            firsts = [factories[r * size.per_room] for r in range(size.rooms)]
            rest = [f for i, f in enumerate(factories) if i % size.per_room]
            concurrency, timeout = options.connect_concurrency, options.connect_timeout
            peers = await connect_all(firsts, concurrency, timeout)
            peers += await connect_all(rest, concurrency, timeout)
        except Exception as exc:
            raise RuntimeError(f"{size.clients} clients could not all connect and sync within "
                               f"{options.connect_timeout:g} s: {exc!r}") from exc  # fmt: skip
        setup_seconds = time.perf_counter() - setup0
        for peer in peers:
            peer.room.clients.append(peer)
        writers = [p for p in peers if isinstance(p, Writer)]
        observers = [p for p in peers if isinstance(p, Observer)]
        if awareness:
            for i, peer in enumerate(peers):
                peer.start_awareness(i)
            if spec.stamps_identity:
                try:
                    async with asyncio.timeout(options.connect_timeout):
                        await asyncio.gather(*(p.adopted for p in peers))
                except TimeoutError:
                    missing = sum(1 for p in peers if not p.adopted.done())
                    problems.append(f"{missing} clients never got their stamped awareness state")
        await quiesce(peers, server, limit=30.0)
        run.expected = sum(r.edits * (size.per_room - 1) for r in rooms)

        total_writers = len(writers)
        start = time.perf_counter() + 0.2
        window0 = start + options.warmup
        window1 = start + options.warmup + options.duration

        async def write(writer: Writer, slot: int) -> None:
            room = writer.room
            offset = slot / total_writers
            for i in range(edits_per_writer):
                due = start + (i + offset) / options.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                edit_id = i * room.writers + writer.own
                frame = writer.edit(edit_id)
                sent = time.perf_counter()
                room.send_times[edit_id] = sent
                writer.send(frame)
                if awareness:
                    writer.send_awareness()
                if i >= warmup_edits:
                    writer.lags.append(sent - due)

        async def renew() -> None:
            # Each observer renews its state every 15 s, at a random phase.
            queue = [(start + random.uniform(0, RENEW_INTERVAL), i) for i in range(len(observers))]
            heapq.heapify(queue)
            while queue:
                due, i = heapq.heappop(queue)
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                observers[i].send_awareness()
                heapq.heappush(queue, (due + RENEW_INTERVAL, i))

        Clocks = tuple[tuple[float, float, float, float, float], dict[str, float]]

        def clocks() -> Clocks:
            # Server CPU, generator CPU, the whole machine's busy time, the server's
            # preemptions, wall time; and the target's readings by process.
            readings = server.cpu_readings()
            return (
                server.cpu_seconds(),
                time.process_time(),
                machine_busy_seconds(),
                float(server.preempted()),
                time.perf_counter(),
            ), readings

        async def window_cpu() -> Clocks:
            await asyncio.sleep(max(0.0, window0 - time.perf_counter()))
            first, readings0 = clocks()
            await asyncio.sleep(max(0.0, window1 - time.perf_counter()))
            last, readings1 = clocks()
            deltas = tuple(b - a for a, b in zip(first, last, strict=True))
            readings = {k: v - readings0.get(k, v) for k, v in readings1.items()}
            return deltas, readings  # type: ignore[return-value]

        profiler = None
        if (
            options.profile is not None
            and options.profiler == "py-spy"
            and isinstance(server, ServerProcess)
            and spec.name == "ours"
            and attempt > 0  # 0: the generator's warm-up, not counted
        ):
            stem = f"ours-{size.key.replace('/', 'x')}-awareness-{'on' if awareness else 'off'}-run{attempt}"
            profiler = await start_profiler(server, options.profile, stem)

        cpu_start = server.cpu_seconds()
        cpu_task = asyncio.create_task(window_cpu())
        if awareness and observers:
            tasks.append(asyncio.create_task(renew()))
        writing = [asyncio.create_task(write(w, s)) for s, w in enumerate(writers)]
        tasks += writing
        await asyncio.gather(*writing)
        deltas, readings_window = await cpu_task
        server_window, own_window, busy_window, preempted_window, window = deltas
        deadline = time.perf_counter() + options.timeout
        while run.delivered < run.expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        drained = run.delivered >= run.expected
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks = []
        server_cpu = server.cpu_seconds() - cpu_start
        if profiler is not None:
            await stop_profiler(profiler)

        # Convergence: every writer's text the same, and a fresh full client gets it too.
        why_not: list[str] = []
        if not drained:
            why_not.append(f"{run.expected - run.delivered:,} of {run.expected:,} deliveries missing "
                           f"{options.timeout:g} s after the last edit")  # fmt: skip
        texts_ok = True
        if drained:
            verify_factories: list[Callable[[], Peer]] = [
                partial(FullClient, run, room, port(room, 1), deflate, f"verifier {room.index}")
                for room in rooms
            ]
            try:
                connected = await connect_all(
                    verify_factories, options.connect_concurrency, options.timeout
                )
                verifiers = [v for v in connected if isinstance(v, FullClient)]
            except Exception as exc:
                texts_ok = False
                why_not.append(f"a fresh client could not sync: {exc!r}")
            by_room = {v.room.index: v for v in verifiers}
            for room in rooms:
                room_writers = [p for p in room.clients if isinstance(p, Writer)]
                texts = {str(w.text) for w in room_writers}
                verifier = by_room.get(room.index)
                if verifier is not None:
                    texts.add(str(verifier.text))
                markers = {int(m) for t in texts for m in re.findall(r"#e(\d+)#", t)}
                if len(texts) != 1 or len(markers) != room.edits:
                    texts_ok = False
            if not texts_ok and not why_not:
                why_not.append("the clients' final texts differ")
        converged = drained and texts_ok
        closures = Counter(run.closures)
        if closures:
            why_not.append("; ".join(f"{n} x {what}" for what, n in closures.items()))
            converged = False
        problems += run.problems
        extensions = peers[0].extensions if peers else ""
    finally:
        sampling = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_all([*peers, *verifiers])
        await sampler

    # Latencies.
    fanout: list[float] = []
    deliveries: list[float] = []
    in_window = 0
    for room in rooms:
        clients = room.clients
        for edit_id in range(room.edits):
            if edit_id // room.writers < warmup_edits:
                continue
            sent = room.send_times[edit_id]
            if sent != sent:
                continue
            own = edit_id % room.writers
            worst = 0.0
            for client in clients:
                if isinstance(client, Writer) and client.own == own:
                    continue
                got = client.received[edit_id]
                if got != got:
                    worst = NEVER
                    continue
                latency = got - sent
                deliveries.append(latency)
                worst = max(worst, latency)
            fanout.append(worst)
        for client in clients:
            in_window += sum(1 for t in client.received if window0 <= t <= window1)
    offered = sum(r.writers * options.rate * (size.per_room - 1) for r in rooms)
    lags = [lag for room in rooms for c in room.clients if isinstance(c, Writer) for lag in c.lags]
    duplicates = sum(c.duplicates for room in rooms for c in room.clients)
    if duplicates:
        problems.append(f"{duplicates} duplicate deliveries")
    expected_measured = sum(
        (room.edits - warmup_edits * room.writers) * (size.per_room - 1) for room in rooms
    )
    return RunResult(
        server=spec.name,
        size=size.key,
        awareness=awareness,
        writers=writers_per_room * size.rooms,
        fanout_p50=percentile_never(fanout, 50),
        fanout_p95=percentile_never(fanout, 95),
        fanout_p99=percentile_never(fanout, 99),
        fanout_max=max(fanout, default=math.nan),
        delivery_p50=percentile(deliveries, 50),
        delivery_p99=percentile(deliveries, 99),
        delivered_rate=in_window / window,
        offered_rate=offered,
        delivered=len(deliveries),
        expected=expected_measured,
        converged=converged,
        why_not="; ".join(why_not),
        server_cpu=server_cpu,
        server_cpu_share=server_window / window,
        peak_rss=peak_rss / 1e6,
        generator_cpu_share=own_window / window,
        other_cpu_share=max(0.0, busy_window - server_window - own_window) / window,
        preempted_rate=preempted_window / window,
        send_lag_p99=percentile(lags, 99),
        setup_seconds=setup_seconds,
        extensions=extensions,
        problems=tuple(problems),
        cpu_shares={name: seconds / window for name, seconds in readings_window.items()},
    )


def percentile_never(values: Sequence[float], q: float) -> float:
    """`figures.percentile`, where an infinite value (an edit never delivered) ranks last
    and a percentile that reaches one is infinite too."""
    big = 1e12
    result = percentile([big if math.isinf(v) else v for v in values], q)
    return NEVER if result >= big / 2 else result


def size_label(key: str) -> str:
    clients, _, rooms = key.partition("/")
    return clients if not rooms else f"{clients} in {rooms} rooms"


def parse_size(text: str) -> Size:
    clients, _, rooms = text.partition("/")
    size = Size(int(clients), int(rooms or 1))
    if size.clients < 2 or size.rooms < 1 or size.clients % size.rooms or size.per_room < 2:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: N or N/ROOMS, at least 2 per room")
    return size
