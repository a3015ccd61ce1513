"""Interop: the real npm `yjs` + `y-websocket` client, in Node, against our server.

Each test starts the real server in-process (`running_server()`: hypercorn on
127.0.0.1, a free port) and drives one or more Node processes running
`tests/interop/client.mjs`, a scriptable y-websocket client (JSON commands on its
stdin, JSON events and replies on its stdout). The document the server holds is read
back with pycrdt (`app.engine.rooms[name].doc`) and compared with what Node sees.

Node >= 20 and `npm ci --prefix tests/interop` are required: without them these
tests fail (they are not skipped).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from pycrdt import Map, Text, TransactionEvent
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from collab_engine.clock import ManualClock
from collab_engine.identity import Identity
from collab_engine.permissions import Role
from server.app import App
from tests.conftest import running_server

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.timeout(60)]

INTEROP_DIR = Path(__file__).resolve().parent
CLIENT_SCRIPT = INTEROP_DIR / "client.mjs"
NODE_LIFETIME = 60  # seconds: a Node client exits by itself after this, whatever happens


def node_executable() -> str:
    """The `node` to run, or fail the test with what to install."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "`node` is not on PATH: the interop tests need Node >= 20 "
            "(then run `npm ci --prefix tests/interop`)",
            pytrace=False,
        )
    for package in ("yjs", "y-websocket", "ws"):
        if not (INTEROP_DIR / "node_modules" / package / "package.json").is_file():
            pytest.fail(
                f"tests/interop/node_modules/{package} is missing: "
                "run `npm ci --prefix tests/interop` first",
                pytrace=False,
            )
    return node


# -- a Node y-websocket client, driven over its stdin and stdout ---------------------------


