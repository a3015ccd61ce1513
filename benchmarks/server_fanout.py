"""Server fan-out, side by side: ours, the Node y-websocket server, Hocuspocus and
pycrdt-websocket, under the same load in the same run.

Usage:

    python benchmarks/server_fanout.py                 # every size, awareness off and on, 3 runs
    python benchmarks/server_fanout.py --quick         # smoke run: sizes 10 and 50, 1 short run
    python benchmarks/server_fanout.py --servers ours,node --sizes 100 500 --runs 1
    python benchmarks/server_fanout.py --servers ours --sizes 500 --awareness on \\
        --runs 1 --profile benchmarks/results/profiles     # py-spy profile of our server

Servers
-------
Each runs in its own process on 127.0.0.1, started and stopped by this script (a fresh
set for every size and awareness mode, so no run inherits another size's heap):

* **ours**: `python -m server serve --host 127.0.0.1 --port P --db <tmp>/ours.db
  --log-level WARNING`: open mode, documents stored durably in SQLite (the default
  configuration);
* **node**: the Node y-websocket server, npm `@y/websocket-server` 0.1.1,
  `node node_modules/@y/websocket-server/src/server.js` with HOST and PORT (documents
  in memory; it has no persistence unless YPERSISTENCE is set);
* **hocuspocus**: npm `@hocuspocus/server` 3.4.4, `benchmarks/peers/hocuspocus_server.mjs`
  (no extensions: documents in memory, every token accepted);
* **pycrdt**: pycrdt's own server (`pycrdt.websocket`, pycrdt-websocket 0.16.5)
  served by hypercorn, `benchmarks/peers/pycrdt_server.py` (documents in memory).

The npm packages are pinned in `benchmarks/peers/package.json` and its lock file;
this script runs `npm ci --prefix benchmarks/peers` when `node_modules` is absent.

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

Each figure is computed per run; the tables show the median over `--runs` runs, which
are interleaved (before them, at each size with more clients than any before it, one
run against the first server that is not counted: the generator's first run with that
many clients costs it twice the CPU of the next ones, and would set that run's
latency): within each size and awareness mode, run 1 of every server, then run
2 (servers in a rotated order), each after the machine has been quiet for half a
second (up to `--quiet-wait` seconds). A server that does not converge in a run gets no
further runs at that size and mode (its figures are that run's). A server still busy
10 s after its run is restarted before the next one, so its backlog does not steal
the next server's CPU.

Scheduling
----------
The generator stands for clients on other machines, but it shares the server's two
cores. By default it runs as a batch task (`SCHED_BATCH`, `--generator-policy
batch`): the same CPU share as any process (nice 0), but the kernel does not let it
preempt the running task when it wakes. Under the normal policy, a server's write to
a sleeping client woke the generator onto the server's own core, and the generator
preempted the server there, mid-broadcast: at 1,000 clients over 100 rooms with
awareness (`perf record -e sched:sched_switch`), 9,730 preemptions of our server's
event loop by the generator in two runs and 2,531 of Node's in one. A packet capture of
that run (server port, tcpdump) put the cost in the gaps between a broadcast's
writes: after ours' first write to a room the next came 110 µs later, then 66, then
about 10 µs each (Node's 13 and 10). A remote client's wake-up never takes the
server's CPU. The servers themselves start under the normal policy
(`scheduling.normal`), and the diagnostics give, per server, how often a second its
event-loop thread was preempted (involuntary context switches) in the measured
window (`benchmarks/harness/scheduling.py`).

Limits: 2 cores for the server under test and the generator together (the other three
servers idle meanwhile); the generator's CPU share is in the diagnostics, and when it
nears a full core it, not the server, may set the latency. Everything is bounded: a
connect phase (`--connect-timeout`), the wait for convergence (`--timeout`), closing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import heapq
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from harness import provenance, scheduling
from harness.provenance import load_average, version
from harness.stats import median, pct, percentile
from pycrdt import Doc, Text, TransactionEvent

from collab_engine import protocol
from collab_engine.protocol import AwarenessEntry
from collab_engine.types import ClientId

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
PEERS = REPO / "benchmarks" / "peers"
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_OUTPUT = RESULTS / "server_fanout.md"

MARKER = re.compile(rb"#e(\d+)#")
"""The room-local edit id a writer embeds in its insert, found in the raw update bytes."""
EMPTY_STATE_VECTOR = b"\x00"
EMPTY_UPDATE = b"\x00\x00"
"""What an empty document sends: no clients in its state vector; no structs, no deletes."""
RENEW_INTERVAL = 15.0
"""y-protocols renews a client's own awareness state when it is 15 s old."""
COLORS = ("#30bced", "#6eeb83", "#ffbc42", "#ecd444", "#ee6352", "#9ac2c9", "#8acb88")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NEVER = math.inf


# -- the servers ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    label: str
    hocuspocus: bool
    """Hocuspocus framing (document name prefix, authentication first)."""
    stamps_identity: bool
    """The server stamps `user.id` into awareness states (clients adopt the stamp)."""
    ready: str
    """A regular expression matched against its standard output once it listens."""


SPECS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("ours", "ours (collab-engine)", False, True, r"listening on ws://"),
        ServerSpec("node", "Node y-websocket", False, False, r"running at"),
        ServerSpec("hocuspocus", "Hocuspocus", True, False, r"hocuspocus listening on"),
        ServerSpec("pycrdt", "pycrdt-websocket", False, False, r"pycrdt-websocket listening on"),
    )
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def ensure_peers_installed() -> None:
    """`npm ci` the peers' packages when they are missing (the lock file pins them)."""
    if (PEERS / "node_modules" / "@hocuspocus" / "server").is_dir() and (
        PEERS / "node_modules" / "@y" / "websocket-server"
    ).is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: the Node servers cannot be set up")
    print("installing the peers' npm packages (npm ci)...", file=sys.stderr, flush=True)
    subprocess.run(
        [npm, "ci", "--prefix", str(PEERS), "--no-audit", "--no-fund"],
        check=True,
        timeout=600,
    )


