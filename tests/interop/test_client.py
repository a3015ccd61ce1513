"""Interop: the Python client (`collab_engine.client`) with the real npm y-websocket.

* Against our server (in-process, `running_server()`): two Python sessions and one
  Node client (`client.mjs`: the npm `yjs` + `y-websocket` WebsocketProvider) edit
  one document at the same time and converge.
* Against the Node y-websocket server (npm `@y/websocket-server`, its `src/server.js`
  run as a subprocess with HOST/PORT, documents in memory only): the Python session
  syncs both ways with a Node client, a later session gets the whole document,
  `flushed()` says `NotSupported` (that server does not acknowledge) rather than
  hang, and after the server restarts empty the session reconnects by itself and
  its handshake uploads its whole document again.

Node >= 20 and `npm ci --prefix tests/interop` are required: without them these
tests fail (they are not skipped).
"""

from __future__ import annotations

import os
import random
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import anyio
import pytest
from anyio.abc import ByteReceiveStream, Process
from pycrdt import Map, Text

from collab_engine.client import Backoff, NotSupported, Session, State, connect
from tests.conftest import running_server
from tests.interop.test_yjs_client import (
    INTEROP_DIR,
    _normalise,
    node_client,
    node_executable,
    server_map,
    server_text,
    wait_server,
)
from tests.timing import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.timeout(60)]

SERVER_PACKAGE = INTEROP_DIR / "node_modules" / "@y" / "websocket-server"
SERVER_SCRIPT = SERVER_PACKAGE / "src" / "server.js"
"""The Node y-websocket server: the `y-websocket` bin of `@y/websocket-server`."""

FAST = Backoff(initial=0.05, maximum=0.5)
"""Reconnect quickly: the tests wait for reconnections."""

TOKEN = re.compile(r"<[^<>]*>")


# -- the Python side ----------------------------------------------------------------------


def text_of(session: Session) -> str:
    # The same root names as client.mjs: Y.Text "text" and Y.Map "map".
    return str(session.doc.get("text", type=Text))


def map_of(session: Session) -> dict[str, Any]:
    return _normalise(session.doc.get("map", type=Map).to_py() or {})  # type: ignore[no-any-return]


def has_keys(session: Session, keys: list[str]) -> bool:
    return set(keys) <= set(map_of(session))


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait until `predicate()` holds, or fail saying `what` (`tests.timing.eventually`)."""
    await eventually(predicate, what=what)


async def insert_tokens(
    session: Session, tag: str, count: int, seed: int, max_pause: float = 0.005
) -> int:
    """What client.mjs's `insertTokens` does, in Python: `count` tokens `<TAG.i>`, each
    at a random token boundary of the text, with the map keys `TAG.i` and
    `shared<i % 3>`; the three in one transaction every third edit; `done:TAG` last.
    Returns how many remote tokens arrived while editing (concurrency, seen)."""
    rnd = random.Random(seed)
    text = session.doc.get("text", type=Text)
    shared = session.doc.get("map", type=Map)
    remote_seen = 0

    def edit(i: int) -> None:
        current = str(text)
        boundaries = [0] + [j + 1 for j, char in enumerate(current) if char == ">"]
        text.insert(rnd.choice(boundaries), f"<{tag}.{i}>")
        shared[f"{tag}.{i}"] = i
        shared[f"shared{i % 3}"] = f"{tag}.{i}"

    for i in range(count):
        before = {t for t in TOKEN.findall(str(text)) if not t.startswith(f"<{tag}.")}
        if i % 3 == 0:
            with session.doc.transaction():
                edit(i)
        else:
            edit(i)
        await anyio.sleep(rnd.uniform(0, max_pause))
        after = {t for t in TOKEN.findall(str(text)) if not t.startswith(f"<{tag}.")}
        remote_seen += len(after - before)
    shared[f"done:{tag}"] = count
    return remote_seen


# -- the Node y-websocket server ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NodeServer:
    """A running `@y/websocket-server` process (documents in memory only)."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.output = bytearray()

    async def _drain(self, stream: ByteReceiveStream | None) -> None:
        assert stream is not None
        try:
            async for chunk in stream:
                self.output += chunk
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def describe(self) -> str:
        output = self.output.decode(errors="replace").strip()
        return (
            f"node y-websocket server on port {self.port} (exit status "
            f"{self.process.returncode}); output: {output[-4000:] or '<empty>'}"
        )

    async def _listening(self, timeout: float = 10.0) -> None:
        """Wait until it says it listens and a TCP connection is accepted."""
        try:
            with anyio.fail_after(timeout):
                while b"running at" not in self.output:
                    if self.process.returncode is not None:
                        raise AssertionError(f"{self.describe()}: ended at start")
                    await anyio.sleep(0.02)
                stream = await anyio.connect_tcp("127.0.0.1", self.port)
                await stream.aclose()
        except TimeoutError:
            raise AssertionError(f"{self.describe()}: not listening within {timeout} s") from None

    async def kill(self) -> None:
        """SIGKILL (a crash: its documents are gone), and wait until it is gone."""
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.process.kill()
            with anyio.move_on_after(5):
                await self.process.wait()