class NodeClient:
    """One `client.mjs` process holding one or more WebsocketProviders."""

    def __init__(self, process: Process, label: str) -> None:
        self.process = process
        self.label = label
        self.events: list[dict[str, Any]] = []
        self.client_ids: list[int] = []
        self.stderr = bytearray()
        self.eof = False
        self.killed = False
        self._replies: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._changed = anyio.Event()

    @property
    def client_id(self) -> int:
        """The Yjs clientID of this process's first (often only) client."""
        return self.client_ids[0]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        lines = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                line = await lines.receive_until(b"\n", 64 * 1024 * 1024)
                message = json.loads(line)
                if "reply" in message:
                    self._replies[message["reply"]] = message
                else:
                    self.events.append(message)
                self._notify()
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
            pass
        finally:
            self.eof = True
            self._notify()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        try:
            async for chunk in self.process.stderr:
                self.stderr += chunk
        except anyio.ClosedResourceError:
            pass

    def _describe(self) -> str:
        stderr = self.stderr.decode(errors="replace").strip()
        return (
            f"node client {self.label!r} (exit status {self.process.returncode}); "
            f"stderr: {stderr[-4000:] or '<empty>'}"
        )

    async def _until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            with anyio.fail_after(timeout):
                while not predicate():
                    if self.eof:
                        raise AssertionError(f"{self._describe()}: ended while waiting for {what}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{self._describe()}: no {what} within {timeout} s") from None

    async def request(self, op: str, *, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        """Send one command and return its reply; fail the test on an error reply."""
        if self.eof:
            raise AssertionError(f"{self._describe()}: cannot send {op!r}, the process ended")
        request_id = next(self._ids)
        assert self.process.stdin is not None
        line = json.dumps({"id": request_id, "op": op, **fields}) + "\n"
        await self.process.stdin.send(line.encode())
        if op == "wait":
            # Node times the wait out itself (and says why): give it the time to.
            timeout = max(timeout, fields.get("within", 10) + 5)
        await self._until(lambda: request_id in self._replies, timeout, f"reply to {op!r}")
        reply = self._replies.pop(request_id)
        if not reply["ok"]:
            raise AssertionError(f"node client {self.label!r}: {op!r} failed: {reply['error']}")
        return reply

    async def wait(
        self, until: dict[str, Any], *, client: int | str = "all", timeout: float = 10.0
    ) -> dict[str, Any]:
        """Wait, in Node and event-driven, until every condition of `until` holds."""
        return await self.request("wait", client=client, until=until, within=timeout)

    async def state(self, client: int = 0, *, full: bool = True) -> dict[str, Any]:
        reply = await self.request("state", client=client, full=full)
        return reply["states"][0]  # type: ignore[no-any-return]

    async def states(self, *, full: bool = True) -> list[dict[str, Any]]:
        reply = await self.request("state", client="all", full=full)
        return reply["states"]  # type: ignore[no-any-return]

    async def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first event (already seen or to come) that satisfies `predicate`."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [event for event in self.events if predicate(event)][:1]
            return bool(found)

        await self._until(seen, timeout, "matching event")
        return found[0]

    def kill9(self) -> None:
        """SIGKILL: no goodbye from the client, the kernel just drops the socket."""
        self.killed = True
        self.process.send_signal(signal.SIGKILL)

    async def close(self) -> None:
        """Stop the process: politely if it is alive, by SIGKILL if it does not go."""
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None and not self.eof and not self.killed:
                with anyio.move_on_after(3):
                    try:
                        assert self.process.stdin is not None
                        await self.process.stdin.send(b'{"id": 0, "op": "exit"}\n')
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
                    await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
            with anyio.move_on_after(5):
                await self.process.wait()
            await self.process.aclose()


@asynccontextmanager
async def node_client(
    base_url: str,
    room: str,
    *,
    label: str = "node",
    clients: int = 1,
    defer_connect: bool = False,
    user: dict[str, Any] | None = None,
    token: str | None = None,
    synced: bool = True,
) -> AsyncIterator[NodeClient]:
    """A Node process with `clients` WebsocketProviders on `base_url/room`.

    Unless `defer_connect`, they connect at once and, with `synced`, this waits until
    all are synced; with `user`, client 0 then sets its awareness field `user`. A
    `token` goes as y-websocket's `params` (`?token=`), on every reconnection too.
    """
    command = [
        node_executable(),
        str(CLIENT_SCRIPT),
        "--url", base_url,
        "--room", room,
        "--clients", str(clients),
        "--label", label,
        "--lifetime", str(NODE_LIFETIME),
        *(["--token", token] if token is not None else []),
        *(["--defer-connect"] if defer_connect else []),
    ]  # fmt: skip
    process = await anyio.open_process(command, cwd=INTEROP_DIR)
    client = NodeClient(process, label)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client._read_stdout)
            tg.start_soon(client._read_stderr)
            try:
                hello = await client.wait_event(lambda e: e["event"] == "hello")
                client.client_ids = [c["clientID"] for c in hello["clients"]]
                if synced and not defer_connect:
                    await client.wait({"synced": True})
                if user is not None:
                    await client.request("setUser", user=user)
                yield client
            finally:
                await client.close()
                tg.cancel_scope.cancel()
    finally:
        if process.returncode is None:  # only if the task group itself failed
            process.kill()


# -- the server's side --------------------------------------------------------------------


def _normalise(value: Any) -> Any:
    """JSON values as both sides see them: pycrdt reads integral JS numbers as floats."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(item) for item in value]
    return value


def server_text(app: App, room: str) -> str:
    return str(app.engine.rooms[room].doc.get("text", type=Text))


def server_map(app: App, room: str) -> dict[str, Any]:
    return _normalise(app.engine.rooms[room].doc.get("map", type=Map).to_py() or {})  # type: ignore[no-any-return]


async def wait_server(
    app: App, room: str, predicate: Callable[[], bool], timeout: float = 5.0
) -> None:
    """Wait until `predicate()` holds, re-checking after each transaction on the
    server's document."""
    doc = app.engine.rooms[room].doc
    changed = anyio.Event()

    def on_transaction(_event: TransactionEvent) -> None:
        changed.set()

    subscription = doc.observe(on_transaction)
    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await changed.wait()
                changed = anyio.Event()
    finally:
        doc.unobserve(subscription)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def assert_converged(states: list[dict[str, Any]], app: App, room: str) -> None:
    """Every Node client and the server hold the same text and map."""
    first = states[0]
    for state in states[1:]:
        assert state["textSha256"] == first["textSha256"], (state.get("text"), first.get("text"))
        assert state["textLength"] == first["textLength"]
        assert _normalise(state["map"]) == _normalise(first["map"])
    text = server_text(app, room)
    assert sha256(text) == first["textSha256"]
    if "text" in first:
        assert text == first["text"]
    assert server_map(app, room) == _normalise(first["map"])


