"""Durability of the `serve` command: what was acknowledged survives a crash.

Each test runs the server as a separate process on a SQLite file in `tmp_path`,
streams distinct edits into one document from writer clients (each edit sets a key
`w{writer}-{i}` of the Map "m" in a transaction of its own, sent as one update
message), and ends the server in the middle of the stream: by SIGKILL (nothing is
drained: only acknowledged edits are promised) or by SIGTERM (everything the
server accepted is written before it exits).

A writer knows exactly which of its edits are acknowledged: edit i went out as its
connection's k-th update message (the sync step 2 of the handshake is the first),
and the server's `Persisted(count)` says that the first `count` are durable.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from pycrdt import Doc, Map
from websockets.exceptions import ConnectionClosed

from collab_engine.engine import rebuild
from storage import SQLStore, sqlite_url
from tests.server.test_cli import rest_of_output, start_server
from tests.yclient import YClient, yclient

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

ROOM = "durability/doc"
WRITERS = 2
ACKED_BEFORE_THE_END = 200  # acknowledged update messages per writer before the server is ended
WINDOW = 300  # update messages a writer may have unacknowledged before it waits for acks
MAX_EDITS = 20_000  # a bound on each stream, far above what a test writes


@dataclass
class Writer:
    """One writer client and the record of its edits."""

    index: int
    client: YClient
    made: list[str] = field(default_factory=list)
    """Every key this writer set in its document, in order (sent or not)."""
    sent: list[tuple[str, int]] = field(default_factory=list)
    """(key, k): the edit went out as the k-th update message of the connection."""
    running: bool = False
    finished: bool = False
    """The stream ran to MAX_EDITS without the connection ending."""

    @property
    def doc(self) -> Doc[Any]:
        return self.client.doc

    def acked(self) -> set[str]:
        """The keys whose update message the server acknowledged as durable."""
        return {key for key, k in self.sent if k <= self.client.persisted}

    def has_acked(self, count: int) -> bool:
        return self.client.persisted >= count

    def room_for(self, number: int) -> bool:
        """Whether the window leaves room after update message `number` (or the
        connection has ended)."""
        return self.client.closed.is_set() or number - self.client.persisted < WINDOW

    async def stream(self) -> None:
        """Set one new key per transaction and send it, until the connection ends."""
        m = self.doc.get("m", type=Map)
        self.running = True
        try:
            for i in range(MAX_EDITS):
                if self.client.closed.is_set():
                    return
                key = f"w{self.index}-{i}"
                m[key] = i
                self.made.append(key)
                number = self.client.updates_sent + 1
                try:
                    await self.client.flush()
                except ConnectionClosed:
                    return
                # One transaction, one update message: the count identifies the edit.
                assert self.client.updates_sent == number
                self.sent.append((key, number))
                # As fast as the server takes them, with at most WINDOW edits in flight:
                # whenever the server is ended, many edits are on their way.
                if number - self.client.persisted >= WINDOW:
                    await self.client.wait_for(partial(self.room_for, number), timeout=20)
                else:
                    await anyio.lowlevel.checkpoint()
            self.finished = True
        finally:
            self.running = False


def keys_of(doc: Doc[Any]) -> dict[str, int]:
    """The Map "m" of `doc`, its values as ints (pycrdt may read numbers as floats)."""
    return {key: int(value) for key, value in doc.get("m", type=Map).items()}


def expected(writers: list[Writer]) -> dict[str, int]:
    return {key: int(key.rsplit("-", 1)[1]) for writer in writers for key in writer.made}


@asynccontextmanager
async def server_process(db: Path) -> AsyncIterator[tuple[Process, str]]:
    """`serve --db db` as a separate process; yields it and its base URL. Killed at the
    end if the test has not ended it."""
    process, url = await start_server("--db", str(db), "--log-level", "WARNING")
    try:
        yield process, url
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.move_on_after(10, shield=True):
                await process.wait()
        await process.aclose()


async def connect_writers(stack: AsyncExitStack, url: str) -> list[Writer]:
    writers = []
    for index in range(WRITERS):
        client = await stack.enter_async_context(yclient(url, ROOM))
        await client.request_persisted()
        writers.append(Writer(index, client))
    return writers


async def wait_acked(writers: list[Writer], count: int, timeout: float = 20.0) -> None:
    """Wait until every writer has `count` update messages acknowledged."""
    with anyio.fail_after(timeout):
        for writer in writers:
            await writer.client.wait_for(partial(writer.has_acked, count), timeout)


async def wait_closed(clients: list[YClient], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        for client in clients:
            await client.closed.wait()


def assert_streaming(writers: list[Writer]) -> None:
    """Every writer is still in its stream: the server is ended mid-stream."""
    for writer in writers:
        assert writer.running and not writer.finished, f"writer {writer.index} was not streaming"


async def test_acknowledged_edits_survive_sigkill(tmp_path: Path) -> None:
    """SIGKILL in the middle of a stream of edits: after a restart on the same file
    every acknowledged edit is there; the writers' reconnection then brings the rest."""
    db = tmp_path / "collab.db"
    with anyio.fail_after(60):
        async with server_process(db) as (process, url):
            async with AsyncExitStack() as stack:
                writers = await connect_writers(stack, url)
                async with anyio.create_task_group() as tg:
                    for writer in writers:
                        tg.start_soon(writer.stream)
                    await wait_acked(writers, ACKED_BEFORE_THE_END)
                    assert_streaming(writers)
                    process.kill()
                    assert await process.wait() == -9
                    # The streams end as their connections drop.
                    await wait_closed([writer.client for writer in writers])

        acked = {writer.index: writer.acked() for writer in writers}
        for writer in writers:
            assert len(acked[writer.index]) >= ACKED_BEFORE_THE_END - 1  # less the handshake's
            # Killed mid-stream: the writer holds edits the server never acknowledged.
            assert len(writer.made) > len(acked[writer.index]), writer.index
        everything = expected(writers)

        async with server_process(db) as (process, url):
            async with yclient(url, ROOM) as fresh:
                seen = keys_of(fresh.doc)
            for writer in writers:
                missing = acked[writer.index] - seen.keys()
                assert not missing, f"writer {writer.index}: {len(missing)} acknowledged edits lost"
            assert seen.items() <= everything.items(), (
                "the restarted server holds edits nobody made"
            )

            # Each writer comes back with its document: the handshake sends what the
            # server is missing, and the server acknowledges it as stored.
            for writer in writers:
                async with yclient(url, ROOM, doc=writer.doc) as again:
                    await again.wait_for(lambda: again.updates_sent >= 1)
                    await again.request_persisted()
                    await again.wait_persisted(timeout=10)
            async with yclient(url, ROOM) as fresh:
                assert keys_of(fresh.doc) == everything

            process.terminate()
            with anyio.fail_after(20):
                assert await process.wait() == 0
            output = await rest_of_output(process)
            assert "Traceback" not in output and "ERROR" not in output, output