class ServerProcess:
    """One server under test, in its own process on 127.0.0.1."""

    def __init__(
        self,
        spec: ServerSpec,
        tmp: Path,
        cprofile: Path | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.extra = tuple(extra)
        """More arguments for `serve` (ours only: `--ours-args`)."""
        self.spec = spec
        self.tmp = tmp
        self.log_path = tmp / f"{spec.name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.ps: psutil.Process | None = None
        self.port = 0
        self.starts = 0
        self.returncodes: list[int | None] = []
        self._reader: asyncio.Task[None] | None = None
        self._family: list[psutil.Process] = []
        self.cprofile = cprofile
        """Where cProfile writes the statistics of this server's process (ours only)."""

    def command(self, port: int) -> tuple[list[str], Path, dict[str, str]]:
        env = dict(os.environ)
        name = self.spec.name
        if name == "ours":
            # `--ours-args --memory`: nothing stored (as the Node server), so no file.
            where = [] if "--memory" in self.extra else ["--db", str(self.tmp / "ours.db")]
            argv = [
                sys.executable, "-m", "server", "serve", "--host", HOST, "--port", str(port),
                *where, "--log-level", "WARNING", *self.extra,
            ]  # fmt: skip
            if self.cprofile is not None:
                argv[1:1] = ["-m", "cProfile", "-o", str(self.cprofile)]
            return argv, REPO, env
        if name == "pycrdt":
            argv = [
                sys.executable, str(PEERS / "pycrdt_server.py"), "--host", HOST,
                "--port", str(port), "--log-level", "WARNING",
            ]  # fmt: skip
            return argv, REPO, env
        env.update(HOST=HOST, PORT=str(port))
        node = shutil.which("node") or "node"
        if name == "node":
            return [node, "node_modules/@y/websocket-server/src/server.js"], PEERS, env
        return [node, "hocuspocus_server.mjs"], PEERS, env

    def display_command(self) -> str:
        argv, cwd, _ = self.command(1234)
        if argv[0] == sys.executable:
            argv = ["python", *argv[1:]]
        argv = [os.path.relpath(a, REPO) if a.startswith(str(REPO)) else a for a in argv]
        argv = [a.replace(str(self.tmp), "<tmp>") for a in argv]
        if self.spec.name in ("node", "hocuspocus"):
            argv = ["node", *argv[1:]]
            return f"HOST={HOST} PORT=<port> " + shlex.join(argv) + " (in benchmarks/peers)"
        return shlex.join(argv).replace("1234", "<port>")

    async def start(self, timeout: float = 30.0) -> None:
        self.port = free_port()
        argv, cwd, env = self.command(self.port)
        # The generator may run as a batch task (`--generator-policy`); the server
        # under test must not inherit that: it starts as any server would.
        argv = scheduling.normal(argv)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {shlex.join(argv)}\n".encode())
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        self.starts += 1
        assert self.process.stdout is not None
        pattern = re.compile(self.spec.ready)
        async with asyncio.timeout(timeout):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise RuntimeError(f"{self.spec.name} exited before listening: {self.log_path}")
                if pattern.search(line.decode(errors="replace")):
                    break
            while True:  # listening: make sure it accepts
                try:
                    _, writer = await asyncio.open_connection(HOST, self.port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        self._reader = asyncio.create_task(self._drain_stdout())
        self.ps = psutil.Process(self.process.pid)
        self.refresh_family()

    async def _drain_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.log_path.open("ab") as log:
            while line := await self.process.stdout.readline():
                log.write(line)

    def refresh_family(self) -> None:
        assert self.ps is not None
        try:
            self._family = [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            self._family = [self.ps]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process and its children, so far."""
        total = 0.0
        for proc in self._family:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def preempted(self) -> int:
        """How many times the server's main thread (the event loop's, for every
        server here) was preempted so far: its involuntary context switches."""
        if self.ps is None:
            return 0
        try:
            return int(self.ps.num_ctx_switches().involuntary)
        except psutil.Error:
            return 0

    def rss(self) -> int:
        total = 0
        for proc in self._family:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.returncodes.append(self.process.returncode)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        self.process = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# -- a minimal WebSocket client -------------------------------------------------------


var_uint = protocol.encode_var_uint
var_string = protocol.encode_var_string


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN, `opcode`, masked with a random key (RFC 6455 5.3)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if n == 0:
        return header + key
    mask = (key * ((n + 3) // 4))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return header + key + masked


class Link(asyncio.Protocol):
    """A WebSocket client connection that hands each message to `on_message(msg, now)`.

    `now` is `time.perf_counter()` when the bytes were read from the socket.
    """

    def __init__(self, path: str, port: int, deflate: bool) -> None:
        self.path = path
        self.port = port
        self.deflate_offered = deflate
        self.key = base64.b64encode(os.urandom(16))
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._head = bytearray()
        self._open = False
        self._pending = b""
        self._fragments: list[bytes] | None = None
        self._fragment_compressed = False
        self._inflate: Any = None
        self.extensions = ""
        self.closing = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.frames = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {HOST}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.deflate_offered:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc!r}"))
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.closing:
            self.on_lost()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self._open:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = bytes(self._head[end + 4 :])
            if not self._handshake(bytes(self._head[:end]).decode("latin-1")):
                return
            if not data:
                return
        if self._pending:
            data = self._pending + data
        n = len(data)
        pos = 0
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            key = b""
            if b1 & 0x80:  # servers do not mask, but read it right if one does
                key = data[start : start + 4]
                start += 4
            end = start + length
            if end > n:
                break
            payload = data[start:end]
            pos = end
            if key:
                mask = (key * ((length + 3) // 4))[:length]
                payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(
                    length, "big"
                )
            opcode = b0 & 0x0F
            if opcode == 0x2 or opcode == 0x1:
                if b0 & 0x80:
                    if b0 & 0x40:
                        payload = self._inflate.decompress(payload + b"\x00\x00\xff\xff")
                    self.frames += 1
                    self.on_message(payload, now)
                else:
                    self._fragments = [payload]
                    self._fragment_compressed = bool(b0 & 0x40)
            elif opcode == 0x0:
                if self._fragments is None:
                    continue
                self._fragments.append(payload)
                if b0 & 0x80:
                    message = b"".join(self._fragments)
                    self._fragments = None
                    if self._fragment_compressed:
                        message = self._inflate.decompress(message + b"\x00\x00\xff\xff")
                    self.frames += 1
                    self.on_message(message, now)
            elif opcode == 0x9:
                self._write(mask_frame(0xA, payload))
            elif opcode == 0x8:
                if len(payload) >= 2:
                    self.close_code = int.from_bytes(payload[:2], "big")
                    self.close_reason = payload[2:].decode(errors="replace")
                else:
                    self.close_code = 1005
                if not self.closing:
                    self._write(mask_frame(0x8, payload[:2]))
                    self.on_closed_by_server()
                if self.transport is not None:
                    self.transport.close()
                self._pending = b""
                return
        self._pending = data[pos:] if pos < n else b""

    def _handshake(self, head: str) -> bool:
        status, _, rest = head.partition("\r\n")
        headers: dict[str, str] = {}
        for line in rest.split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()
        if " 101 " not in status + " " or headers.get("sec-websocket-accept") != expected:
            self.opened.set_exception(ConnectionError(f"handshake refused: {status!r}"))
            assert self.transport is not None
            self.transport.close()
            return False
        self.extensions = headers.get("sec-websocket-extensions", "")
        if "permessage-deflate" in self.extensions:
            self._inflate = zlib.decompressobj(-15)
        self._open = True
        self.opened.set_result(None)
        return True

    def _write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send(self, payload: bytes) -> None:
        """Send one binary message (uncompressed: permessage-deflate allows that)."""
        self._write(mask_frame(0x2, payload))

    def start_close(self) -> None:
        self.closing = True
        self._write(mask_frame(0x8, (1000).to_bytes(2, "big")))

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # for subclasses

    def on_message(self, message: bytes, now: float) -> None:
        raise NotImplementedError

    def on_closed_by_server(self) -> None:
        pass

    def on_lost(self) -> None:
        pass


# -- clients --------------------------------------------------------------------------


@dataclass(slots=True)
class Room:
    """One document under test and what its clients saw."""

    index: int
    name: str
    hocuspocus: bool
    writers: int
    edits_per_writer: int
    prefix: bytes = b""
    send_times: list[float] = field(default_factory=list)
    clients: list[Peer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefix = var_string(self.name) if self.hocuspocus else b""
        self.send_times = [math.nan] * self.edits

    @property
    def edits(self) -> int:
        return self.writers * self.edits_per_writer

    @property
    def path(self) -> str:
        return "/" if self.hocuspocus else f"/{self.name}"


class RunState:
    """What every client of one run shares."""

    def __init__(self, stamps_identity: bool) -> None:
        self.stamps_identity = stamps_identity
        self.delivered = 0
        self.expected = 0
        self.closures: list[str] = []
        self.problems: list[str] = []


class Peer(Link):
    """A y-websocket (or Hocuspocus) client: syncs, then hands messages to `live`."""

    full = False

    def __init__(self, run: RunState, room: Room, port: int, deflate: bool, name: str) -> None:
        super().__init__(room.path, port, deflate)
        self.run = run
        self.room = room
        self.name = name
        self.prefix = room.prefix
        self.plen = len(room.prefix)
        self.update_prefix = room.prefix + b"\x00\x02"
        loop = asyncio.get_running_loop()
        self.synced: asyncio.Future[None] = loop.create_future()
        self.adopted: asyncio.Future[None] = loop.create_future()
        self._answered = False
        self._got_step2 = False
        self.received = [math.nan] * room.edits
        self.duplicates = 0
        self.client_id = random.randrange(1, 2**32)
        self.id_bytes = b""
        self.aw_clock = 0
        self.aw_user: dict[str, Any] = {}

    # set-up

    def begin(self) -> None:
        if self.room.hocuspocus:
            self.send(self.prefix + b"\x02\x00" + var_string(""))
        self.send(self.prefix + protocol.encode_sync_step1(self.state_vector()))

    def state_vector(self) -> bytes:
        return EMPTY_STATE_VECTOR

    def update_for(self, state_vector: bytes) -> bytes:
        return EMPTY_UPDATE

    def apply(self, update: bytes) -> None:
        pass

    def setup_message(self, message: bytes) -> None:
        """Sync, authentication and awareness messages (never on the hot path)."""
        if not message.startswith(self.prefix) or len(message) <= self.plen:
            return
        body = message[self.plen :]
        kind = body[0]
        if kind == protocol.MESSAGE_SYNC:
            decoded = protocol.decode(body)
            if isinstance(decoded, protocol.SyncStep1):
                self.send(
                    self.prefix + protocol.encode_sync_step2(self.update_for(decoded.state_vector))
                )
                self._answered = True
            elif isinstance(decoded, protocol.SyncStep2):
                self.apply(decoded.update)
                self._got_step2 = True
            if self._answered and self._got_step2 and not self.synced.done():
                self.synced.set_result(None)
        elif kind == protocol.MESSAGE_AWARENESS:
            self.awareness_message(body)
        elif kind == protocol.MESSAGE_AUTH:
            if self.room.hocuspocus:
                sub = body[1] if len(body) > 1 else -1
                if sub == 0:  # the server asks for the token again
                    self.send(self.prefix + b"\x02\x00" + var_string(""))
                elif sub == 1:
                    self.fail(f"permission denied: {body[2:]!r}")
            else:
                self.fail(f"permission denied: {body!r}")

    def awareness_message(self, body: bytes) -> None:
        """Adopt the server's copy of our own state (ours stamps `user.id`)."""
        if not self.id_bytes or self.id_bytes not in body:
            return
        decoded = protocol.decode(body)
        assert isinstance(decoded, protocol.AwarenessUpdate)
        for entry in decoded.entries:
            if entry.client_id == self.client_id and entry.state is not None:
                if entry.clock >= self.aw_clock:
                    self.aw_clock = entry.clock
                    user = json.loads(entry.state).get("user")
                    if isinstance(user, dict):
                        self.aw_user = user
                    if "id" in self.aw_user and not self.adopted.done():
                        self.adopted.set_result(None)

    def fail(self, reason: str) -> None:
        self.run.problems.append(f"{self.name}: {reason}")
        if not self.synced.done():
            self.synced.set_exception(RuntimeError(reason))

    def on_closed_by_server(self) -> None:
        self.run.closures.append(f"closed by the server: {self.close_code} {self.close_reason!r}")

    def on_lost(self) -> None:
        if self.close_code is None:
            self.run.closures.append("connection lost without a close frame")
        if not self.synced.done():
            self.synced.set_exception(ConnectionError("connection lost during sync"))

    # awareness

    def awareness_state(self) -> dict[str, Any]:
        return {"user": self.aw_user, "cursor": None}

    def send_awareness(self) -> None:
        self.aw_clock += 1
        state = json.dumps(self.awareness_state(), separators=(",", ":"))
        entry = AwarenessEntry(ClientId(self.client_id), self.aw_clock, state)
        self.send(self.prefix + protocol.encode_awareness([entry]))

    def start_awareness(self, index: int) -> None:
        self.id_bytes = var_uint(self.client_id)
        self.aw_user = {"name": f"{self.name}", "color": COLORS[index % len(COLORS)]}
        self.send_awareness()

    # the hot path

    def record(self, message: bytes, now: float, own: int) -> None:
        received = self.received
        count = len(received)
        run = self.run
        for match in MARKER.finditer(message):
            index = int(match[1])
            if index >= count or index % self.room.writers == own:
                continue
            if received[index] != received[index]:  # NaN: the first time
                received[index] = now
                run.delivered += 1
            else:
                self.duplicates += 1


class Observer(Peer):
    """Reads frames, finds the edits' markers in update messages; decodes nothing else."""

    def on_message(self, message: bytes, now: float) -> None:
        if message.startswith(self.update_prefix):
            self.record(message, now, -1)
        elif self.synced.done() and not self.run.stamps_identity:
            return
        elif len(message) > self.plen and message[self.plen] == protocol.MESSAGE_AWARENESS:
            if self.id_bytes and self.id_bytes in message:
                self.awareness_message(message[self.plen :])
        else:
            self.setup_message(message)


class FullClient(Peer):
    """A pycrdt document synced through the server, applying every update it gets."""

    full = True

    def __init__(self, run: RunState, room: Room, port: int, deflate: bool, name: str) -> None:
        super().__init__(run, room, port, deflate, name)
        self.doc: Doc[Any] = Doc()
        self.text = self.doc.get("text", type=Text)
        self.client_id = self.doc.client_id

    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def update_for(self, state_vector: bytes) -> bytes:
        return self.doc.get_update(state_vector)

    def apply(self, update: bytes) -> None:
        self.doc.apply_update(update)

    def on_message(self, message: bytes, now: float) -> None:
        if message.startswith(self.update_prefix):
            self.record(message, now, self.own)
            update = protocol.Decoder(message[self.plen + 2 :]).var_bytes()
            self.doc.apply_update(update)
        else:
            self.setup_message(message)

    own = -1


class Writer(FullClient):
    """A full client that edits: one insert with a marker per edit, 5 per second."""

    def __init__(
        self, run: RunState, room: Room, port: int, deflate: bool, name: str, index: int
    ) -> None:
        super().__init__(run, room, port, deflate, name)
        self.own = index
        self._updates: list[bytes] = []
        self._subscription = self.doc.observe(self._on_transaction)
        self.lags: list[float] = []

    def _on_transaction(self, event: TransactionEvent) -> None:
        self._updates.append(event.update)

    def edit(self, edit_id: int) -> bytes:
        self._updates.clear()
        with self.doc.transaction():
            self.text.insert(len(self.text), f"#e{edit_id}# ")
        update = self._updates[-1]
        self._updates.clear()
        return self.prefix + protocol.encode_sync_update(update)

    def awareness_state(self) -> dict[str, Any]:
        if not self.synced.done():
            return super().awareness_state()
        position = max(0, len(self.text) - 1)

        def relative(clock: int) -> dict[str, Any]:
            return {
                "type": None,
                "tname": "text",
                "item": {"client": self.client_id, "clock": clock},
                "assoc": 0,
            }

        return {
            "user": self.aw_user,
            "cursor": {"anchor": relative(position), "head": relative(position)},
        }


# -- one run --------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Options:
    servers: tuple[str, ...]
    sizes: tuple[Size, ...]
    awareness: tuple[bool, ...]
    runs: int
    duration: float
    warmup: float
    rate: float
    writers: int | None
    timeout: float
    connect_timeout: float
    connect_concurrency: int
    compression: bool
    quiet_wait: float
    output: Path
    plots: bool
    profile: Path | None
    profiler: str
    quick: bool
    ours_args: tuple[str, ...] = ()
    generator_policy: str = "batch"


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


def machine_busy_seconds() -> float:
    """CPU time all cores spent not idle since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


async def connect_all(
    factories: Sequence[Callable[[], Peer]], port: int, options: Options
) -> list[Peer]:
    """Open and sync every client, `connect_concurrency` at a time."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(options.connect_concurrency)
    peers: list[Peer] = []

    async def one(factory: Callable[[], Peer]) -> None:
        async with gate:
            _, peer = await loop.create_connection(factory, HOST, port)
            peers.append(peer)
            await peer.opened
            peer.begin()
            await peer.synced

    try:
        async with asyncio.timeout(options.connect_timeout), asyncio.TaskGroup() as group:
            for factory in factories:
                group.create_task(one(factory))
    except BaseException:
        await close_all(peers)
        raise
    return peers


async def close_all(peers: Sequence[Link], timeout: float = 3.0) -> None:
    for peer in peers:
        peer.start_close()
    pending = [p.lost for p in peers if not p.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for peer in peers:
        if not peer.lost.done():
            peer.abort()


async def quiesce(peers: Sequence[Link], server: ServerProcess, limit: float) -> None:
    """Wait until no frame has arrived for 0.3 s and the server is idle (at most `limit` s)."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        frames0, cpu0 = sum(p.frames for p in peers), server.cpu_seconds()
        await asyncio.sleep(0.3)
        if sum(p.frames for p in peers) == frames0 and server.cpu_seconds() - cpu0 < 0.02:
            return


async def run_once(
    server: ServerProcess, size: Size, awareness: bool, options: Options, attempt: int
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
    port = server.port

    factories: list[Callable[[], Peer]] = []
    for room in rooms:
        factories.extend(
            partial(Writer, run, room, port, deflate, f"writer {room.index}.{k}", k)
            for k in range(writers_per_room)
        )
        factories.extend(
            partial(Observer, run, room, port, deflate, f"reader {room.index}.{j}")
            for j in range(size.per_room - writers_per_room)
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
            peers = await connect_all(firsts, port, options)
            peers += await connect_all(rest, port, options)
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

        def clocks() -> tuple[float, float, float, float, float]:
            # Server CPU, generator CPU, the whole machine's busy time, the server's
            # preemptions, wall time.
            return (
                server.cpu_seconds(),
                time.process_time(),
                machine_busy_seconds(),
                float(server.preempted()),
                time.perf_counter(),
            )

        async def window_cpu() -> tuple[float, float, float, float, float]:
            await asyncio.sleep(max(0.0, window0 - time.perf_counter()))
            first = clocks()
            await asyncio.sleep(max(0.0, window1 - time.perf_counter()))
            last = clocks()
            return tuple(b - a for a, b in zip(first, last, strict=True))  # type: ignore[return-value]

        profiler = None
        if (
            options.profile is not None
            and options.profiler == "py-spy"
            and spec.name == "ours"
            and attempt > 0  # 0: the generator's warm-up, not counted
        ):
            profiler = await start_profiler(server, size, awareness, attempt, options)

        cpu_start = server.cpu_seconds()
        cpu_task = asyncio.create_task(window_cpu())
        if awareness and observers:
            tasks.append(asyncio.create_task(renew()))
        writing = [asyncio.create_task(write(w, s)) for s, w in enumerate(writers)]
        tasks += writing
        await asyncio.gather(*writing)
        server_window, own_window, busy_window, preempted_window, window = await cpu_task
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
                partial(FullClient, run, room, port, deflate, f"verifier {room.index}")
                for room in rooms
            ]
            try:
                connected = await connect_all(
                    verify_factories,
                    port,
                    dataclasses.replace(options, connect_timeout=options.timeout),
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
    )


# -- profiling our server -------------------------------------------------------------


@dataclass(slots=True)
class Profiler:
    process: asyncio.subprocess.Process
    raw: Path
    summary: Path
    pid: int
    threads: dict[int, tuple[str, float]]
    started: float


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{thread id: (name, user + system CPU seconds)} of a process, from /proc."""
    threads: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            name = (task / "comm").read_text().strip()
            threads[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return threads


async def start_profiler(
    server: ServerProcess, size: Size, awareness: bool, attempt: int, options: Options
) -> Profiler | None:
    """py-spy, sampling our server's process for the rest of the run (raw stacks)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    assert options.profile is not None and server.process is not None
    options.profile.mkdir(parents=True, exist_ok=True)
    stem = (
        f"ours-{size.key.replace('/', 'x')}-awareness-{'on' if awareness else 'off'}-run{attempt}"
    )
    raw = options.profile / f"{stem}.txt"
    process = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(server.process.pid), "--rate", "200", "--format", "raw",
        "--output", str(raw), "--nonblocking",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.5)
    if process.returncode is not None:
        err = await process.stderr.read() if process.stderr else b""
        print(f"py-spy could not attach: {err.decode(errors='replace')}", file=sys.stderr)
        return None
    pid = server.process.pid
    return Profiler(
        process, raw, options.profile / f"{stem}.md", pid, thread_cpu(pid), time.perf_counter()
    )


async def stop_profiler(profiler: Profiler) -> None:
    elapsed = time.perf_counter() - profiler.started
    after = thread_cpu(profiler.pid)
    threads = [
        (name, cpu - profiler.threads.get(tid, (name, 0.0))[1], tid == profiler.pid)
        for tid, (name, cpu) in after.items()
    ]
    profiler.process.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(profiler.process.wait(), 30)
    except TimeoutError:
        profiler.process.kill()
        await profiler.process.wait()
    if profiler.raw.exists():
        cpu = [
            f"CPU by thread over the {elapsed:.1f} s profiled (from /proc, exact): "
            + ", ".join(
                f"{'event loop' if main else name} {seconds:.2f} s ({seconds / elapsed:.0%})"
                for name, seconds, main in sorted(threads, key=lambda t: -t[1])
                if seconds >= 0.01 or main
            )
            + ".",
        ]
        profiler.summary.write_text(summarise_profile(profiler.raw, cpu))


ENTRY_FRAMES = ("<frozen runpy>", "server/__main__.py", "anyio/_core/_eventloop.py",
                "AsyncIOBackend.run ", "Runner.run ", "threading.py")  # fmt: skip
"""Frames every stack passes through: left out of the cumulative table."""


def summarise_profile(raw: Path, preamble: Sequence[str] = (), top: int = 30) -> str:
    """Top functions by self and by cumulative (inclusive) samples, from py-spy's raw
    (collapsed) stacks: `frame;frame;...;leaf count` per line, root first. Frames are
    `function (file:line)`; they are counted per function here (lines merged)."""
    line_number = re.compile(r":\d+\)$")
    self_counts: Counter[str] = Counter()
    self_lines: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        functions = [line_number.sub(")", f) for f in frames]
        self_counts[functions[-1]] += count
        self_lines[frames[-1]] += count
        for function in set(functions):
            inclusive[function] += count
    share = max(1, total)
    lines = [
        f"# py-spy profile: {raw.name}",
        "",
        *preamble,
        "",
        f"{total} samples at 200 Hz over all threads (the event loop's and aiosqlite's "
        "worker; py-spy leaves out samples of threads it sees idle). Self samples in "
        "`Runner.run` are uvloop's own C loop. Caveat: SQLAlchemy runs its async calls in "
        "greenlets, and py-spy may show a greenlet's suspended stack (ending in "
        "`Connection._execute (aiosqlite/core.py:158)`, an `await`) for the event-loop "
        "thread while that thread is in fact elsewhere or idle; the CPU by thread above is "
        "the exact account.",
        "",
        "## Top functions by self time",
        "",
        "| self % | samples | function (file) |",
        "|---:|---:|---|",
    ]
    lines += [f"| {c / share:.1%} | {c} | `{f}` |" for f, c in self_counts.most_common(top)]
    lines += ["", "## Top lines by self time", "", "| self % | samples | line |", "|---:|---:|---|"]
    lines += [f"| {c / share:.1%} | {c} | `{f}` |" for f, c in self_lines.most_common(15)]
    lines += ["", "## Top functions by cumulative time", "",
              "| cumulative % | samples | function (file) |", "|---:|---:|---|"]  # fmt: skip
    kept = [(f, c) for f, c in inclusive.most_common() if not any(e in f for e in ENTRY_FRAMES)]
    lines += [f"| {c / share:.1%} | {c} | `{f}` |" for f, c in kept[:top]]
    return "\n".join(lines) + "\n"


def summarise_cprofile(path: Path, top: int = 30) -> str:
    """Top functions by own (tottime) and cumulative time, from cProfile's statistics."""
    import io
    import pstats

    out = [f"# cProfile: {path.name}", "",
           "Our server's whole process (start, the runs, shutdown), event-loop thread only; "
           "cProfile slows the process down, so shares matter, not absolute times.", ""]  # fmt: skip
    for key, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        buffer = io.StringIO()
        stats = pstats.Stats(str(path), stream=buffer)
        stats.sort_stats(key).print_stats(top)
        text = buffer.getvalue()
        body = text[text.find("   ncalls") :] if "   ncalls" in text else text
        out += [f"## Top {top} by {title}", "", "```", body.rstrip(), "```", ""]
    return "\n".join(out)


# -- statistics and report ------------------------------------------------------------


def percentile_never(values: Sequence[float], q: float) -> float:
    """`stats.percentile`, where an infinite value (an edit never delivered) ranks last
    and a percentile that reaches one is infinite too."""
    big = 1e12
    result = percentile([big if math.isinf(v) else v for v in values], q)
    return NEVER if result >= big / 2 else result


def median_of(results: Sequence[RunResult], name: str) -> float:
    return median(float(getattr(r, name)) for r in results)


def ms(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def median_latency(results: Sequence[RunResult], name: str) -> float:
    values = [float(getattr(r, name)) for r in results if not math.isnan(getattr(r, name))]
    if not values:
        return math.nan
    values.sort()
    return values[len(values) // 2] if len(values) % 2 else (
        values[len(values) // 2 - 1] + values[len(values) // 2]) / 2  # fmt: skip


def converged_text(results: Sequence[RunResult]) -> str:
    ok = sum(r.converged for r in results)
    if ok == len(results):
        return "yes" if len(results) == 1 else f"yes ({ok}/{len(results)})"
    return "no" if ok == 0 else f"{ok}/{len(results)} runs"


def header(
    options: Options,
    argv: Sequence[str],
    servers: dict[str, ServerProcess],
    extensions: dict[str, str],
    load: list[str],
    started: float,
) -> str:
    commit = provenance.commit(
        ["collab_engine", "server", "storage"], "plus uncommitted changes to the server"
    )
    uname = os.uname()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Server fan-out: ours, the Node y-websocket server, Hocuspocus and pycrdt-websocket",
        "",
        f"- command: `{provenance.command_line(argv)}`",
        f"- date: {provenance.utc_now()}; took {(time.time() - started) / 60:.1f} min",
        f"- machine: nproc = {len(os.sched_getaffinity(0))}, {uname.sysname} {uname.release}; "
        f"1-minute load average before each size and mode: {', '.join(load)}; each run waits "
        f"(up to {options.quiet_wait:g} s) for the machine to be quiet first, and the CPU "
        "the rest of the machine used during each run is in the diagnostics",
        f"- Python {sys.version.split()[0]}, pycrdt {version('pycrdt')}, hypercorn "
        f"{version('hypercorn')}, pycrdt-websocket {version('pycrdt-websocket')}, psutil "
        f"{version('psutil')}; Node {node}, @y/websocket-server 0.1.1, @hocuspocus/server "
        f"3.4.4, yjs 13.6.33 (benchmarks/peers/package-lock.json); collab-engine commit {commit}",
        f"- load: per room W writers (full pycrdt clients) at {options.rate:g} edits/s each, "
        f"the other clients light observers; {options.warmup:g} s of warm-up edits then "
        f"{options.duration:g} s measured per run; up to {options.runs} runs per server, size "
        "and mode, interleaved (median of each figure), after one run not counted at each "
        "size with more clients than any before it (the generator's own warm-up); wait for "
        f"convergence capped at {options.timeout:g} s after the last edit",
        f"- generator's scheduling policy: {scheduling.current()} (the servers': normal; see "
        "'Scheduling' in the script's docstring)",
        f"- clients offer permessage-deflate: {'yes' if options.compression else 'no'}; "
        "accepted by: "
        + ", ".join(
            f"{name} {'yes' if 'deflate' in ext else 'no'}" for name, ext in extensions.items()
        ),
    ]
    for name, server in servers.items():
        lines.append(f"- {name}: `{server.display_command()}`")
    return "\n".join(lines)


def tables(results: dict[tuple[str, bool, str], list[RunResult]], options: Options) -> str:
    lines = [
        "| clients | awareness | W | server | fan-out p50 (ms) | fan-out p99 (ms) "
        "| delivered / offered (updates/s) | converged | CPU s | CPU % (one core) "
        "| peak RSS (MB) | runs |",
        "|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for (size, awareness, server), runs in results.items():
        lines.append(
            f"| {size_label(size)} | {'on' if awareness else 'off'} | {runs[0].writers} "
            f"| {server} | {ms(median_latency(runs, 'fanout_p50'))} "
            f"| {ms(median_latency(runs, 'fanout_p99'))} "
            f"| {num(median_of(runs, 'delivered_rate'))} / {num(runs[0].offered_rate)} "
            f"| {converged_text(runs)} | {median_of(runs, 'server_cpu'):.1f} "
            f"| {pct(median_of(runs, 'server_cpu_share'))} "
            f"| {median_of(runs, 'peak_rss'):.0f} | {len(runs)} |"
        )
    lines += [
        "",
        "W: writers in all (one room: min(clients, 10); with rooms: 1 per room), 5 edits/s "
        'each. Fan-out: time until every other client of the room has an edit ("never": '
        "some client never got it). CPU s: server CPU from the first edit to convergence "
        "(or the end of the wait); CPU %: share of one core over the measured window. "
        "Runs: how many runs the medians are over (a server that does not converge gets no "
        "further runs at that size and mode).",
        "",
        "Diagnostics (median over runs). Fan-out p95/max and per-delivery latencies; "
        "deliveries of the measured edits received by the end (summed over runs); the "
        "generator's and the rest of the machine's CPU over the measured window; how "
        "often a second the server's event-loop thread was preempted (its involuntary "
        "context switches) in that window; the writers' send lag p99; seconds to connect "
        "and sync every client.",
        "",
        "| clients | awareness | server | fan-out p95 (ms) | fan-out max (ms) "
        "| per delivery p50 (ms) | per delivery p99 (ms) | deliveries received / expected "
        "| generator CPU | other CPU | server preempted (/s) | send lag p99 (ms) "
        "| connect + sync (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (size, awareness, server), runs in results.items():
        lines.append(
            f"| {size_label(size)} | {'on' if awareness else 'off'} | {server} "
            f"| {ms(median_latency(runs, 'fanout_p95'))} | {ms(median_latency(runs, 'fanout_max'))} "
            f"| {ms(median_of(runs, 'delivery_p50'))} | {ms(median_of(runs, 'delivery_p99'))} "
            f"| {sum(r.delivered for r in runs):,} / {sum(r.expected for r in runs):,} "
            f"| {pct(median_of(runs, 'generator_cpu_share'))} "
            f"| {pct(median_of(runs, 'other_cpu_share'))} "
            f"| {num(median_of(runs, 'preempted_rate'))} "
            f"| {ms(median_of(runs, 'send_lag_p99'))} | {median_of(runs, 'setup_seconds'):.1f} |"
        )
    return "\n".join(lines)


def comparison(results: dict[tuple[str, bool, str], list[RunResult]], options: Options) -> str:
    """Ours against the Node server, size by size: the figures side by side."""
    if "ours" not in options.servers or "node" not in options.servers:
        return ""
    lines = ["Ours against the Node y-websocket server (medians):", ""]
    for size in options.sizes:
        for awareness in options.awareness:
            ours = results.get((size.key, awareness, "ours"))
            node = results.get((size.key, awareness, "node"))
            if not ours or not node:
                continue
            lines.append(
                f"- {size.label}, awareness {'on' if awareness else 'off'}: fan-out p99 "
                f"{ms(median_latency(ours, 'fanout_p99'))} ms against "
                f"{ms(median_latency(node, 'fanout_p99'))} ms, p50 "
                f"{ms(median_latency(ours, 'fanout_p50'))} against "
                f"{ms(median_latency(node, 'fanout_p50'))} ms; server CPU "
                f"{pct(median_of(ours, 'server_cpu_share'))} against "
                f"{pct(median_of(node, 'server_cpu_share'))} of a core; converged "
                f"{converged_text(ours)} / {converged_text(node)}"
            )
    return "\n".join(lines)


def relative(path: Path) -> str:
    """`path` as seen from the repository."""
    return os.path.relpath(path, REPO)


def size_label(key: str) -> str:
    clients, _, rooms = key.partition("/")
    return clients if not rooms else f"{clients} in {rooms} rooms"


def plot(results: dict[tuple[str, bool, str], list[RunResult]], options: Options) -> list[Path]:
    """PNG figures next to the Markdown, named after it (`<stem>_latency.png`,
    `<stem>_cpu_rss.png`): fan-out p99 and p50 by size, and server CPU and peak RSS
    by size; one line per server, awareness off and on side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    from matplotlib.transforms import blended_transform_factory

    sizes = [s.key for s in options.sizes]
    modes = list(options.awareness)
    written: list[Path] = []
    figures = [
        (f"{options.output.stem}_latency.png", [("fanout_p99", "fan-out p99 (ms, log)"), ("fanout_p50", "fan-out p50 (ms, log)")], True),
        (f"{options.output.stem}_cpu_rss.png", [("server_cpu_share", "server CPU (% of one core)"), ("peak_rss", "server peak RSS (MB, log)")], False),
    ]  # fmt: skip
    for filename, metrics, latency in figures:
        fig, axes = plt.subplots(
            len(metrics), len(modes), figsize=(5.8 * len(modes), 3.8 * len(metrics)),
            squeeze=False, sharey="row",
        )  # fmt: skip
        for row, (metric, ylabel) in enumerate(metrics):
            for col, awareness in enumerate(modes):
                ax = axes[row][col]
                marks = blended_transform_factory(ax.transData, ax.transAxes)
                for index, name in enumerate(options.servers):
                    # NaN breaks the line where a server has no figure (or "never").
                    xs, ys, failed, never = [], [], [], []
                    for x, size in enumerate(sizes):
                        runs = results.get((size, awareness, name))
                        value = math.nan
                        if runs:
                            if latency:
                                value = median_latency(runs, metric) * 1000
                            else:
                                scale = 100 if metric == "server_cpu_share" else 1
                                value = median_of(runs, metric) * scale
                            if math.isinf(value):
                                never.append(x)
                                value = math.nan
                            elif not math.isnan(value) and not all(r.converged for r in runs):
                                failed.append((x, value))
                        xs.append(x)
                        ys.append(value)
                    (line,) = ax.plot(xs, ys, marker="o", label=SPECS[name].label)
                    color = line.get_color()
                    for x, value in failed:
                        ax.plot([x], [value], marker="X", markersize=11, color=color, alpha=0.6)
                    shift = (index - (len(options.servers) - 1) / 2) * 0.09
                    for x in never:
                        ax.plot(
                            [x + shift], [0.97], marker="v", markersize=9, color=color,
                            transform=marks, clip_on=False,
                        )  # fmt: skip
                ax.set_xticks(range(len(sizes)), [size_label(s) for s in sizes], fontsize=8)
                if latency or metric == "peak_rss":
                    ax.set_yscale("log")
                    ax.yaxis.set_major_formatter(ScalarFormatter())
                    ax.yaxis.set_minor_formatter(NullFormatter())
                ax.set_ylabel(ylabel)
                ax.set_xlabel("clients")
                ax.set_title(f"awareness {'on' if awareness else 'off'}", fontsize=10)
                ax.grid(True, which="both", alpha=0.3)
                if row == 0 and col == 0:
                    ax.legend(fontsize=8, loc="upper left")
        fig.suptitle(
            "Server fan-out, median of runs (X: did not converge; \u25bc at the top: never "
            "delivered to every client)",
            fontsize=10,
        )
        fig.tight_layout()
        path = options.output.parent / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# -- main -----------------------------------------------------------------------------


def parse_servers(parser: argparse.ArgumentParser, text: str) -> tuple[str, ...]:
    """The comma-separated server names of `--servers`; a parser error for unknown ones."""
    servers = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in servers if s not in SPECS]
    if unknown or not servers:
        parser.error(f"unknown servers {unknown}: choose from {', '.join(SPECS)}")
    return servers


def parse_size(text: str) -> Size:
    clients, _, rooms = text.partition("/")
    size = Size(int(clients), int(rooms or 1))
    if size.clients < 2 or size.rooms < 1 or size.clients % size.rooms or size.per_room < 2:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: N or N/ROOMS, at least 2 per room")
    return size


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Fan-out of document updates to N clients: ours, the Node y-websocket "
        "server, Hocuspocus and pycrdt-websocket side by side.",
    )
    parser.add_argument(
        "--servers", default="ours,node,hocuspocus,pycrdt",
        help="comma-separated, from ours,node,hocuspocus,pycrdt (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--sizes", type=parse_size, nargs="+",
        help="client counts: N (one room) or N/ROOMS (default 10 50 100 500 1000/100; "
        "--quick: 10 50)",
    )  # fmt: skip
    parser.add_argument("--awareness", default="off,on", help="off, on or off,on (default: both)")
    parser.add_argument(
        "--runs", type=int, help="runs per server, size and mode (default 3; --quick: 1)"
    )
    parser.add_argument(
        "--duration", type=float, help="measured seconds per run (default 5; --quick: 3)"
    )
    parser.add_argument(
        "--warmup", type=float, help="seconds of unmeasured edits first (default 1)"
    )
    parser.add_argument("--rate", type=float, default=5.0, help="edits per second per writer")
    parser.add_argument(
        "--writers", type=int,
        help="writers per room (default: min(clients, 10) in one room; 1 per room with rooms)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=10.0,
        help="seconds to wait for convergence after the last edit (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--connect-timeout", type=float,
        help="seconds to connect and sync every client of a run (default 20 + 0.05 per client)",
    )  # fmt: skip
    parser.add_argument("--connect-concurrency", type=int, default=50, help="handshakes at once")
    parser.add_argument(
        "--compression", choices=["deflate", "none"], default="deflate",
        help="offer permessage-deflate like browsers do (default) or not",
    )  # fmt: skip
    parser.add_argument(
        "--quiet-wait", type=float, default=3.0,
        help="before each run, wait up to this many seconds for the machine to be quiet",
    )  # fmt: skip
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument(
        "--profile", type=Path,
        help="directory: profile our server with py-spy during its runs (raw stacks + summary)",
    )  # fmt: skip
    parser.add_argument(
        "--profiler", choices=["py-spy", "cprofile"], default="py-spy",
        help="with --profile: py-spy attached to our server during each of its runs "
        "(default), or our server run under cProfile for each size and mode (its event-loop "
        "thread only, whole process lifetime; slower)",
    )  # fmt: skip
    parser.add_argument(
        "--ours-args", default="", metavar="ARGS",
        help="more `serve` arguments for our server, as one shell-quoted string "
        "(e.g. '--asgi --loop asyncio')",
    )  # fmt: skip
    scheduling.add_option(parser)
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: sizes 10 and 50, 1 run of 3 s (explicit flags win)",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to write the results to"
    )
    args = parser.parse_args(argv)
    servers = parse_servers(parser, args.servers)
    modes = {"off": False, "on": True}
    try:
        awareness = tuple(modes[m.strip()] for m in args.awareness.split(","))
    except KeyError:
        parser.error("--awareness takes off, on or off,on")
    sizes = args.sizes or [
        parse_size(s)
        for s in (["10", "50"] if args.quick else ["10", "50", "100", "500", "1000/100"])
    ]
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else 1.0
    if runs < 1 or duration <= 0 or warmup < 0 or args.rate <= 0:
        parser.error("runs, duration and rate must be positive, warmup not negative")
    return Options(
        servers=servers,
        sizes=tuple(sizes),
        awareness=awareness,
        runs=runs,
        duration=duration,
        warmup=warmup,
        rate=args.rate,
        writers=args.writers,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout
        if args.connect_timeout is not None
        else 20 + 0.05 * max(s.clients for s in sizes),
        connect_concurrency=args.connect_concurrency,
        compression=args.compression == "deflate",
        quiet_wait=args.quiet_wait,
        output=args.output,
        plots=not args.no_plots,
        profile=args.profile.resolve() if args.profile is not None else None,
        profiler=args.profiler,
        quick=args.quick,
        ours_args=tuple(shlex.split(args.ours_args)),
        generator_policy=args.generator_policy,
    )


async def settle(servers: Sequence[ServerProcess], limit: float) -> None:
    """Wait (up to `limit` s) until the servers are idle and the rest of the machine under
    a quarter of a core, over half a second."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        server0, busy0, own0 = (
            sum(s.cpu_seconds() for s in servers), machine_busy_seconds(), time.process_time()
        )  # fmt: skip
        await asyncio.sleep(0.5)
        server = sum(s.cpu_seconds() for s in servers) - server0
        other = machine_busy_seconds() - busy0 - server - (time.process_time() - own0)
        if server < 0.05 and other < 0.125:
            return


async def idle_or_restart(server: ServerProcess, limit: float = 10.0) -> bool:
    """After a run: wait for the server to go idle; restart it if it does not."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        if not server.alive:
            break
        cpu0 = server.cpu_seconds()
        await asyncio.sleep(0.5)
        if server.cpu_seconds() - cpu0 < 0.05:
            return False
    await server.restart()
    return True


async def benchmark(options: Options, argv: Sequence[str]) -> int:
    started = time.time()
    if any(s in ("node", "hocuspocus") for s in options.servers):
        ensure_peers_installed()
    results: dict[tuple[str, bool, str], list[RunResult]] = {}
    problems: list[str] = []
    notes: list[str] = []
    loads: list[str] = []
    extensions: dict[str, str] = {}
    logs: dict[str, str] = {}
    all_servers: dict[str, ServerProcess] = {}
    most_clients = 0  # the most clients the generator has held so far (see warm-up)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for size in options.sizes:
            for awareness in options.awareness:
                loads.append(
                    f"{load_average()} ({size.key}, awareness {'on' if awareness else 'off'})"
                )
                group = Path(tempfile.mkdtemp(dir=tmp))
                cprofile = None
                if options.profile is not None and options.profiler == "cprofile":
                    options.profile.mkdir(parents=True, exist_ok=True)
                    cprofile = options.profile / (
                        f"ours-{size.key.replace('/', 'x')}-awareness-"
                        f"{'on' if awareness else 'off'}.prof"
                    )
                servers = {
                    name: ServerProcess(
                        SPECS[name],
                        group,
                        cprofile if name == "ours" else None,
                        options.ours_args if name == "ours" else (),
                    )
                    for name in options.servers
                }
                all_servers.update(servers)
                failed: set[str] = set()
                try:
                    for server in servers.values():
                        await server.start()
                    if size.clients > most_clients:
                        # The generator's first run with more clients than ever before
                        # costs it twice the CPU of the next ones (94 % of a core
                        # against 45 % at 500 clients, its p50 20-30 ms against 9-10):
                        # it, not the server, would set that run's latency, and it is
                        # always the first server's. One run, not counted, first.
                        most_clients = size.clients
                        leader = servers[options.servers[0]]
                        await settle(list(servers.values()), options.quiet_wait)
                        try:
                            await run_once(leader, size, awareness, options, 0)
                        except (RuntimeError, OSError, TimeoutError) as exc:
                            print(f"{size.label}: warm-up run aborted: {exc!r}", file=sys.stderr)
                        await idle_or_restart(leader)
                    for attempt in range(1, options.runs + 1):
                        order = list(options.servers)
                        shift = (attempt - 1) % len(order)
                        order = order[shift:] + order[:shift]
                        for name in order:
                            if name in failed:
                                continue
                            server = servers[name]
                            await settle(list(servers.values()), options.quiet_wait)
                            label = f"{size.label}, awareness {'on' if awareness else 'off'}, {name} run {attempt}"
                            try:
                                result = await run_once(server, size, awareness, options, attempt)
                            except (RuntimeError, OSError, TimeoutError) as exc:
                                problems.append(f"{label}: aborted: {exc!r}")
                                print(f"{label}: aborted: {exc!r}", file=sys.stderr, flush=True)
                                failed.add(name)
                                await server.restart()
                                continue
                            results.setdefault((size.key, awareness, name), []).append(result)
                            extensions.setdefault(name, result.extensions)
                            print(
                                f"{label}: fan-out p50 {ms(result.fanout_p50)} ms p99 "
                                f"{ms(result.fanout_p99)} ms, delivered {num(result.delivered_rate)}"
                                f"/{num(result.offered_rate)}/s, converged {result.converged}"
                                f"{' (' + result.why_not + ')' if result.why_not else ''}, CPU "
                                f"{result.server_cpu:.1f} s {pct(result.server_cpu_share)}, RSS "
                                f"{result.peak_rss:.0f} MB, generator {pct(result.generator_cpu_share)}, "
                                f"other {pct(result.other_cpu_share)}, preempted "
                                f"{num(result.preempted_rate)}/s, setup {result.setup_seconds:.1f} s",
                                file=sys.stderr,
                                flush=True,
                            )
                            problems.extend(f"{label}: {p}" for p in result.problems)
                            if not result.converged:
                                failed.add(name)
                                notes.append(f"{label}: did not converge ({result.why_not}); "
                                             "no further runs of it at this size and mode")  # fmt: skip
                            if await idle_or_restart(server):
                                notes.append(f"{label}: still busy 10 s after the run; restarted")
                finally:
                    for name, server in servers.items():
                        await server.stop()
                        if server.cprofile is not None and server.cprofile.exists():
                            server.cprofile.with_suffix(".md").write_text(
                                summarise_cprofile(server.cprofile)
                            )
                        text = server.log_text()
                        logs[f"{name} ({size.key}, awareness {'on' if awareness else 'off'})"] = (
                            text
                        )
                        if any(rc not in (0, None, -signal.SIGTERM, -signal.SIGKILL)
                               for rc in server.returncodes):  # fmt: skip
                            problems.append(
                                f"{name} ({size.label}): exit statuses {server.returncodes}"
                            )
                        elif -signal.SIGKILL in server.returncodes:
                            notes.append(f"{name} ({size.label}, awareness "
                                         f"{'on' if awareness else 'off'}): did not exit within "
                                         "15 s of SIGTERM and was killed")  # fmt: skip
    loads.append(f"{load_average()} (after)")
    ordered = {
        (size.key, awareness, name): results[(size.key, awareness, name)]
        for size in options.sizes
        for awareness in options.awareness
        for name in options.servers
        if (size.key, awareness, name) in results
    }
    representative = {name: all_servers[name] for name in options.servers if name in all_servers}
    report = [
        header(options, argv, representative, extensions, loads, started),
        "",
        tables(ordered, options) if ordered else "(no results)",
        "",
        comparison(ordered, options),
        "",
    ]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    # Every run's figures, for replotting or other comparisons (NaN and infinity as null).
    per_run = [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
         for k, v in dataclasses.asdict(r).items()}
        for runs in ordered.values()
        for r in runs
    ]  # fmt: skip
    options.output.with_suffix(".json").write_text(json.dumps(per_run, indent=1) + "\n")
    if options.plots and ordered:
        written = plot(ordered, options)
        names = ", ".join(f"`{relative(p)}`" for p in written)
        report += [f"Plots: {names}", ""]
    if notes:
        report += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    error_logs = {
        name: [line for line in text.splitlines() if line.strip() and not line.startswith("---")]
        for name, text in logs.items()
    }
    noisy = {
        name: lines
        for name, lines in error_logs.items()
        if any("Error" in line or "ERROR" in line or "Traceback" in line for line in lines)
    }
    for name, lines in noisy.items():
        problems.append(f"{name} logged errors (see its log below)")
        first = next(
            i for i, line in enumerate(lines)
            if "Error" in line or "ERROR" in line or "Traceback" in line
        )  # fmt: skip
        errors = sum("ERROR" in line or "Traceback" in line for line in lines)
        report += [
            f"Log of {name}: {errors} error records; the first one:",
            "",
            "```",
            *lines[first : first + 40],
            "```",
            "",
        ]
    if problems:
        report += ["**Problems:**", "", *(f"- {p}" for p in problems[:60]), ""]
    text = "\n".join(report)
    print(text)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(text)
    return 1 if problems else 0


def main() -> None:
    options = parse_options(sys.argv[1:])
    scheduling.apply(options.generator_policy)
    sys.exit(asyncio.run(benchmark(options, sys.argv)))


if __name__ == "__main__":
    main()