def disconnections(client: NodeClient) -> list[dict[str, Any]]:
    return [
        event
        for event in client.events
        if event["event"] == "connection-close"
        or (event["event"] == "status" and event["status"] == "disconnected")
    ]


# -- the scenarios ------------------------------------------------------------------------


@asynccontextmanager
async def server_and_pair(room: str) -> AsyncIterator[tuple[App, str, NodeClient, NodeClient]]:
    """A fresh server, and two Node clients "a" and "b" in `room`, each with its user set."""
    async with running_server() as (app, url):
        async with (
            node_client(url, room, label="a", user={"name": "a"}) as a,
            node_client(url, room, label="b", user={"name": "b"}) as b,
        ):
            yield app, url, a, b


async def test_three_clients_converge_on_text_and_map() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/converge"
    with anyio.fail_after(40):
        async with running_server() as (app, url), AsyncExitStack() as stack:
            nodes = [
                await stack.enter_async_context(node_client(url, room, label=name))
                for name in "abc"
            ]
            # All three edit at once: random inserts, deletes and overwrites of shared keys.
            async with anyio.create_task_group() as tg:
                for seed, node in enumerate(nodes, start=1):
                    tg.start_soon(
                        partial(
                            node.request, "randomEdits", count=80, seed=seed * 7919, tag=node.label
                        )
                    )
            # Each client's last edit sets done:<label>, and a client's updates arrive in
            # order: once everyone sees every done key, everyone has seen everything.
            done = [f"done:{node.label}" for node in nodes]
            for node in nodes:
                await node.wait({"mapHas": done})
            states = [await node.state() for node in nodes]
            assert_converged(states, app, room)
            assert states[0]["textLength"] > 0
            assert {key for key in states[0]["map"] if key.startswith("k")}, (
                "no shared key was written"
            )
            for node in nodes:
                assert states[0]["map"][f"done:{node.label}"] == 80
            assert len(app.engine.rooms[room].peers) == 3


async def test_clients_see_each_others_awareness() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/awareness"
    names = ["alice", "bob", "carol"]
    with anyio.fail_after(30):
        async with running_server() as (app, url), AsyncExitStack() as stack:
            nodes = [
                await stack.enter_async_context(
                    node_client(url, room, label=name, user={"name": name, "color": f"#{i}{i}{i}"})
                )
                for i, name in enumerate(names)
            ]
            for node in nodes:
                await node.wait({"users": names, "awarenessPresent": [n.client_id for n in nodes]})
            server_id = app.engine.rooms[room].presence.server_client_id
            user_ids = set()
            for node in nodes:
                # Each client's own state comes back stamped, so wait for that too.
                await node.wait({"stampedUsers": [n.client_id for n in nodes]})
                awareness = (await node.state())["awareness"]
                # Three users, and nothing else: the server has no entry while it has
                # nothing to say (no locks), so `getStates()` counts the people online.
                assert set(awareness) == {str(n.client_id) for n in nodes}
                for i, other in enumerate(nodes):
                    user = awareness[str(other.client_id)]["user"]
                    # The chosen name and colour stay; the id is the connection's own.
                    assert user["name"] == other.label and user["color"] == f"#{i}{i}{i}"
                    assert user["anonymous"] is True and user["id"].startswith("anonymous:")
                    user_ids.add(user["id"])
            assert len(user_ids) == 3
            entries = app.engine.rooms[room].awareness.entries()
            assert {entry.client_id for entry in entries} == {n.client_id for n in nodes}
            # A lock makes the server say something: its entry appears for everyone
            # (no `user`: no cursor drawn), and goes once the lock is released.
            lease = app.engine.rooms[room].lock(
                "acquire", ("text",), identity=Identity("ann", "Ann"), role=Role.EDITOR
            )
            assert lease is not None
            for node in nodes:
                await node.wait({"statesCount": 4, "awarenessPresent": [server_id]})
                awareness = (await node.state())["awareness"]
                assert awareness[str(server_id)] == {
                    "server": {
                        "name": "collab-engine",
                        "document": room,
                        "locks": [{"section": ["text"], "holder": {"id": "ann", "name": "Ann"}}],
                    }
                }
            app.engine.rooms[room].lock(
                "release",
                ("text",),
                identity=Identity("ann", "Ann"),
                role=Role.EDITOR,
                fence=lease.fence,
            )
            for node in nodes:
                await node.wait({"statesCount": 3, "awarenessAbsent": [server_id]})


