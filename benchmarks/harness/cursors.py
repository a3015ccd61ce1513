"""The cursor load: K senders moving a cursor and N observers that only read, in one
room of our server, run once and measured (`run_once`).

The clients are plain `websockets` clients speaking the y-websocket protocol through
`collab_engine.protocol`:

* K **senders**, each moving a cursor like a mouse drag: one awareness message per
  `1 / rate` seconds, on a fixed schedule (the senders' schedules are staggered
  evenly). The state is what y-codemirror.next writes: a `user` and a `cursor` of two
  Yjs relative positions, plus `seq`, the index of the message (the marker). Senders
  read and drop what the server sends them.
* N **observers** that only read: each frame that is an awareness message is decoded
  with `protocol.decode`; for every entry of a sender the observer keeps the newest
  `seq` seen and when it arrived. Receive times are `time.perf_counter()` when the
  observer task gets the frame; send times are taken just before the send, in the
  same process, on the same clock.

Identity: the server stamps `user.id` (here `anonymous:<n>`) into every state and
re-issues, at clock + 1 to everyone, a state that says otherwise. So each sender
first sends a state without an id, waits for the server's corrected copy of it, and
from then on sends states carrying exactly the `user` the server stamped, at clock + 1
after the server's. Those states satisfy the policy and are forwarded byte for byte;
observers check this (an entry's clock must be the one its sender gave that `seq`),
and a re-issued state is reported as a problem.

What each figure means: `benchmarks/awareness_fanout.py`'s docstring.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pycrdt import Doc
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from collab_engine import protocol
from collab_engine.protocol import AwarenessEntry, AwarenessUpdate
from collab_engine.types import ClientId
from harness.clients import close_connections, describe_close, open_client, sync
from harness.report import ms
from harness.sampling import machine_busy_seconds
from harness.servers import HOST, OurServer
from harness.stats import pct, percentile

SEQ = re.compile(r'"seq":(\d+)')
"""The sender's message index inside a state's JSON text."""


AWARENESS = protocol.MESSAGE_AWARENESS


COLORS = ("#30bced", "#6eeb83", "#ffbc42", "#ecd444", "#ee6352", "#9ac2c9", "#8acb88")


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    presence_rate: float
    presence_burst: int

    @property
    def server_args(self) -> list[str]:
        return [
            "--presence-rate", number_arg(self.presence_rate),
            "--presence-burst", str(self.presence_burst),
        ]  # fmt: skip


def number_arg(value: float) -> str:
    """`value` for a command line: 1000000 rather than 1e+06."""
    return str(int(value)) if value == int(value) else repr(value)


@dataclass(slots=True)
class RunState:
    """What the senders, observers and sampler share during one run."""

    senders: int
    total: int
    """Messages each sender sends (warm-up included)."""
    first_measured: int
    """The first `seq` sent in the measured window."""
    sender_index: dict[int, int]
    """Awareness client id -> sender index."""
    clock_base: list[int]
    """Per sender, the clock of seq 0 (seq i goes out at clock_base + i)."""
    sent: list[list[float]]
    """Per sender, the send time of each seq (NaN: not sent yet)."""
    newest: list[int]
    """Per sender, the newest seq sent so far (-1: none)."""
    window_start: float = math.inf
    window_end: float = math.inf
    latencies: list[float] = field(default_factory=list)
    closures: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Observer:
    """One reading client: the newest seq of each sender it has, and when it came."""

    ws: ClientConnection
    latest: list[int]
    latest_at: list[float]
    frames: int = 0
    """Awareness frames received in the measured window."""
    entries: int = 0
    """Entries with a newer state of a sender received in the window."""
    not_newer: int = 0
    """Entries of a sender that were not newer than what the observer had."""
    reissued: int = 0
    """Entries whose clock is not the one the sender gave that seq."""
    closed: str | None = None
    closed_at: float = math.nan

    async def observe(self, run: RunState) -> None:
        latest, latest_at = self.latest, self.latest_at
        index_of, clock_base, sent = run.sender_index, run.clock_base, run.sent
        try:
            while True:
                frame = await self.ws.recv(decode=False)
                now = time.perf_counter()
                if not frame or frame[0] != AWARENESS:
                    continue
                message = protocol.decode(frame)
                assert isinstance(message, AwarenessUpdate)
                in_window = run.window_start <= now <= run.window_end
                if in_window:
                    self.frames += 1
                for entry in message.entries:
                    k = index_of.get(entry.client_id)
                    if k is None or entry.state is None:
                        continue
                    match = SEQ.search(entry.state)
                    if match is None:
                        continue  # the sender's identity set-up
                    seq = int(match[1])
                    if entry.clock != clock_base[k] + seq:
                        self.reissued += 1
                    if seq <= latest[k]:
                        self.not_newer += 1
                        continue
                    latest[k] = seq
                    latest_at[k] = now
                    if seq >= run.first_measured:
                        run.latencies.append(now - sent[k][seq])
                    if in_window:
                        self.entries += 1
        except ConnectionClosed as exc:
            self.closed_at = time.perf_counter()
            self.closed = describe_close(exc)
            run.closures.append(f"an observer {self.closed}")


class Sender:
    """A client moving its cursor: one awareness message per tick of its schedule."""

    def __init__(self, ws: ClientConnection, index: int, client_id: int) -> None:
        self.ws = ws
        self.index = index
        self.client_id = client_id
        self.clock = 0
        self.user: dict[str, Any] = {
            "name": f"Sender {index}",
            "color": COLORS[index % len(COLORS)],
        }
        self.lags: list[float] = []
        self.closed: str | None = None

    async def learn_identity(self, timeout: float) -> None:
        """Send a first state without `user.id`, and adopt the server's correction."""
        self.clock = 1
        state = json.dumps({"user": self.user, "cursor": None}, separators=(",", ":"))
        await self.ws.send(
            protocol.encode_awareness([AwarenessEntry(ClientId(self.client_id), 1, state)])
        )
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.ws.recv(decode=False)
                if not frame or frame[0] != AWARENESS:
                    continue
                message = protocol.decode(frame)
                assert isinstance(message, AwarenessUpdate)
                for entry in message.entries:
                    if entry.client_id == self.client_id and entry.state is not None:
                        user = json.loads(entry.state).get("user")
                        if entry.clock > 1 and isinstance(user, dict) and "id" in user:
                            self.user = user
                            self.clock = entry.clock
                            return

    def state(self, seq: int) -> str:
        """The cursor state of message `seq`: a selection moving along a line."""
        position = seq % 4000
        anchor = {
            "type": None,
            "tname": "codemirror",
            "item": {"client": self.client_id, "clock": position},
            "assoc": 0,
        }
        head = {**anchor, "item": {"client": self.client_id, "clock": position + seq % 7}}
        return json.dumps(
            {"user": self.user, "cursor": {"anchor": anchor, "head": head}, "seq": seq},
            separators=(",", ":"),
        )

    async def move(self, run: RunState, start: float, rate: float) -> None:
        """Send `run.total` states on schedule: seq i at start + i / rate."""
        k = self.index
        base = self.clock + 1
        sent, newest = run.sent[k], run.newest
        try:
            for seq in range(run.total):
                due = start + seq / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                frame = protocol.encode_awareness(
                    [AwarenessEntry(ClientId(self.client_id), base + seq, self.state(seq))]
                )
                now = time.perf_counter()
                sent[seq] = now
                newest[k] = seq
                if seq >= run.first_measured:
                    self.lags.append(now - due)
                await self.ws.send(frame)
                self.clock = base + seq
        except ConnectionClosed as exc:
            self.closed = describe_close(exc)
            run.closures.append(f"a sender {self.closed}")

    async def drain(self, run: RunState) -> None:
        """Read and drop what the server sends (the other senders' cursors)."""
        try:
            while True:
                await self.ws.recv(decode=False)
        except ConnectionClosed as exc:
            if self.closed is None:
                self.closed = describe_close(exc)
                run.closures.append(f"a sender {self.closed}")


