"""The servers under test, each in its own process on 127.0.0.1.

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

And for clusters (`harness/cluster.py`), not among the four: **hocuspocus-redis**
(`HOCUSPOCUS_REDIS`), Hocuspocus with npm `@hocuspocus/extension-redis` 3.4.4,
`benchmarks/peers/hocuspocus_redis_server.mjs`, configured by its environment (the
Redis and its prefix, the instance's id); ours is the same `serve` with a cluster's
arguments (`--database-url`, `--redis-url`, ...: then no `--db`).

The npm packages are pinned in `benchmarks/peers/package.json` and its lock file;
`ensure_peers_installed` runs `npm ci --prefix benchmarks/peers` when `node_modules`
is absent. Servers start under the normal scheduling policy (`scheduling.normal`),
whatever the generator's.

`ServerProcess` runs any of the four (psutil for CPU and memory of its process tree);
`OurServer` runs ours alone on port 0 (CPU from /proc, its log split at SIGTERM);
`running` holds a few of them up for a block of runs, then checks logs and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil  # type: ignore[import-untyped]

from harness import scheduling
from harness.report import error_lines
from harness.sampling import process_cpu_seconds

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
PEERS = REPO / "benchmarks" / "peers"
RESULTS = REPO / "benchmarks" / "results"


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
"""The servers compared one process each (`--servers` chooses among them)."""
HOCUSPOCUS_REDIS = ServerSpec(
    "hocuspocus-redis", "Hocuspocus + Redis", True, False, r"hocuspocus listening on"
)
"""Hocuspocus with its Redis extension: instances on one Redis share documents."""
NODE_SCRIPTS = {
    "node": "node_modules/@y/websocket-server/src/server.js",
    "hocuspocus": "hocuspocus_server.mjs",
    HOCUSPOCUS_REDIS.name: "hocuspocus_redis_server.mjs",
}
"""The Node servers' scripts, in benchmarks/peers."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def ensure_peers_installed(names: Iterable[str] | None = None) -> None:
    """`npm ci` the peers' packages when they are missing (the lock file pins them) and,
    if `names` are given, one of those servers runs on Node."""
    if names is not None and not {"node", "hocuspocus"} & set(names):
        return
    packages = ("@hocuspocus/server", "@hocuspocus/extension-redis", "@y/websocket-server")
    if all((PEERS / "node_modules" / package).is_dir() for package in packages):
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
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.extra = tuple(extra)
        """More arguments for `serve` (ours only: `--ours-args`, a cluster's)."""
        self.environment = dict(environment or {})
        """More environment (the Node servers': hocuspocus-redis's Redis settings)."""
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
            # `--ours-args --memory`: nothing stored (as the Node server), so no file;
            # a node of a cluster stores in its `--database-url`.
            elsewhere = {"--memory", "--database-url"} & set(self.extra)
            where = [] if elsewhere else ["--db", str(self.tmp / "ours.db")]
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
        env.update(HOST=HOST, PORT=str(port), **self.environment)
        return [shutil.which("node") or "node", NODE_SCRIPTS[name]], PEERS, env

    def display_command(self) -> str:
        argv, cwd, _ = self.command(1234)
        if argv[0] == sys.executable:
            argv = ["python", *argv[1:]]
        argv = [os.path.relpath(a, REPO) if a.startswith(str(REPO)) else a for a in argv]
        argv = [a.replace(str(self.tmp), "<tmp>") for a in argv]
        if self.spec.name in NODE_SCRIPTS:
            argv = ["node", *argv[1:]]
            env = "".join(f"{k}={shlex.quote(v)} " for k, v in self.environment.items())
            return f"HOST={HOST} PORT=<port> {env}" + shlex.join(argv) + " (in benchmarks/peers)"
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

    @property
    def ports(self) -> tuple[int, ...]:
        """Where clients connect: its one port (a cluster has several)."""
        return (self.port,)

    def cpu_readings(self) -> dict[str, float]:
        """CPU seconds so far by process: here, the server's alone (a cluster's nodes
        and the services they share are several)."""
        return {self.spec.name: self.cpu_seconds()}

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

    @property
    def unclean_exits(self) -> bool:
        """Whether it ever exited with a status other than 0 or SIGTERM's or SIGKILL's."""
        clean = (0, None, -signal.SIGTERM, -signal.SIGKILL)
        return any(rc not in clean for rc in self.returncodes)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def rotated(names: Sequence[str], attempt: int) -> list[str]:
    """`names` in the order of run `attempt` (from 1): each run starts one further on,
    so that no server always runs first."""
    shift = (attempt - 1) % len(names)
    return [*names[shift:], *names[:shift]]