async def test_late_joiner_gets_content_and_awareness() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/late-joiner"
    with anyio.fail_after(30):
        async with server_and_pair(room) as (app, url, a, b):
            await a.request("insert", index=0, text="written before the late joiner came; ")
            await b.request("mapSet", key="from-b", value={"list": [1, 2, 3], "ok": True})
            await b.request("insert", index=-1, text="and more from b.")
            for node in (a, b):
                await node.wait(
                    {"users": ["a", "b"], "mapHas": ["from-b"], "textIncludes": ["from b."]}
                )
            expected = await a.state()

            async with node_client(url, room, label="late") as late:
                # The awareness states come before sync step 2: they are known at sync.
                synced = await late.wait_event(lambda e: e["event"] == "synced" and e["synced"])
                assert synced["users"] == ["a", "b"]
                assert synced["textLength"] == expected["textLength"]
                state = await late.state()
                assert state["text"] == expected["text"]
                assert _normalise(state["map"]) == _normalise(expected["map"])
                aw = state["awareness"]
                assert set(aw) == {str(late.client_id), str(a.client_id), str(b.client_id)}
                assert aw[str(a.client_id)]["user"]["name"] == "a"
                assert aw[str(b.client_id)]["user"]["name"] == "b"
                # Its own: empty so far, or already stamped with its id by the server.
                assert set(aw[str(late.client_id)]) <= {"user"}
                # And the others see it arrive.
                await late.request("setUser", user={"name": "late"})
                for node in (a, b):
                    await node.wait({"users": ["a", "b", "late"]})
                assert_converged([expected, state], app, room)


async def test_twenty_clients_join_cold_room_at_once() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/crowd"
    count = 20
    with anyio.fail_after(40):
        async with running_server() as (app, url):
            async with node_client(
                url, room, label="crowd", clients=count, defer_connect=True
            ) as crowd:
                # Each client brings content of its own, written before it connects.
                for i in range(count):
                    await crowd.request("insert", client=i, index=0, text=f"[c{i}]")
                    await crowd.request("mapSet", client=i, key=f"c{i}", value=i)
                assert room not in app.engine.rooms, "the room should be cold"
                # All twenty providers connect in the same tick of Node's event loop.
                await crowd.request("connect", client="all")
                await crowd.wait({"synced": True}, timeout=15)
                markers = [f"[c{i}]" for i in range(count)]
                keys = [f"c{i}" for i in range(count)]
                await crowd.wait({"textIncludes": markers, "mapHas": keys}, timeout=15)
                # And live edits still reach all twenty.
                for i in range(count):
                    await crowd.request("mapSet", client=i, key=f"live{i}", value=f"from {i}")
                await crowd.wait({"mapHas": [f"live{i}" for i in range(count)]}, timeout=15)
                states = await crowd.states()
                assert len(states) == count
                assert_converged(states, app, room)
                assert len(app.engine.rooms[room].peers) == count
                assert states[0]["textLength"] == sum(len(m) for m in markers)
                assert disconnections(crowd) == []


