"""One writer and N observers in one room of our server, plain `websockets` clients,
run once and measured (`run_once`): the load of `benchmarks/fanout_latency.py`.

Every client syncs before anything is measured: it answers the server's sync
step 1 with a sync step 2 and sends its own sync step 1, then waits for the
server's sync step 2.

The writer holds a pycrdt `Doc` with a `Text`. Each edit is a small insert at the
end of the text in one transaction; the insert carries a marker `#e<i>#`. The
update pycrdt emits for that transaction (`Doc.observe`) is sent as one update
frame, and the send time is taken with `time.perf_counter()` just before the
send. Edits are paced on a fixed schedule (`--rate` per second); the first
`--warmup` edits are sent like the others but left out of every figure.

Observers apply nothing: each one reads frames, keeps those that are update
messages, and finds the edit's marker in the raw frame bytes; the receive time is
`time.perf_counter()` when the observer task gets the frame. Writer and observers
live in one process, so send and receive times are on one clock.

Alongside, `SchedProbe` reads both event-loop threads' time on a CPU and waiting for
one when an edit is sent and when its last observer gets it.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from pycrdt import Doc, Text, TransactionEvent
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from collab_engine import protocol
from harness.clients import close_connections, describe_close, open_client, sync
from harness.sampling import SchedProbe
from harness.servers import HOST, OurServer
from harness.stats import percentile

UPDATE_PREFIX = b"\x00\x02"
"""The first two bytes of every update frame: message type sync, sync type update."""


MARKER = re.compile(rb"#e(\d+)#")
"""The edit index the writer embeds in its insert, found in the raw update bytes."""


@dataclass(slots=True)
class Observer:
    """One observing client and the time it received each edit (NaN: not yet)."""

    ws: ClientConnection
    received: list[float]
    count: int = 0
    unmatched: int = 0
    closed: str | None = None

    async def observe(self, run: RunState) -> None:
        """Read frames until cancelled, timestamping the edits' update messages."""
        received = self.received
        try:
            while True:
                frame = await self.ws.recv(decode=False)
                now = time.perf_counter()
                if not frame.startswith(UPDATE_PREFIX):
                    continue
                match = MARKER.search(frame)
                index = int(match[1]) if match else -1
                if 0 <= index < len(received) and math.isnan(received[index]):
                    received[index] = now
                    self.count += 1
                    run.delivered += 1
                    run.missing[index] -= 1
                    if run.missing[index] == 0:
                        run.done_sched[index] = run.probe.read()
                else:
                    self.unmatched += 1
        except ConnectionClosed as exc:
            self.closed = describe_close(exc)
            run.closures.append(self.closed)


class Writer:
    """The editing client: one pycrdt `Text`, one update frame per edit."""

    def __init__(self, ws: ClientConnection, doc: Doc[Any]) -> None:
        self.ws = ws
        self.doc = doc
        self.text = doc.get("text", type=Text)
        self.echoes = 0
        self.closed: str | None = None
        self._updates: list[bytes] = []
        self._subscription = doc.observe(self._on_transaction)

    def _on_transaction(self, event: TransactionEvent) -> None:
        self._updates.append(event.update)

    def edit(self, index: int) -> bytes:
        """Insert edit `index`'s marker in one transaction; return its update frame."""
        with self.doc.transaction():
            self.text.insert(len(self.text), f"#e{index}# ")
        (update,) = self._updates
        self._updates.clear()
        return protocol.encode_sync_update(update)

    async def drain(self, run: RunState) -> None:
        """Read (and drop) what the server sends back, so that its outbox for us
        never fills; the room echoes every update to its sender too."""
        try:
            while True:
                await self.ws.recv(decode=False)
                self.echoes += 1
        except ConnectionClosed as exc:
            self.closed = describe_close(exc)
            run.closures.append(f"writer: {self.closed}")


@dataclass(slots=True)
class RunState:
    """What the observers update as frames arrive."""

    probe: SchedProbe
    missing: list[int]
    """Per edit, how many observers have not received it yet."""
    done_sched: list[tuple[int, int, int, int] | None]
    """Per edit, the scheduler probe when its last observer received it."""
    delivered: int = 0
    closures: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RunResult:
    clients: int
    edits: int
    delivered: int
    expected: int
    fanout_p50: float
    fanout_p99: float
    fanout_max: float
    delivery_p50: float
    delivery_p99: float
    server_cpu_share: float
    generator_cpu_share: float
    server_cpu_per_edit: float
    generator_cpu_per_edit: float
    fanout_server_busy: float
    fanout_server_waiting: float
    fanout_generator_busy: float
    fanout_generator_waiting: float
    send_lag_p99: float
    window: float
    problems: tuple[str, ...]


