"""The `collab-engine serve` command as a user runs it: a separate process, signals."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pycrdt import Text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from collab_engine import protocol
from tests.conftest import current_transport
from tests.timing import eventually
from tests.yclient import yclient

pytestmark = pytest.mark.anyio


async def start_server(*args: str, cwd: Path | None = None) -> tuple[anyio.abc.Process, str]:
    """Run `collab-engine serve` on a free port (in `cwd`, if given); return the process
    and its ws:// URL.

    Without `--db`, `--database-url` or `--memory` in `args`, documents go to a SQLite
    file in a fresh temporary directory (never to ./collab.db of the test run).
    """
    if not {"--db", "--database-url", "--memory"} & set(args):
        directory = tempfile.mkdtemp(prefix="collab-cli-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        args = ("--db", str(Path(directory) / "collab.db"), *args)
    if current_transport() == "asgi":
        args = ("--asgi", *args)
    process = await anyio.open_process(
        [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
    )
    assert process.stdout is not None
    buffer = b""
    with anyio.fail_after(20):
        while b"listening on " not in buffer or not buffer.endswith(b"\n"):
            buffer += await process.stdout.receive()
    line = next(text for text in buffer.decode().splitlines() if "listening on " in text)
    return process, line.split("listening on ")[1].strip()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_syncs_and_stops_cleanly_on_signal(signum: signal.Signals) -> None:
    """The CLI serves clients, and on SIGTERM/SIGINT closes them with 1001 and exits 0."""
    process, url = await start_server("--log-level", "WARNING")
    try:
        async with yclient(url, "cli/doc") as a, yclient(url, "cli/doc") as b:
            a.doc.get("t", type=Text).insert(0, "via the cli")
            await a.flush()
            await b.wait_for(lambda: str(b.doc.get("t", type=Text)) == "via the cli")
            process.send_signal(signum)
            with anyio.fail_after(10):
                await a.closed.wait()
                await b.closed.wait()
            assert (a.close_code, b.close_code) == (1001, 1001)
        with anyio.fail_after(10):
            assert await process.wait() == 0
        output = await rest_of_output(process)
        # Shutdown is clean: no traceback, even for connections closed moments before.
        assert "Traceback" not in output and "ERROR" not in output, output
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()


async def stop(process: anyio.abc.Process) -> int:
    """SIGTERM `process`, wait for it (10 s at most) and return its exit status."""
    try:
        process.terminate()
        with anyio.fail_after(10):
            return await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()


async def rest_of_output(process: anyio.abc.Process) -> str:
    assert process.stdout is not None
    with anyio.fail_after(5):
        return b"".join([chunk async for chunk in process.stdout]).decode()


async def test_cli_limits_are_applied() -> None:
    """--max-frame-size and --max-name-length given on the command line are enforced."""
    process, url = await start_server(
        "--max-frame-size", "1000", "--max-name-length", "8", "--log-level", "WARNING"
    )
    try:
        async with connect(f"{url}/123456789") as ws:
            with anyio.fail_after(5), pytest.raises(ConnectionClosed):
                async for _ in ws:
                    pass
        assert ws.close_code == 4400
        async with connect(f"{url}/short") as ws:
            await ws.send(protocol.encode_sync_update(b"\x00" * 1500))
            with anyio.fail_after(5), pytest.raises(ConnectionClosed):
                async for _ in ws:
                    pass
        assert ws.close_code == 1009
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.wait()
        await process.aclose()


async def test_cli_lock_limits_are_applied() -> None:
    """The lock flags reach the rooms: key and section lengths, leases per user and per
    document, the summary's size (a lease that does not fit is counted in "more")."""
    process, url = await start_server(
        "--memory",
        *("--lock-max-key-length", "4", "--lock-max-section-length", "6"),
        *("--locks-per-user", "2", "--locks-per-document", "3"),
        *("--lock-summary-size", "120", "--lock-mirror-interval", "0"),
        "--log-level",
        "WARNING",
    )

    async def request(ws: ClientConnection, **body: object) -> dict[str, Any]:
        await ws.send(protocol.encode_lock_request(json.dumps(body)))
        async for frame in ws:
            assert isinstance(frame, bytes)
            message = protocol.decode(frame)
            if isinstance(message, protocol.LockReply):
                reply: dict[str, Any] = json.loads(message.body)
                return reply
        raise AssertionError("closed without a reply")

    try:
        with anyio.fail_after(20):
            async with connect(f"{url}/flags") as ann, connect(f"{url}/flags") as bob:
                key = await request(ann, op="acquire", section=["abcde"])
                assert key["error"] == "a section's key is at most 4 bytes"
                whole = await request(ann, op="acquire", section=["abcd", "efg"])
                assert whole["error"] == "a section's keys are at most 6 bytes in all"
                assert (await request(ann, op="acquire", section=["a"]))["ok"]
                assert (await request(ann, op="acquire", section=["b"]))["ok"]
                user = await request(ann, op="acquire", section=["c"])
                assert user["ok"] is False and "holds 2 locks" in user["error"]
                assert (await request(bob, op="acquire", section=["c"]))["ok"]
                full = await request(bob, op="acquire", section=["d"])
                assert full["error"] == "the document has 3 locks, the most it may have"
            async with connect(f"{url}/flags") as joiner:
                async for frame in joiner:
                    assert isinstance(frame, bytes)
                    message = protocol.decode(frame)
                    if isinstance(message, protocol.AwarenessUpdate):
                        break
                [server] = [
                    json.loads(e.state)["server"]
                    for e in message.entries
                    if e.state is not None and "server" in json.loads(e.state)
                ]
                assert len(server["locks"]) < 3 and len(server["locks"]) + server["more"] == 3
    finally:
        await stop(process)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_serve_runs_on_either_event_loop(loop: str) -> None:
    """`--loop` picks the event loop; both serve and sync."""
    process, url = await start_server("--loop", loop, "--log-level", "WARNING")
    try:
        async with yclient(url, "loop/doc") as a, yclient(url, "loop/doc") as b:
            a.doc.get("t", type=Text).insert(0, loop)
            await a.flush()
            await b.wait_for(lambda: str(b.doc.get("t", type=Text)) == loop)
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.wait()
        await process.aclose()