async def test_offline_edits_merge_both_ways_on_reconnect() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/offline"
    with anyio.fail_after(30):
        async with server_and_pair(room) as (app, url, a, b):
            await a.request("insert", index=0, text="shared base.")
            await b.wait({"text": "shared base.", "users": ["a", "b"]})

            await a.request("disconnect")
            await a.wait_event(lambda e: e["event"] == "status" and e["status"] == "disconnected")
            await b.wait({"awarenessAbsent": [a.client_id]})
            await wait_server(app, room, lambda: len(app.engine.rooms[room].peers) == 1)

            # Both sides edit while apart.
            await a.request("insert", index=0, text="A-offline:")
            await a.request("mapSet", key="a", value="offline edit")
            await b.request("insert", index=-1, text=":B-online")
            await b.request("mapSet", key="b", value="online edit")
            await wait_server(app, room, lambda: ":B-online" in server_text(app, room))
            assert "A-offline" not in server_text(app, room)
            assert "A-offline" not in (await b.state())["text"]
            assert ":B-online" not in (await a.state())["text"]

            await a.request("connect")
            both = {"textIncludes": ["A-offline:", ":B-online"], "mapHas": ["a", "b"]}
            await a.wait({"synced": True, **both})
            await b.wait(both)
            # y-websocket re-announces a's awareness at the clock of its removal, which
            # y-protocols ignores: it reappears with a's next change (or 15 s renewal).
            await a.request("setUser", user={"name": "a", "back": True})
            await b.wait({"users": ["a", "b"]})
            states = [await a.state(), await b.state()]
            assert states[0]["text"] == "A-offline:shared base.:B-online"
            assert states[0]["map"] == {"a": "offline edit", "b": "online edit"}
            assert_converged(states, app, room)
            assert disconnections(b) == []


async def test_one_mib_update_propagates() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/big"
    size = 1024 * 1024
    with anyio.fail_after(40):
        async with running_server() as (app, url):
            async with (
                node_client(url, room, label="sender") as sender,
                node_client(url, room, label="receiver") as receiver,
            ):
                sent = await sender.request("insertRandom", length=size, seed=1234)
                assert sent["length"] == size
                await receiver.wait({"textLength": size}, timeout=20)
                received = await receiver.state(full=False)
                assert received["textLength"] == size
                assert received["textSha256"] == sent["sha256"]
                text = server_text(app, room)
                assert len(text) == size  # ASCII: one UTF-8 byte per character
                assert sha256(text) == sent["sha256"]
                # A newcomer gets the megabyte through sync step 2 as well.
                async with node_client(url, room, label="newcomer") as newcomer:
                    state = await newcomer.state(full=False)
                    assert (state["textLength"], state["textSha256"]) == (size, sent["sha256"])
                assert disconnections(receiver) == []


async def test_killed_client_awareness_removed_when_its_connection_drops() -> None:
    """A client killed with SIGKILL has its awareness state removed for every other
    client when its connection drops, not by a timeout: the server's clock is stopped
    here, and the Node clients' own timeout (30 s) is far beyond the test's deadline."""
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/kill"
    clock = ManualClock()
    with anyio.fail_after(25):
        async with running_server(clock=clock) as (app, url):
            async with (
                node_client(url, room, label="victim", user={"name": "victim"}) as victim,
                node_client(url, room, label="watchers", clients=2) as watchers,
            ):
                for i in range(2):
                    await watchers.request("setUser", client=i, user={"name": f"w{i}"})
                await watchers.wait({"users": ["victim", "w0", "w1"]})
                await victim.wait({"users": ["victim", "w0", "w1"]})

                started = clock.monotonic()
                victim.kill9()
                # Event-driven in Node: replies as soon as both see the state removed.
                await watchers.wait({"awarenessAbsent": [victim.client_id]})
                assert clock.monotonic() == started  # no timer of the server's did it

                removals = [
                    event
                    for event in watchers.events
                    if event["event"] == "awareness" and victim.client_id in event["removed"]
                ]
                assert sorted(event["client"] for event in removals) == [0, 1]
                for event in removals:
                    assert not event["local"]  # a change from the server, not one of its own
                await victim.process.wait()
                assert victim.process.returncode == -signal.SIGKILL
                assert all(
                    entry.client_id != victim.client_id
                    for entry in app.engine.rooms[room].awareness.entries()
                )
                assert len(app.engine.rooms[room].peers) == 2
                assert disconnections(watchers) == []


BAD_FRAMES: list[bytes | str] = [
    b"\x00\x07\xff",  # sync message of an unknown type, with a truncated varUint
    b"garbage",  # message type 103
    b"\x00\x02\x03\xff\xff\xff",  # a well-formed update message whose update is not Yjs
    b"\x01\x05\x01\x01\x01\x01{",  # awareness entry whose state is not JSON
    "a text frame",  # y-websocket speaks binary frames only
]