class OneWriterOptions(Protocol):
    """What `run_once` reads of a benchmark's options."""

    @property
    def edits(self) -> int: ...
    @property
    def warmup(self) -> int: ...
    @property
    def rate(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def compression(self) -> str | None: ...


async def run_once(server: OurServer, clients: int, options: OneWriterOptions) -> RunResult:
    """Connect a writer and `clients` observers to a fresh document, send the edits
    on schedule, wait for every delivery, and measure."""
    url = f"ws://{HOST}:{server.port}/fanout-{clients}-{uuid.uuid4().hex[:12]}"
    total = options.warmup + options.edits
    problems: list[str] = []
    connections: list[ClientConnection] = []
    tasks: list[asyncio.Task[None]] = []

    async def connect_and_sync(doc: Doc[Any]) -> ClientConnection:
        ws = await open_client(
            url, compression=options.compression, timeout=options.connect_timeout
        )
        connections.append(ws)
        await sync(ws, doc)
        return ws

    limit = options.connect_timeout * 2
    try:
        async with asyncio.timeout(limit), asyncio.TaskGroup() as group:
            pending = [group.create_task(connect_and_sync(Doc())) for _ in range(clients)]
        # The writer's document holds what the room holds (nothing: a fresh room).
        writer_doc: Doc[Any] = Doc()
        async with asyncio.timeout(options.connect_timeout):
            writer = Writer(await connect_and_sync(writer_doc), writer_doc)
    except Exception as exc:  # a timeout, a refused connection, a close: all end the benchmark
        await close_connections(connections)
        raise RuntimeError(f"{clients} clients could not all connect and sync: {exc!r}") from exc
    sockets = [task.result() for task in pending]

    assert server.process is not None
    probe = SchedProbe(server.process.pid)
    state = RunState(probe, [clients] * total, [None] * total)
    observers = [Observer(ws, [math.nan] * total) for ws in sockets]
    tasks = [asyncio.create_task(o.observe(state)) for o in observers]
    tasks.append(asyncio.create_task(writer.drain(state)))
    send_times = [math.nan] * total
    send_sched: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * total
    lags: list[float] = []
    expected = clients * total

    try:
        server_cpu0, own_cpu0 = server.cpu_seconds(), time.process_time()
        start = time.perf_counter() + 0.05
        for index in range(total):
            due = start + index / options.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = writer.edit(index)
            send_sched[index] = probe.read()
            sent = time.perf_counter()
            try:
                await writer.ws.send(frame)
            except ConnectionClosed as exc:
                problems.append(f"writer could not send edit {index}: {describe_close(exc)}")
                break
            send_times[index] = sent
            if index >= options.warmup:
                lags.append(sent - due)
            if state.closures:
                break
        deadline = time.perf_counter() + options.timeout
        while state.delivered < expected and not state.closures:
            if time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.01)
        window = time.perf_counter() - start
        server_cpu = server.cpu_seconds() - server_cpu0
        own_cpu = time.process_time() - own_cpu0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_connections(connections)
        probe.close()

    problems.extend(f"observer {i}: {o.closed}" for i, o in enumerate(observers) if o.closed)
    if writer.closed:
        problems.append(f"writer: {writer.closed}")
    unmatched = sum(o.unmatched for o in observers)
    if unmatched:
        problems.append(f"{unmatched} update frames without an expected marker (or duplicates)")

    measured = range(options.warmup, total)
    deliveries: list[float] = []
    fanout: list[float] = []
    received_measured = 0
    # Scheduler time of both processes summed over the fan-out windows (send to last delivery).
    sched = [0, 0, 0, 0]
    for index in measured:
        times = [o.received[index] - send_times[index] for o in observers]
        got = [t for t in times if not math.isnan(t)]
        received_measured += len(got)
        deliveries.extend(got)
        done = state.done_sched[index]
        if len(got) == clients and done is not None:
            fanout.append(max(got))
            for k in range(4):
                sched[k] += done[k] - send_sched[index][k]
    fanout_ns = sum(fanout) * 1e9 or math.nan
    expected_measured = clients * options.edits
    if received_measured < expected_measured:
        problems.append(
            f"{expected_measured - received_measured} of {expected_measured} deliveries missing "
            f"after a {options.timeout:g} s timeout"
        )

    return RunResult(
        clients=clients,
        edits=options.edits,
        delivered=received_measured,
        expected=expected_measured,
        fanout_p50=percentile(fanout, 50),
        fanout_p99=percentile(fanout, 99),
        fanout_max=max(fanout, default=math.nan),
        delivery_p50=percentile(deliveries, 50),
        delivery_p99=percentile(deliveries, 99),
        server_cpu_share=server_cpu / window,
        generator_cpu_share=own_cpu / window,
        server_cpu_per_edit=server_cpu / total,
        generator_cpu_per_edit=own_cpu / total,
        fanout_server_busy=sched[0] / fanout_ns,
        fanout_server_waiting=sched[1] / fanout_ns,
        fanout_generator_busy=sched[2] / fanout_ns,
        fanout_generator_waiting=sched[3] / fanout_ns,
        send_lag_p99=percentile(lags, 99),
        window=window,
        problems=tuple(problems),
    )
