"""The runs of `server_fanout.py` at one size and awareness mode, against every server.

`size_and_mode` starts a fresh set of servers (ours under cProfile if asked), then
`interleaved` makes one run not counted against the first server when the generator
holds more clients than ever before (its first such run costs it twice the CPU of the
next ones, and would set that run's latency), then `runs` runs of each server,
interleaved and in a rotated order, each after the machine has been quiet
(`sampling.settle`). A server that does not converge gets no further runs at that size
and mode; one still busy 10 s after its run is restarted. What the runs leave for the
report (results, problems, notes, load averages, the servers and their logs) is kept
in a `Session`. `interleaved` takes any targets `run_once` takes (clusters too:
`harness/cluster.py`), started by the caller.
"""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.load import LoadOptions, RunResult, Size, Target, run_once
from harness.profiling import summarise_cprofile
from harness.provenance import load_average
from harness.report import say
from harness.sampling import settle
from harness.servers import SPECS, Restartable, ServerProcess, idle_or_restart, rotated


class SessionOptions(LoadOptions, Protocol):
    """What `size_and_mode` reads of a benchmark's options, beyond `run_once`'s."""

    @property
    def servers(self) -> tuple[str, ...]: ...
    @property
    def runs(self) -> int: ...
    @property
    def quiet_wait(self) -> float: ...
    @property
    def ours_args(self) -> tuple[str, ...]: ...


class Runnable(Target, Restartable, Protocol):
    """A target `interleaved` can also restart (a server, or a cluster's nodes)."""


@dataclass(slots=True)
class Session:
    """What the runs of one invocation leave for the report."""

    results: dict[tuple[str, bool, str], list[RunResult]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    extensions: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    servers: dict[str, ServerProcess] = field(default_factory=dict)
    most_clients: int = 0
    """The most clients the generator has held so far (see the warm-up run)."""


async def size_and_mode(
    session: Session, options: SessionOptions, size: Size, awareness: bool, tmp: Path
) -> None:
    """A fresh set of servers, the warm-up run if due, then the interleaved runs."""
    mode = f"awareness {'on' if awareness else 'off'}"
    session.loads.append(f"{load_average()} ({size.key}, {mode})")
    group = Path(tempfile.mkdtemp(dir=tmp))
    cprofile = None
    if options.profile is not None and options.profiler == "cprofile":
        options.profile.mkdir(parents=True, exist_ok=True)
        cprofile = (
            options.profile / f"ours-{size.key.replace('/', 'x')}-{mode.replace(' ', '-')}.prof"
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
    session.servers.update(servers)
    try:
        for server in servers.values():
            await server.start()
        await interleaved(session, servers, options, size, awareness)
    finally:
        problems, notes = session.problems, session.notes
        for name, server in servers.items():
            await server.stop()
            if server.cprofile is not None and server.cprofile.exists():
                server.cprofile.with_suffix(".md").write_text(summarise_cprofile(server.cprofile))
            session.logs[f"{name} ({size.key}, {mode})"] = server.log_text()
            if server.unclean_exits:
                problems.append(f"{name} ({size.label}): exit statuses {server.returncodes}")
            elif -signal.SIGKILL in server.returncodes:
                notes.append(f"{name} ({size.label}, {mode}): did not exit within 15 s of "
                             "SIGTERM and was killed")  # fmt: skip


async def interleaved(
    session: Session,
    servers: Mapping[str, Runnable],
    options: SessionOptions,
    size: Size,
    awareness: bool,
) -> None:
    """The generator's warm-up run if due, then `options.runs` runs of each server of
    `options.servers` (all started), interleaved; results go to `session`."""
    mode = f"awareness {'on' if awareness else 'off'}"
    failed: set[str] = set()
    problems, notes = session.problems, session.notes
    if size.clients > session.most_clients:
        # The generator's first run with more clients than ever before costs it about
        # twice the CPU of the next ones: it, not the server, would set that run's
        # latency, and it is always the first server's. One run, not counted, first.
        session.most_clients = size.clients
        leader = servers[options.servers[0]]
        await settle(list(servers.values()), options.quiet_wait)
        try:
            await run_once(leader, size, awareness, options, 0)
        except (RuntimeError, OSError, TimeoutError) as exc:
            say(f"{size.label}: warm-up run aborted: {exc!r}")
        await idle_or_restart(leader)
    for attempt in range(1, options.runs + 1):
        for name in rotated(options.servers, attempt):
            if name in failed:
                continue
            server = servers[name]
            await settle(list(servers.values()), options.quiet_wait)
            label = f"{size.label}, {mode}, {name} run {attempt}"
            try:
                result = await run_once(server, size, awareness, options, attempt)
            except (RuntimeError, OSError, TimeoutError) as exc:
                problems.append(f"{label}: aborted: {exc!r}")
                say(f"{label}: aborted: {exc!r}")
                failed.add(name)
                await server.restart()
                continue
            session.results.setdefault((size.key, awareness, name), []).append(result)
            session.extensions.setdefault(name, result.extensions)
            say(f"{label}: {result.summary()}")
            problems.extend(f"{label}: {p}" for p in result.problems)
            if not result.converged:
                failed.add(name)
                notes.append(f"{label}: did not converge ({result.why_not}); "
                             "no further runs of it at this size and mode")  # fmt: skip
            if await idle_or_restart(server):
                notes.append(f"{label}: still busy 10 s after the run; restarted")