@asynccontextmanager
async def node_websocket_server(port: int) -> AsyncIterator[NodeServer]:
    """The Node y-websocket server on 127.0.0.1:`port`, listening; killed on exit."""
    node = node_executable()
    if not SERVER_SCRIPT.is_file():
        pytest.fail(
            f"{SERVER_SCRIPT.relative_to(INTEROP_DIR)} is missing: "
            "run `npm ci --prefix tests/interop` first",
            pytrace=False,
        )
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port)}
    process = await anyio.open_process([node, str(SERVER_SCRIPT)], cwd=INTEROP_DIR, env=env)
    server = NodeServer(process, port)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server._drain, process.stdout)
            tg.start_soon(server._drain, process.stderr)
            try:
                await server._listening()
                yield server
            finally:
                await server.kill()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


# -- the scenarios ------------------------------------------------------------------------


async def test_two_python_clients_and_a_node_client_converge() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/python-client/converge"
    count = 30
    tags = ["py1", "py2", "node"]
    done = [f"done:{tag}" for tag in tags]
    with anyio.fail_after(40):
        async with (
            running_server() as (app, url),
            connect(url, room, backoff=FAST) as py1,
            connect(url, room, backoff=FAST) as py2,
            node_client(url, room, label="node") as node,
        ):
            for session in (py1, py2):
                await session.synced(timeout=10)
            # All three edit at once, each edit at a position chosen in its own view.
            remote_seen: dict[str, int] = {}

            async def python_edits(session: Session, tag: str, seed: int) -> None:
                remote_seen[tag] = await insert_tokens(session, tag, count, seed, max_pause=0.01)

            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    partial(
                        node.request,
                        "insertTokens",
                        count=count,
                        seed=11,
                        tag="node",
                        maxPauseMs=10,
                    )
                )
                tg.start_soon(python_edits, py1, "py1", 22)
                tg.start_soon(python_edits, py2, "py2", 33)

            for session in (py1, py2):
                await session.flushed(timeout=10)
            # Updates travel in order: whoever has every done key has everything.
            await node.wait({"mapHas": done})
            for session in (py1, py2):
                await until(partial(has_keys, session, done), "done keys in Python")
            await wait_server(app, room, lambda: set(done) <= set(server_map(app, room)))

            state = await node.state()
            text = state["text"]
            assert text_of(py1) == text
            assert text_of(py2) == text
            assert server_text(app, room) == text
            expected = _normalise(state["map"])
            assert map_of(py1) == expected
            assert map_of(py2) == expected
            assert server_map(app, room) == expected

            # Every token of every client is there, whole, once; nothing else is.
            tokens = TOKEN.findall(text)
            assert "".join(tokens) == text
            assert sorted(tokens) == sorted(f"<{tag}.{i}>" for tag in tags for i in range(count))
            for tag in tags:
                assert expected[f"done:{tag}"] == count
                for i in range(count):
                    assert expected[f"{tag}.{i}"] == i
            assert {expected[f"shared{k}"].split(".")[0] for k in range(3)} <= set(tags)
            # The edits really were concurrent: remote tokens arrived while editing.
            assert all(seen > 0 for seen in remote_seen.values()), remote_seen


