"""CPU and scheduler readings from /proc: the whole machine's, a process's and its
threads', a group of processes' (Redis, PostgreSQL), and the event-loop threads' time
on a CPU and waiting for one; waiting, on those readings, for the machine to be quiet
before a run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all cores spent not idle since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class ProcessTally:
    """CPU seconds used so far by the processes `wanted` picks (from its command name
    and command line), whoever started them: a service such as Redis or PostgreSQL.

    Read from /proc at each `seconds()`: a process that appeared since the last
    reading counts from its start, one that exited counts with its last reading (what
    it used after that is lost)."""

    def __init__(self, wanted: Callable[[str, str], bool]) -> None:
        self.wanted = wanted
        self._last: dict[int, float] = {}

    def seconds(self) -> float:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            with contextlib.suppress(OSError, ValueError, IndexError):
                if pid not in self._last:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    if not self.wanted(comm, command.decode(errors="replace")):
                        continue
                self._last[pid] = process_cpu_seconds(pid)
        return sum(self._last.values())


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


class SchedProbe:
    """On-CPU and run-queue-wait nanoseconds of the server's and our main threads.

    Read from /proc/<pid>/schedstat (the thread whose id is the pid: the one running
    the event loop), at nanosecond resolution and for about a microsecond per read.
    """

    def __init__(self, server_pid: int) -> None:
        self._server = os.open(f"/proc/{server_pid}/schedstat", os.O_RDONLY)
        self._own = os.open(f"/proc/{os.getpid()}/schedstat", os.O_RDONLY)

    def read(self) -> tuple[int, int, int, int]:
        """(server on CPU, server waiting for a CPU, ours on CPU, ours waiting), in ns."""
        server = os.pread(self._server, 128, 0).split()
        own = os.pread(self._own, 128, 0).split()
        return int(server[0]), int(server[1]), int(own[0]), int(own[1])

    def close(self) -> None:
        os.close(self._server)
        os.close(self._own)


def loop_schedstat() -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of this process's main thread,
    the one running the event loop (/proc/self/schedstat; zeros where there is none)."""
    try:
        on_cpu, waiting, *_ = Path("/proc/self/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0, 0
    return int(on_cpu), int(waiting)


class Busy(Protocol):
    """A server under test, as `settle` reads it."""

    def cpu_seconds(self) -> float: ...


async def settle(servers: Iterable[Busy], limit: float) -> None:
    """Wait (up to `limit` s) until the machine is quiet: the servers under a tenth of
    a core together and everything else (other processes included) under a quarter
    of one, over half a second. One run's aftermath then does not load the next, and
    a run does not start while something else on the machine is busy; if it never
    gets quiet, the run goes ahead and the diagnostics show the other load."""
    servers = list(servers)
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        server0, busy0 = sum(s.cpu_seconds() for s in servers), machine_busy_seconds()
        own0 = time.process_time()
        await asyncio.sleep(0.5)
        server = sum(s.cpu_seconds() for s in servers) - server0
        other = machine_busy_seconds() - busy0 - server - (time.process_time() - own0)
        if server < 0.05 and other < 0.125:
            return