class CursorOptions(Protocol):
    """What `run_once` and `sample_staleness` read of a benchmark's options."""

    @property
    def senders(self) -> int: ...
    @property
    def rate(self) -> float: ...
    @property
    def duration(self) -> float: ...
    @property
    def warmup(self) -> float: ...
    @property
    def presence_rate(self) -> float: ...
    @property
    def presence_burst(self) -> int: ...
    @property
    def timeout(self) -> float: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def sample_interval(self) -> float: ...
    @property
    def compression(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class RunResult:
    mode: str
    clients: int
    offered_rate: float
    frames_per_observer: float
    entries_per_frame: float
    delivered_rate: float
    latency_p50: float
    latency_p99: float
    staleness_p50: float
    staleness_p99: float
    staleness_max: float
    server_cpu_share: float
    generator_cpu_share: float
    other_cpu_share: float
    server_cpu_per_offered: float
    converged: int
    final_p50: float
    final_max: float
    not_newer: int
    send_lag_p99: float
    server_cpu_per_entry: float
    closed: int
    """Observers whose connection closed during the run."""
    first_closed: float
    last_closed: float
    """Seconds from the first send to the first and the last observer closed (NaN: none)."""
    overload: tuple[str, ...]
    """Closed connections and observers that did not converge."""
    problems: tuple[str, ...]
    """Anything else that went wrong (a state re-issued by the server)."""

    def summary(self) -> str:
        """The run's figures on one line, as progress."""
        return (
            f"{self.delivered_rate:,.0f} entry-updates/s, {self.frames_per_observer:.1f} "
            f"frames/observer/s, latency p50 {ms(self.latency_p50)} ms p99 "
            f"{ms(self.latency_p99)} ms, staleness p50 {ms(self.staleness_p50)} ms p99 "
            f"{ms(self.staleness_p99)} ms, server CPU {pct(self.server_cpu_share)}, generator "
            f"CPU {pct(self.generator_cpu_share)}, other CPU {pct(self.other_cpu_share)}, "
            f"converged {self.converged}/{self.clients}"
        )


async def run_once(
    server: OurServer, mode: Mode, clients: int, options: CursorOptions
) -> RunResult:
    """Connect K senders and `clients` observers to a fresh document, move the
    cursors for warm-up + duration seconds, wait for convergence, and measure."""
    url = f"ws://{HOST}:{server.port}/awareness-{mode.name}-{clients}-{uuid.uuid4().hex[:12]}"
    problems: list[str] = []
    connections: list[ClientConnection] = []
    tasks: list[asyncio.Task[None]] = []
    total = max(1, round((options.warmup + options.duration) * options.rate))
    first_measured = min(round(options.warmup * options.rate), total - 1)

    async def connect_and_sync() -> ClientConnection:
        ws = await open_client(
            url, compression=options.compression, timeout=options.connect_timeout
        )
        connections.append(ws)
        await sync(ws, Doc())
        return ws

    try:
        async with asyncio.timeout(options.connect_timeout * 2), asyncio.TaskGroup() as group:
            observing = [group.create_task(connect_and_sync()) for _ in range(clients)]
            sending = [group.create_task(connect_and_sync()) for _ in range(options.senders)]
    except Exception as exc:  # a timeout, a refused connection, a close: all end the benchmark
        await close_connections(connections)
        raise RuntimeError(
            f"{clients} + {options.senders} clients could not connect: {exc!r}"
        ) from exc

    ids = random.sample(range(1, 2**32), options.senders)
    senders = [
        Sender(task.result(), k, cid)
        for k, (task, cid) in enumerate(zip(sending, ids, strict=True))
    ]
    run = RunState(
        senders=options.senders,
        total=total,
        first_measured=first_measured,
        sender_index={cid: k for k, cid in enumerate(ids)},
        clock_base=[0] * options.senders,
        sent=[[math.nan] * total for _ in senders],
        newest=[-1] * options.senders,
    )
    observers = [
        Observer(task.result(), [-1] * options.senders, [math.nan] * options.senders)
        for task in observing
    ]
    tasks += [asyncio.create_task(o.observe(run)) for o in observers]
    samples: list[float] = []
    try:
        try:
            async with asyncio.TaskGroup() as group:
                for sender in senders:
                    group.create_task(sender.learn_identity(options.connect_timeout))
        except Exception as exc:
            raise RuntimeError(f"a sender did not get its identity stamped: {exc!r}") from exc
        for sender in senders:
            run.clock_base[sender.index] = sender.clock + 1
        tasks += [asyncio.create_task(s.drain(run)) for s in senders]
        # Let the set-up frames settle and the senders' rate allowance refill.
        await asyncio.sleep(max(0.5, options.presence_burst / max(options.presence_rate, 1)))

        start = time.perf_counter() + 0.05
        run.window_start = start + first_measured / options.rate
        moving = [
            asyncio.create_task(s.move(run, start + s.index / (options.senders * options.rate),
                                       options.rate))
            for s in senders
        ]  # fmt: skip
        tasks += moving
        await asyncio.sleep(max(0.0, run.window_start - time.perf_counter()))
        server_cpu0, own_cpu0, busy0 = (
            server.cpu_seconds(), time.process_time(), machine_busy_seconds(),
        )  # fmt: skip
        window0 = time.perf_counter()
        run.window_start = window0
        sampler = asyncio.create_task(sample_staleness(run, observers, options, samples))
        tasks.append(sampler)
        await asyncio.gather(*moving)
        window1 = time.perf_counter()
        run.window_end = window1
        server_cpu = server.cpu_seconds() - server_cpu0
        own_cpu = time.process_time() - own_cpu0
        busy = machine_busy_seconds() - busy0
        sampler.cancel()

        final = total - 1
        deadline = time.perf_counter() + options.timeout
        while time.perf_counter() < deadline and not all(
            o.closed or min(o.latest) >= final for o in observers
        ):
            await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_connections(connections)

    window = window1 - window0
    converged = [o for o in observers if not o.closed and min(o.latest) >= final]
    finals = [
        o.latest_at[k] - run.sent[k][final]
        for o in observers
        for k in range(options.senders)
        if o.latest[k] >= final
    ]
    overload = [f"{count} x {reason}" for reason, count in sorted(Counter(run.closures).items())]
    if len(converged) < clients:
        overload.append(
            f"{clients - len(converged)} of {clients} observers did not show every sender's "
            f"final state {options.timeout:g} s after the last send"
        )
    reissued = sum(o.reissued for o in observers)
    if reissued:
        problems.append(f"{reissued} entries re-issued by the server (identity or policy change)")
    frames = sum(o.frames for o in observers)
    entries = sum(o.entries for o in observers)
    # Rates per observer over the part of the window it was connected (all of it,
    # unless it was evicted), summed: what the server delivered while it could.
    connected = [
        max(1e-9, min(window1, o.closed_at if o.closed else window1) - window0) for o in observers
    ]
    delivered_rate = sum(o.entries / t for o, t in zip(observers, connected, strict=True))
    frame_rate = sum(o.frames / t for o, t in zip(observers, connected, strict=True))
    offered = options.senders * (total - first_measured)
    lags = [lag for s in senders for lag in s.lags]
    closed_after = [o.closed_at - start for o in observers if o.closed]
    return RunResult(
        mode=mode.name,
        clients=clients,
        offered_rate=offered / window,
        frames_per_observer=frame_rate / clients,
        entries_per_frame=entries / frames if frames else math.nan,
        delivered_rate=delivered_rate,
        latency_p50=percentile(run.latencies, 50),
        latency_p99=percentile(run.latencies, 99),
        staleness_p50=percentile(samples, 50),
        staleness_p99=percentile(samples, 99),
        staleness_max=max(samples, default=math.nan),
        server_cpu_share=server_cpu / window,
        generator_cpu_share=own_cpu / window,
        other_cpu_share=max(0.0, busy - server_cpu - own_cpu) / window,
        server_cpu_per_offered=server_cpu / offered,
        server_cpu_per_entry=server_cpu / entries if entries else math.nan,
        closed=sum(1 for o in observers if o.closed),
        first_closed=min(closed_after, default=math.nan),
        last_closed=max(closed_after, default=math.nan),
        overload=tuple(overload),
        converged=len(converged),
        final_p50=percentile(finals, 50),
        final_max=max(finals, default=math.nan),
        not_newer=sum(o.not_newer for o in observers),
        send_lag_p99=percentile(lags, 99),
        problems=tuple(problems),
    )


async def sample_staleness(
    run: RunState, observers: Sequence[Observer], options: CursorOptions, samples: list[float]
) -> None:
    """Every sample interval (jittered), for every (observer, sender): how far the
    state the observer shows lags behind the newest the sender has sent, in send time."""
    sent, newest = run.sent, run.newest
    senders = range(run.senders)
    while True:
        await asyncio.sleep(options.sample_interval * random.uniform(0.5, 1.5))
        if time.perf_counter() > run.window_end:
            return
        for o in observers:
            if o.closed:
                continue
            latest = o.latest
            for k in senders:
                shown, last = latest[k], newest[k]
                if shown >= last:
                    samples.append(0.0)
                else:
                    samples.append(sent[k][last] - sent[k][max(shown, 0)])