async def test_malformed_frame_closes_only_that_socket() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/malformed"
    with anyio.fail_after(30):
        async with server_and_pair(room) as (app, url, a, b):
            await a.request("insert", index=0, text="before.")
            await b.wait({"text": "before.", "users": ["a", "b"]})

            for bad in BAD_FRAMES:
                async with connect(f"{url}/{room}", ping_interval=None, max_size=None) as raw:
                    await raw.send(bad)
                    with anyio.fail_after(5):
                        try:
                            async for _ in raw:  # sync step 1 and awareness, then the close
                                pass
                        except ConnectionClosed:
                            pass
                    assert raw.close_code == 4400, (bad, raw.close_code, raw.close_reason)
                    assert raw.close_reason, f"no close reason for {bad!r}"

            # The Node clients never noticed, and still sync both ways.
            await a.request("insert", index=-1, text=" after the bad frames (a).")
            await b.request("mapSet", key="b", value="after")
            for node in (a, b):
                await node.wait({"text": "before. after the bad frames (a).", "mapHas": ["b"]})
            assert_converged([await a.state(), await b.state()], app, room)
            assert disconnections(a) == []
            assert disconnections(b) == []
            for node in (a, b):
                statuses = [e["status"] for e in node.events if e["event"] == "status"]
                assert statuses == ["connecting", "connected"]
            assert len(app.engine.rooms[room].peers) == 2


def utf16_insert(text: str, index: int, insert: str) -> str:
    """Insert at a UTF-16 index, as Yjs (JavaScript) counts."""
    units = text.encode("utf-16-le")
    return (units[: 2 * index] + insert.encode("utf-16-le") + units[2 * index :]).decode(
        "utf-16-le"
    )


async def test_non_ascii_text_matches_pycrdt() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/unicode-ñ"
    piece = "aé😀b"  # 5 UTF-16 units: a, é, the surrogate pair of 😀, b
    with anyio.fail_after(30):
        async with running_server() as (app, url):
            async with (
                node_client(url, room, label="a") as a,
                node_client(url, room, label="b") as b,
            ):
                expected = ""
                for index in (0, 0, 5, 2, 7, -1, 1):
                    at = len(expected.encode("utf-16-le")) // 2 if index < 0 else index
                    await a.request("insert", index=index, text=piece)
                    expected = utf16_insert(expected, at, piece)
                await b.wait({"text": expected})
                state = await a.state()
                assert state["text"] == expected
                assert server_text(app, room) == expected
                assert state["textLength"] == len(expected.encode("utf-16-le")) // 2
                assert state["textSha256"] == sha256(expected)

                # And the other way: edits made with pycrdt on the server reach Node intact.
                async with app.engine.room(room) as server_room:
                    text = server_room.doc.get("text", type=Text)
                    text.insert(0, "Ω")
                    text += "ü🎉"
                expected = "Ω" + expected + "ü🎉"
                for node in (a, b):
                    await node.wait({"text": expected})
                assert server_text(app, room) == expected
                assert (await b.state())["textLength"] == len(expected.encode("utf-16-le")) // 2


async def test_awareness_change_after_connection_drop_reaches_others() -> None:
    """After a network drop and y-websocket's own reconnect, the client's next awareness
    change reaches the others (regression: removals were sent at clock + 1)."""
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/drop"
    with anyio.fail_after(30):
        async with server_and_pair(room) as (app, url, a, b):
            await a.wait({"users": ["a", "b"]})
            await b.wait({"users": ["a", "b"]})
            # A network failure: no goodbye; y-websocket reconnects by itself.
            await a.request("dropSocket")
            await b.wait({"awarenessAbsent": [a.client_id]})
            await a.wait_event(lambda e: e["event"] == "connection-close")
            await a.wait({"status": "connected", "synced": True})
            assert len(app.engine.rooms[room].peers) == 2
            # y-websocket re-sends a's state at its old clock, which y-protocols
            # ignores (the reference server as well); a's next change, at clock + 1,
            # must reach b.
            await a.request("setUser", user={"name": "a", "cursor": 1})
            await b.wait({"users": ["a", "b"]}, timeout=3)