async def test_sigterm_writes_everything_accepted(tmp_path: Path) -> None:
    """SIGTERM in the middle of a stream: the server exits 0, and the file holds every
    edit it broadcast (an observer saw them) and every edit it acknowledged."""
    db = tmp_path / "collab.db"
    with anyio.fail_after(60):
        async with server_process(db) as (process, url):
            async with AsyncExitStack() as stack:
                observer = await stack.enter_async_context(yclient(url, ROOM))
                writers = await connect_writers(stack, url)
                async with anyio.create_task_group() as tg:
                    for writer in writers:
                        tg.start_soon(writer.stream)
                    await wait_acked(writers, ACKED_BEFORE_THE_END)
                    assert_streaming(writers)
                    process.terminate()
                    with anyio.fail_after(20):
                        assert await process.wait() == 0
                    await wait_closed([observer, *(writer.client for writer in writers)])
                assert observer.close_code == 1001
            output = await rest_of_output(process)
            assert "Traceback" not in output and "ERROR" not in output, output

        # The server is gone: read the file itself.
        store = await SQLStore.connect(sqlite_url(str(db)))
        try:
            stored = await store.load(ROOM)
        finally:
            await store.aclose()
    kept = keys_of(rebuild(ROOM, stored))
    observed = keys_of(observer.doc)
    assert observed, "the observer saw no edit"
    assert observed.keys() - kept.keys() == set(), "edits the server broadcast were not stored"
    assert observed.items() <= kept.items()
    for writer in writers:
        acked = writer.acked()
        assert len(acked) >= ACKED_BEFORE_THE_END - 1
        assert acked - kept.keys() == set(), f"writer {writer.index}: acknowledged edits lost"
    assert kept.items() <= expected(writers).items()


async def test_db_in_missing_directory_is_a_one_line_error(tmp_path: Path) -> None:
    """`serve --db` naming a file in a directory that does not exist exits 1 with one
    line on stderr, and no traceback."""
    db = tmp_path / "no" / "such" / "dir" / "collab.db"
    with anyio.fail_after(30):
        result = await anyio.run_process(
            [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", "0",
             "--db", str(db)],
            check=False,
        )  # fmt: skip
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1, (stdout, stderr)
    assert "listening on" not in stdout
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("collab-engine: "), stderr
    assert not db.parent.exists()
