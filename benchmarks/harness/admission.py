"""Connection admission through the real server, with and without a token and grants.

Two servers of ours side by side (`python -m server serve --db <tmp>`): one in the
open mode, one with `--secret` and the document's grants (`throughput.GRANTS`)
stored by `python -m server grants set`. Against each in turn, `admission_once`
opens a connection, runs the y-websocket sync as an empty document and closes it,
one after the other for `duration` seconds, while an anchor connection keeps the
room loaded (the figure is admission, not loading): connections per second and the
server's CPU per connection. `checks` times, in this process and for scale, what
the token and the grants cost alone: `server.auth.verify` and
`collab_engine.permissions.decide`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass
from pathlib import Path

from pycrdt import Doc

from collab_engine.permissions import Role, decide
from harness.clients import open_client, sync
from harness.report import say, us
from harness.sampling import machine_busy_seconds, settle
from harness.servers import HOST, REPO, OurServer, running
from harness.stats import median
from harness.throughput import GRANTS
from server.auth import mint, verify

SECRET = "permission-checks-benchmark-secret-0123456789"
DOCUMENT = "bench-admission"


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    mode: str
    connections: int
    rate: float
    server_cpu_per_connection: float
    other_cpu_share: float


async def admission_once(
    server: OurServer, mode: str, token: str | None, duration: float
) -> AdmissionResult:
    """Connect, sync and close, one connection after the other, for `duration` s."""
    query = "" if token is None else f"?token={token}"
    url = f"ws://{HOST}:{server.port}/{DOCUMENT}{query}"
    anchor = await open_client(url, compression=None, timeout=10)
    await sync(anchor, Doc())
    try:
        count = 0
        server0, busy0, own0 = server.cpu_seconds(), machine_busy_seconds(), time.process_time()
        start = time.perf_counter()
        while time.perf_counter() - start < duration:
            ws = await open_client(url, compression=None, timeout=10)
            await asyncio.wait_for(sync(ws, Doc()), 10)
            await ws.close()
            count += 1
        elapsed = time.perf_counter() - start
        server_cpu = server.cpu_seconds() - server0
        other = machine_busy_seconds() - busy0 - server_cpu - (time.process_time() - own0)
    finally:
        await anchor.close()
    return AdmissionResult(
        mode=mode,
        connections=count,
        rate=count / elapsed,
        server_cpu_per_connection=server_cpu / count,
        other_cpu_share=max(0.0, other) / elapsed,
    )


def checks() -> tuple[float, float]:
    """Seconds per `verify` of a token, and per `decide` with the stored grants."""
    token = mint(SECRET, user="alice", role=Role.EDITOR)
    credentials = verify(SECRET, token)
    rounds = 2000
    per_verify = min(timeit.repeat(lambda: verify(SECRET, token), number=rounds, repeat=5)) / rounds
    per_decide = (
        min(timeit.repeat(lambda: decide(credentials, "doc", GRANTS), number=rounds, repeat=5))
        / rounds
    )
    return per_verify, per_decide


async def store_grants(db: str, problems: list[str]) -> None:
    """The document's grants, stored in `db` as an administrator would."""
    for grant in GRANTS:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "grants", "set", DOCUMENT,
            grant.principal, str(grant.role), "--db", db,
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if await process.wait() != 0:
            problems.append(f"could not store the grant {grant} for the admission run")


async def admission(
    runs: int, duration: float, quiet_wait: float, problems: list[str]
) -> tuple[dict[str, list[AdmissionResult]], list[str]]:
    """`runs` runs against both servers, interleaved, each after the machine is quiet
    (up to `quiet_wait` s): the results by server, and how each was started."""
    results: dict[str, list[AdmissionResult]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        secret_db = str(Path(tmp) / "secret.db")
        await store_grants(secret_db, problems)
        servers = {
            "open mode": OurServer(Path(tmp) / "open.log", ["--db", str(Path(tmp) / "open.db")]),
            "token + grants": OurServer(
                Path(tmp) / "secret.log", ["--db", secret_db, "--secret", SECRET]
            ),
        }
        tokens = {"open mode": None, "token + grants": mint(SECRET, user="alice")}
        commands = [
            f"{mode}: `{server.display_command().replace(SECRET, '<secret>')}`"
            for mode, server in servers.items()
        ]
        async with running(servers, problems, "admission "):
            for run in range(1, runs + 1):
                for mode, server in servers.items():
                    await settle(servers.values(), quiet_wait)
                    result = await admission_once(server, mode, tokens[mode], duration)
                    results.setdefault(mode, []).append(result)
                    say(
                        f"admission {mode} run {run}: {result.rate:,.0f} connections/s, "
                        f"server CPU {result.server_cpu_per_connection * 1000:.2f} ms/connection"
                    )
    return results, commands


def admission_table(
    results: dict[str, list[AdmissionResult]], per_verify: float, per_decide: float
) -> str:
    lines = [
        "| server | connections/s (connect + sync + close, one at a time) "
        "| server CPU per connection (ms) | per run, in order (ms) | other CPU during runs |",
        "|---|---:|---:|---|---:|",
    ]
    for mode, runs in results.items():
        lines.append(
            f"| {mode} | {median([r.rate for r in runs]):,.0f} "
            f"| {median([r.server_cpu_per_connection for r in runs]) * 1000:.2f} "
            f"| {', '.join(f'{r.server_cpu_per_connection * 1000:.2f}' for r in runs)} "
            f"| {median([r.other_cpu_share for r in runs]) * 100:.0f} % |"
        )
    lines += [
        "",
        f"In this process, for scale: `verify` of a token {us(per_verify)} µs, `decide` with "
        f"three stored grants {us(per_decide)} µs (best of 5 x 2,000 calls).",
    ]
    return "\n".join(lines)