async def test_the_client_syncs_with_the_node_y_websocket_server() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/python-client/node-server"
    with anyio.fail_after(40):
        async with node_websocket_server(free_port()) as server:
            async with connect(server.url, room, backoff=FAST, ack_timeout=1.0) as first:
                await first.synced(timeout=10)
                first.doc.get("text", type=Text).insert(0, "written in Python")
                first.doc.get("map", type=Map)["from-python"] = {"list": [1, "two"], "ok": True}
                first.set_awareness({"user": {"name": "python"}})

                async with node_client(server.url, room, label="node") as node:
                    await node.wait(
                        {
                            "text": "written in Python",
                            "mapHas": ["from-python"],
                            "users": ["python"],
                        }
                    )
                    assert _normalise((await node.state())["map"]) == map_of(first)
                    await node.request("insert", index=-1, text="; and in Node")
                    await node.request("mapSet", key="from-node", value=42)
                    await node.request("setUser", user={"name": "node"})
                    await until(
                        lambda: text_of(first) == "written in Python; and in Node",
                        "Node's insert in the Python session",
                    )
                    await until(
                        lambda: map_of(first).get("from-node") == 42,
                        "Node's map key in the Python session",
                    )
                    await until(
                        lambda: {"user": {"name": "node"}} in first.awareness.values(),
                        "Node's awareness state in the Python session",
                    )

                # That server does not acknowledge storage: flushed() says so, in about
                # ack_timeout, instead of waiting forever.
                with anyio.fail_after(4), pytest.raises(NotSupported):
                    await first.flushed()
                assert first.state is State.SYNCED

                # A session that comes later gets the whole document in its handshake.
                async with connect(server.url, room, backoff=FAST, ack_timeout=1.0) as second:
                    await second.synced(timeout=10)
                    assert text_of(second) == "written in Python; and in Node"
                    assert map_of(second) == map_of(first)
                    assert map_of(second)["from-python"] == {"list": [1, "two"], "ok": True}
                    assert map_of(second)["from-node"] == 42
                    # And its edits reach the first one through that server.
                    second.doc.get("text", type=Text).insert(0, "> ")
                    await until(
                        lambda: text_of(first) == "> written in Python; and in Node",
                        "the second session's insert in the first",
                    )
                assert first.connections == 1


async def test_the_client_reconnects_to_the_node_server_after_it_restarts() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/python-client/restart"
    port = free_port()
    with anyio.fail_after(40):
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(node_websocket_server(port))
            session = await stack.enter_async_context(connect(first.url, room, backoff=FAST))
            await session.synced(timeout=10)
            text = session.doc.get("text", type=Text)
            text.insert(0, "before the restart")
            async with node_client(first.url, room, label="before") as node:
                await node.wait({"text": "before the restart"})
            # (That Node client is gone: only the Python session holds the document now.)

            states: list[State] = [session.state]

            async def record() -> None:
                while True:
                    if session.state is not states[-1]:
                        states.append(session.state)
                    await anyio.sleep(0.002)

            async with anyio.create_task_group() as tg:
                tg.start_soon(record)
                await first.kill()  # its documents were in memory: gone
                await until(lambda: session.state is State.OFFLINE, "the session offline")
                text.insert(len(text), "; and while it was down")  # kept, sent later

                async with node_websocket_server(port) as second:
                    await session.synced(timeout=10)
                    assert session.connections == 2
                    expected = "before the restart; and while it was down"
                    # Its handshake (step 2 in answer to the new server's empty step 1)
                    # gave the new server the whole document.
                    async with node_client(second.url, room, label="after") as node:
                        await node.wait({"text": expected})
                        await node.request("insert", index=0, text="after: ")
                        await until(
                            lambda: text_of(session) == "after: " + expected,
                            "the new Node client's insert in the Python session",
                        )
                tg.cancel_scope.cancel()
            assert states[0] is State.SYNCED
            assert State.OFFLINE in states
            assert states.index(State.OFFLINE) < len(states) - 1
            assert State.SYNCED in states[states.index(State.OFFLINE) :]


async def test_room_names_reach_the_same_document_as_the_npm_client() -> None:
    """The client writes the room into the URL path as y-websocket does (raw, but for
    what a path cannot hold), so on a server that names documents by the raw path
    the npm client and ours meet, whatever the name's characters."""
    rooms = ["team/notes", "team:notes", "notes(1)", "a+b", "x y", "ü", "a@b,c;d=e"]
    async with node_websocket_server(free_port()) as server:
        for room in rooms:
            async with connect(server.url, room, backoff=FAST, ack_timeout=1.0) as session:
                await session.synced(timeout=10)
                session.doc.get("text", type=Text).insert(0, f"in {room}")
                async with node_client(server.url, room) as node:
                    await node.wait({"text": f"in {room}"}, timeout=5)