async def test_serve_in_memory_keeps_documents_while_used_and_stores_nothing(
    tmp_path: Path,
) -> None:
    """`--memory`: clients sync as usual, no database file is created, and a document
    is forgotten once its last client has left and the unload grace has passed."""
    process, url = await start_server(
        "--memory", "--unload-grace", "0.2", "--log-level", "WARNING", cwd=tmp_path
    )
    try:
        async with yclient(url, "mem") as a:
            a.doc.get("t", type=Text).insert(0, "in memory")
            await a.flush()
            async with yclient(url, "mem") as b:
                await b.wait_for(lambda: str(b.doc.get("t", type=Text)) == "in memory")
        health = url.replace("ws://", "http://") + "/healthz"

        async def unloaded() -> bool:
            async with httpx.AsyncClient() as http:
                return bool((await http.get(health)).json()["rooms"] == 0)

        await eventually(unloaded, what="the room unloaded after its grace")
        async with yclient(url, "mem") as c:
            await c.round_trip()
            assert str(c.doc.get("t", type=Text)) == ""
        assert os.listdir(tmp_path) == []
        assert await stop(process) == 0
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()


async def test_a_port_in_use_fails_in_one_line_and_creates_no_database(tmp_path: Path) -> None:
    """`serve` on a port another socket listens on: exit status 1, one line on stderr
    that names the address, and no database file left behind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        db = tmp_path / "x.db"
        with anyio.fail_after(20):
            result = await anyio.run_process(
                [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1",
                 "--port", str(port), "--db", str(db)],
                check=False,
            )  # fmt: skip
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1, result.stderr.decode()
    assert lines == [f"collab-engine: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert not db.exists()
    assert os.listdir(tmp_path) == []