def commands(names: Iterable[str], tmp: Path) -> dict[str, str]:
    """How each server is started, as a results header shows it."""
    return {name: ServerProcess(SPECS[name], tmp).display_command() for name in names}


def parse_servers(parser: argparse.ArgumentParser, text: str) -> tuple[str, ...]:
    """The comma-separated server names of `--servers`; a parser error for unknown ones."""
    servers = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in servers if s not in SPECS]
    if unknown or not servers:
        parser.error(f"unknown servers {unknown}: choose from {', '.join(SPECS)}")
    return servers


class Restartable(Protocol):
    """A server, or a cluster's nodes, as `idle_or_restart` reads them."""

    @property
    def alive(self) -> bool: ...
    def cpu_seconds(self) -> float: ...
    async def restart(self) -> None: ...


async def idle_or_restart(server: Restartable, limit: float = 10.0) -> bool:
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


class OurServer:
    """`python -m server serve` on 127.0.0.1, port 0, in its own process."""

    def __init__(self, log_path: Path, extra_args: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.returncode: int | None = None
        self.log_size_at_stop: int | None = None

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "server", "serve",
            "--host", HOST, "--port", "0", "--log-level", "WARNING", *self.extra_args,
        ]  # fmt: skip

    def display_command(self) -> str:
        return shlex.join(["python", *self.command[1:]])

    async def start(self, timeout: float) -> int:
        """Start the server and return its port once it prints that it listens."""
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *scheduling.normal(self.command),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        assert self.process.stdout is not None
        pattern = re.compile(rf"listening on ws://{re.escape(HOST)}:(\d+)")
        async with asyncio.timeout(timeout):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise RuntimeError(f"the server exited before listening: see {self.log_path}")
                match = pattern.search(line.decode(errors="replace"))
                if match:
                    self.port = int(match[1])
                    return self.port

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        assert self.process is not None
        return process_cpu_seconds(self.process.pid)

    async def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        if self.process is None or self.process.returncode is not None:
            return
        self.log_size_at_stop = self.log_path.stat().st_size
        self.process.send_signal(signal.SIGTERM)
        try:
            self.returncode = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            self.returncode = await self.process.wait()

    def log_lines(self) -> tuple[list[str], list[str]]:
        """What the server wrote on stderr (WARNING and above): before SIGTERM, and after."""
        data = self.log_path.read_bytes()
        cut = len(data) if self.log_size_at_stop is None else self.log_size_at_stop
        return (
            data[:cut].decode(errors="replace").splitlines(),
            data[cut:].decode(errors="replace").splitlines(),
        )


@contextlib.asynccontextmanager
async def running(
    servers: Mapping[str, OurServer], problems: list[str], label: str = ""
) -> AsyncIterator[None]:
    """Start every server (by name); stop them all on the way out. An error out of a
    start or out of the body ends the runs ("`label`aborted"), as a problem; so do
    errors in a server's log before its SIGTERM, and an exit status other than 0."""
    try:
        for server in servers.values():
            await server.start(timeout=30)
        yield
    except (RuntimeError, OSError, TimeoutError) as exc:
        problems.append(f"{label}aborted: {exc!r}")
    finally:
        for server in servers.values():
            await server.stop(timeout=15)
    for name, server in servers.items():
        which = f"the {name} server" if name else "the server"
        if errors := error_lines(server.log_lines()[0]):
            problems.append(f"{which} logged errors in the runs, the first: {errors[0][:160]!r}")
        if server.returncode not in (0, None):
            problems.append(f"{which} exited with status {server.returncode}")
