"""A cluster of real `collab-engine serve` processes on one PostgreSQL database (a
fresh one per test) and one Redis (a fresh key prefix per test): clients on every
node edit one document, and every guarantee of one process holds across nodes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import Process, TaskGroup
from pycrdt import Doc, Map, Text
from sqlalchemy.ext.asyncio import create_async_engine

from collab_engine import protocol
from collab_engine.permissions import Role
from server.auth import mint
from tests.proxy import Proxy
from tests.services import POSTGRES, REDIS, answers, need, need_program
from tests.timing import eventually
from tests.yclient import YClient, yclient

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@dataclass
class Node:
    """One `collab-engine serve` process of the cluster."""

    id: str
    process: Process
    url: str
    log: list[str] = field(default_factory=list)

    @property
    def http(self) -> str:
        return self.url.replace("ws://", "http://")


@asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database, dropped afterwards: its SQLAlchemy URL."""
    need("PostgreSQL", 5432)
    name = f"cluster_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES.rsplit("/", 1)[0] + f"/{name}"
        finally:
            async with admin.connect() as connection:
                await connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()


class Cluster:
    """Starts nodes on one database and one Redis prefix; stops them all at the end."""

    def __init__(self, database_url: str, group: TaskGroup, redis_url: str = REDIS) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.prefix = f"test-{uuid.uuid4().hex[:8]}"
        self.group = group
        self.nodes: list[Node] = []

    async def start(
        self,
        node_id: str,
        *extra: str,
        database_url: str | None = None,
        redis_url: str | None = None,
    ) -> Node:
        """Start node `node_id` (with the cluster's database and Redis, unless this
        node reaches them by other URLs: through a proxy)."""
        command = [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--database-url",
            database_url or self.database_url,
            "--redis-url",
            redis_url or self.redis_url,
            "--cluster-prefix",
            self.prefix,
            "--node-id",
            node_id,
            "--log-level",
            "WARNING",
            *extra,
        ]
        process = await anyio.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        node = Node(node_id, process, "")
        listening = anyio.Event()
        self.group.start_soon(self._read_log, node, listening)
        with anyio.fail_after(30):
            await listening.wait()
        assert node.url, f"node {node_id} did not start:\n" + "\n".join(node.log)
        self.nodes.append(node)
        return node

    async def _read_log(self, node: Node, listening: anyio.Event) -> None:
        # Drained to the end: a full pipe would stall the node.
        assert node.process.stdout is not None
        buffer = b""
        async for chunk in node.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                node.log.append(text)
                if "listening on " in text and not node.url:
                    node.url = text.split("listening on ")[1].strip()
                    listening.set()
        listening.set()

    async def stop(self) -> None:
        for node in self.nodes:
            if node.process.returncode is None:
                node.process.terminate()
        for node in self.nodes:
            with anyio.move_on_after(20):
                await node.process.wait()
            if node.process.returncode is None:
                node.process.kill()


@asynccontextmanager
async def cluster(redis_url: str = REDIS) -> AsyncIterator[Cluster]:
    if redis_url == REDIS:
        need("Redis", 6379)
    async with database() as url, anyio.create_task_group() as group:
        nodes = Cluster(url, group, redis_url)
        try:
            yield nodes
        finally:
            await nodes.stop()
            group.cancel_scope.cancel()


async def health(node: Node) -> dict[str, object]:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{node.http}/healthz")
    result: dict[str, object] = answer.json()
    return result


def text_of(client: object) -> str:
    return str(client.doc.get("body", type=Text))  # type: ignore[attr-defined]


async def test_clients_on_two_nodes_edit_one_document_and_converge() -> None:
    async with cluster() as nodes:
        one = await nodes.start("one")
        two = await nodes.start("two")
        async with yclient(one.url, "notes") as a:
            async with yclient(two.url, "notes") as b:
                a.doc.get("body", type=Text).insert(0, "from one. ")
                await a.flush()
                await b.wait_for(lambda: text_of(b) == "from one. ")
                b.doc.get("body", type=Text).insert(0, "from two. ")
                await b.flush()
                await a.wait_for(lambda: text_of(a) == "from two. from one. ")
                # Concurrent edits from both sides, acknowledged where they were sent.
                await a.request_persisted()
                await b.request_persisted()
                for i in range(20):
                    a.doc.get("body", type=Text).insert(0, f"a{i} ")
                    b.doc.get("body", type=Text).insert(len(text_of(b)), f" b{i}")
                    await a.flush()
                    await b.flush()
                await a.wait_persisted(timeout=30)
                await b.wait_persisted(timeout=30)
                await a.wait_for(lambda: text_of(a) == text_of(b) and "b19" in text_of(a))
                await b.wait_for(lambda: "a19" in text_of(b))
        owners = [(await health(node)).get("owns") for node in (one, two)]
        assert owners.count(["notes"]) == 1, f"one node owns the document: {owners}"


async def test_awareness_crosses_nodes_and_leaves_with_its_client() -> None:
    async with cluster() as nodes:
        one = await nodes.start("one")
        two = await nodes.start("two")
        async with yclient(one.url, "room") as watcher:
            async with yclient(two.url, "room") as mover:
                await mover.set_awareness({"cursor": 7, "user": {"name": "Mo"}})
                await watcher.wait_for(
                    lambda: watcher.awareness.get(mover.doc.client_id, {}).get("cursor") == 7
                )
                await watcher.set_awareness({"cursor": 1})
                await mover.wait_for(lambda: watcher.doc.client_id in mover.awareness)
            # The mover's node relays its leaving: its state is removed for everyone.
            await watcher.wait_for(lambda: mover.doc.client_id not in watcher.awareness)


async def test_a_lock_taken_through_one_node_holds_on_the_other() -> None:
    """Ann locks a section through node one; Bob, on node two, cannot take it, and
    his write into it is rolled back everywhere, his own replica included."""
    async with cluster() as nodes:
        one = await nodes.start("one")
        two = await nodes.start("two")
        async with yclient(one.url, "locked") as ann, yclient(two.url, "locked") as bob:
            ann.doc.get("meta", type=Map)["title"] = "Draft"
            await ann.flush()
            await bob.wait_for(lambda: bob.doc.get("meta", type=Map).get("title") == "Draft")
            taken = await lock_request(ann, op="acquire", section=["meta"], id=1)
            assert taken["ok"] is True, taken
            refused = await lock_request(bob, op="acquire", section=["meta"], id=2)
            assert refused["ok"] is False and "locked" in str(refused["error"]), refused
            bob.doc.get("meta", type=Map)["title"] = "Bob's"
            await bob.flush()
            await bob.wait_for(
                lambda: (
                    bob.doc.get("meta", type=Map).get("title") == "Draft"
                    and any(isinstance(m, protocol.PermissionDenied) for m in bob.received)
                )
            )
            await ann.round_trip()
            assert ann.doc.get("meta", type=Map).get("title") == "Draft"


async def lock_request(client: YClient, **request: object) -> dict[str, object]:
    replies = len([m for m in client.received if isinstance(m, protocol.LockReply)])
    await client.send(protocol.encode_lock_request(json.dumps(request)))
    await client.wait_for(
        lambda: len([m for m in client.received if isinstance(m, protocol.LockReply)]) > replies
    )
    reply = [m for m in client.received if isinstance(m, protocol.LockReply)][-1]
    answer: dict[str, object] = json.loads(reply.body)
    return answer


SECRET = "cluster-test-secret-of-at-least-32-bytes"


async def test_a_grant_revoked_on_one_node_closes_the_user_on_another() -> None:
    async with cluster() as nodes:
        one = await nodes.start("one", "--secret", SECRET)
        two = await nodes.start("two", "--secret", SECRET)
        ann = mint(SECRET, user="ann")
        olga = mint(SECRET, user="olga", role=Role.OWNER)
        async with httpx.AsyncClient(base_url=two.http) as http:
            put = await http.put(
                "/api/documents/shared/grants/user:olga",
                headers={"Authorization": f"Bearer {olga}"},
                json={"role": "owner"},
            )
            assert put.status_code == 200, put.text
            put = await http.put(
                "/api/documents/shared/grants/user:ann",
                headers={"Authorization": f"Bearer {olga}"},
                json={"role": "editor"},
            )
            assert put.status_code == 200, put.text
            async with yclient(one.url, f"shared?token={ann}") as client:
                client.doc.get("body", type=Text).insert(0, "hello")
                await client.flush()
                await client.round_trip()
                revoked_at = anyio.current_time()
                gone = await http.delete(
                    "/api/documents/shared/grants/user:ann",
                    headers={"Authorization": f"Bearer {olga}"},
                )
                assert gone.status_code == 200, gone.text
                with anyio.fail_after(30):
                    await client.closed.wait()
                took = anyio.current_time() - revoked_at
                assert client.close_code == 4403, (client.close_code, client.close_reason)
                print(f"closed {took:.3f} s after the revocation on the other node")


@dataclass
class Writer:
    """Writes numbered markers into a document through one node, and on to the next
    node of `urls` when its connection ends; keeps which markers were acknowledged
    (stored) and when each acknowledgement came."""

    name: str
    urls: list[str]
    doc: Doc[Any] = field(default_factory=Doc)
    written: int = 0
    acked: set[str] = field(default_factory=set)
    ack_times: list[float] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    connected_at: list[float] = field(default_factory=list)
    """When each connection was made (once synced)."""

    async def run(self, document: str, until: anyio.Event) -> None:
        markers = self.doc.get("markers", type=Map)
        index = 0
        while not until.is_set():
            client: YClient | None = None
            try:
                # (A short sync timeout: a node that relays to a dead owner never
                # answers, and the writer should try again soon.)
                async with yclient(
                    self.urls[index], document, doc=self.doc, sync_timeout=1.0
                ) as client:
                    self.connected_at.append(anyio.current_time())
                    await self._write(client, markers, until)
            except Exception:  # noqa: BLE001 - a refused or broken connection: the next node
                pass
            # Why it ended, where the server said (None: refused, or no close frame).
            self.closes.append(None if client is None else client.close_code)
            index = (index + 1) % len(self.urls)

    async def _write(self, client: YClient, markers: Map[int], until: anyio.Event) -> None:
        await client.request_persisted()
        sent: list[tuple[int, str]] = []  # (update message number, marker)
        while not until.is_set() and not client.closed.is_set():
            marker = f"{self.name}-{self.written}"
            markers[marker] = self.written
            self.written += 1
            await client.flush()
            sent.append((client.updates_sent, marker))
            await anyio.sleep(0.01)  # (a writer's pace; nothing is timed)
            stored = [m for number, m in sent if number <= client.persisted]
            if stored:
                self.acked.update(stored)
                self.ack_times.append(anyio.current_time())
                sent = [(n, m) for n, m in sent if n > client.persisted]

    def longest_stall(self, start: float, end: float) -> float:
        """The longest time between two acknowledgements in [start, end]."""
        times = [start, *(t for t in self.ack_times if start <= t <= end), end]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


@asynccontextmanager
async def writing(
    document: str, writers: Sequence[Writer], *, again: Sequence[Writer] | None = None, what: str
) -> AsyncIterator[None]:
    """`writers` write markers into `document`: the block runs once each has 20
    acknowledged; then they go on until each of `again` (all of them by default) has
    20 more acknowledged after the block (`what` says what that shows)."""
    until = anyio.Event()
    async with anyio.create_task_group() as group:
        for writer in writers:
            group.start_soon(writer.run, document, until)
        await eventually(lambda: all(len(w.acked) >= 20 for w in writers))
        yield
        waited = writers if again is None else again
        before = {w.name: len(w.acked) for w in waited}
        await eventually(
            lambda: all(len(w.acked) >= before[w.name] + 20 for w in waited), what=what
        )
        until.set()


async def assert_kept(url: str, document: str, writers: Sequence[Writer]) -> None:
    """Every marker acknowledged to `writers` is in `document`, read through `url`."""
    async with yclient(url, document) as reader:
        stored = set(reader.doc.get("markers", type=Map).keys())
    for writer in writers:
        missing = writer.acked - stored
        assert not missing, f"{writer.name}: acknowledged markers lost: {sorted(missing)[:10]}"


async def test_the_owner_killed_mid_stream_loses_no_acknowledged_update() -> None:
    """Writers on both nodes, each acknowledged by the document's owner. The owner is
    killed (SIGKILL). Its writers reconnect to the other node, the other node's
    writers are closed (1012) when the owner's lease lapses and reconnect; the
    document moves to the surviving node, and every acknowledged marker is in it."""
    async with cluster() as nodes:
        one = await nodes.start("one", "--lease-ttl", "1")
        two = await nodes.start("two", "--lease-ttl", "1")
        # The first client makes its node the owner.
        async with yclient(one.url, "failover"):
            pass
        owner, survivor = one, two
        writers = [
            Writer("on-owner", [owner.url, survivor.url]),
            Writer("on-survivor", [survivor.url]),
        ]
        async with writing("failover", writers, what="acknowledged again after the owner died"):
            killed_at = anyio.current_time()
            owner.process.kill()
        stall = writers[1].longest_stall(killed_at, anyio.current_time())
        print(f"longest stall of the survivor's writer: {stall:.2f} s (lease ttl 1 s)")
        await assert_kept(survivor.url, "failover", writers)
        assert (await health(survivor)).get("owns") == ["failover"]
        assert 1012 in writers[1].closes, writers[1].closes


@pytest.mark.parametrize(
    "store", [(), ("--memory",), ("--database-url", "sqlite+aiosqlite:///x.db")]
)
async def test_a_cluster_node_needs_postgresql(store: tuple[str, ...]) -> None:
    """--redis-url without a PostgreSQL database is refused in one line, before
    anything is opened."""
    result = await anyio.run_process(
        [sys.executable, "-m", "server", "serve", "--redis-url", REDIS, *store], check=False
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--redis-url" in lines[0] and "PostgreSQL" in lines[0], lines


async def test_the_awareness_and_locks_of_clients_of_a_dead_node_end() -> None:
    """The edge a client is on dies (SIGKILL): the owner drops what that node relayed
    once its lease lapses. The client's awareness state is removed for the others,
    and its lock ends after its grace, as a dropped connection's does: then another
    user may take the section."""
    async with cluster() as nodes:
        options = ("--lease-ttl", "1", "--lock-grace", "1", "--secret", SECRET)
        one = await nodes.start("one", *options)
        two = await nodes.start("two", *options)
        watcher_token, mover_token = mint(SECRET, user="watcher"), mint(SECRET, user="mover")
        async with yclient(one.url, f"presence?token={watcher_token}") as watcher:
            # The watcher's node owns the document; the mover is relayed from node two.
            mover_doc = Doc()
            async with yclient(two.url, f"presence?token={mover_token}", doc=mover_doc) as mover:
                await mover.set_awareness({"cursor": 3})
                await watcher.wait_for(lambda: mover_doc.client_id in watcher.awareness)
                taken = await lock_request(mover, op="acquire", section=["title"], id=1, ttl=600)
                assert taken["ok"] is True, taken
                killed_at = anyio.current_time()
                two.process.kill()
                await watcher.wait_for(lambda: mover_doc.client_id not in watcher.awareness)
                took = anyio.current_time() - killed_at
                print(f"removed {took:.2f} s after its node died (lease ttl 1 s)")

                async def free() -> bool:
                    reply = await lock_request(watcher, op="acquire", section=["title"], id=2)
                    return reply["ok"] is True

                await eventually(free, what="the dead node's lock ended after its grace")


@asynccontextmanager
async def private_redis(port: int) -> AsyncIterator[Process]:
    """A Redis of this test's own on `port`, keeping nothing on disk (as the machine's)."""
    redis_server = need_program("redis-server")
    process = await anyio.open_process(
        [
            redis_server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: answers(port), what=f"redis-server on port {port}")
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_redis_restarted_mid_stream_loses_nothing() -> None:
    """Writers on both nodes while the cluster's Redis is killed and started again
    (empty: it keeps nothing): the nodes reconnect by themselves, the relayed clients
    are closed and reconnect, and every acknowledged marker is in the document."""
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    async with private_redis(port) as redis, cluster(redis_url) as nodes:
        one = await nodes.start("one", "--lease-ttl", "2")
        two = await nodes.start("two", "--lease-ttl", "2")
        async with yclient(one.url, "through-a-restart"):
            pass
        writers = [Writer("one", [one.url]), Writer("two", [two.url])]
        async with AsyncExitStack() as restarted:
            async with writing(
                "through-a-restart", writers, what="acknowledged again after Redis came back"
            ):
                redis.kill()
                await redis.wait()
                await restarted.enter_async_context(private_redis(port))
            await assert_kept(one.url, "through-a-restart", writers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_node_cut_off_from_redis_stops_acknowledging_before_its_documents_move() -> None:
    """Node one owns the document and reaches Redis through a proxy; the proxy is
    cut. Node one stops renewing its lease and holds its commits: its writer gets no
    acknowledgement from before the lease could lapse. Node two's writer, relayed to
    node one until then, is closed, reconnects, and node two claims the document.
    Every acknowledged marker is in it."""
    need("Redis", 6379)
    ttl = 2.0
    async with Proxy(6379) as proxy, cluster() as nodes:
        one = await nodes.start(
            "one", "--lease-ttl", str(ttl), redis_url=f"redis://127.0.0.1:{proxy.port}/0"
        )
        two = await nodes.start("two", "--lease-ttl", str(ttl))
        async with yclient(one.url, "partition"):
            pass
        cut_off, other = Writer("one", [one.url]), Writer("two", [two.url])
        async with writing(
            "partition",
            [cut_off, other],
            again=[other],
            what="node two's writer acknowledged again, by node two",
        ):
            cut_at = anyio.current_time()
            proxy.cut()
        # Node two's writer, on a connection made after the cut, is acknowledged only
        # once node two owns the document (node one cannot hear it): node one's last
        # acknowledgement came before that.
        reconnected_at = min(t for t in other.connected_at if t > cut_at)
        moved_at = min(t for t in other.ack_times if t > reconnected_at)
        assert max(cut_off.ack_times) < moved_at
        print(
            f"node one's last acknowledgement {max(cut_off.ack_times) - cut_at:.2f} s after the "
            f"cut, node two's first {moved_at - cut_at:.2f} s after it (lease ttl {ttl:g} s)"
        )
        assert (await health(two)).get("owns") == ["partition"]
        await assert_kept(two.url, "partition", [cut_off, other])
        # Still cut off, node one stops at once when told: its journal is held (its
        # lease in doubt), so there is nothing it may still write.
        stopping_at = anyio.current_time()
        one.process.terminate()
        with anyio.fail_after(30):
            await one.process.wait()
        print(f"the cut-off node stopped in {anyio.current_time() - stopping_at:.2f} s")


async def test_cluster_status_lists_the_nodes_and_what_they_own() -> None:
    async with cluster() as nodes:
        one = await nodes.start("one")
        await nodes.start("two")
        async with yclient(one.url, "listed"):
            pass
        result = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "server",
                "cluster",
                "status",
                "--database-url",
                nodes.database_url,
                "--redis-url",
                REDIS,
                "--cluster-prefix",
                nodes.prefix,
                "--json",
            ],
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        report = json.loads(result.stdout)
        assert {(n["id"], n["alive"]) for n in report["nodes"]} == {("one", True), ("two", True)}
        assert report["owners"] == [{"document": "listed", "node": "one", "epoch": 1}]
        assert all(isinstance(n["inbox"], int) for n in report["nodes"])


async def test_the_http_api_on_any_node_is_served_by_the_owner() -> None:
    """Node one owns the document (a client edits it there). Over HTTP on node two:
    who is present, a lock (held cluster-wide: the same section refused to another
    user through node one), a version, and an import that reaches the client."""
    async with cluster() as nodes:
        one = await nodes.start("one", "--secret", SECRET)
        two = await nodes.start("two", "--secret", SECRET)
        ann, bob = mint(SECRET, user="ann"), mint(SECRET, user="bob")
        as_ann = {"Authorization": f"Bearer {ann}"}
        as_bob = {"Authorization": f"Bearer {bob}"}
        async with yclient(one.url, f"api?token={ann}") as client:
            client.doc.get("body", type=Text).insert(0, "typed on one")
            await client.flush()
            await client.round_trip()
            async with (
                httpx.AsyncClient(base_url=two.http) as on_two,
                httpx.AsyncClient(base_url=one.http) as on_one,
            ):
                present = await on_two.get("/api/documents/api/presence", headers=as_ann)
                assert present.status_code == 200, present.text
                assert [p["user"]["id"] for p in present.json()["presence"]] == ["ann"]
                taken = await on_two.post(
                    "/api/documents/api/locks",
                    headers=as_bob,
                    json={"op": "acquire", "section": ["meta"]},
                )
                assert taken.status_code == 200, taken.text
                refused = await on_one.post(
                    "/api/documents/api/locks",
                    headers=as_ann,
                    json={"op": "acquire", "section": ["meta"]},
                )
                assert refused.status_code == 409, refused.text
                made = await on_two.post(
                    "/api/documents/api/versions", headers=as_ann, json={"label": "v1"}
                )
                assert made.status_code == 200 and made.json()["version"]["label"] == "v1"
                # (The lock is on "meta"; an import is refused while the document has locks.)
                released = await on_two.post(
                    "/api/documents/api/locks",
                    headers=as_bob,
                    json={
                        "op": "release",
                        "section": ["meta"],
                        "fence": taken.json()["lock"]["fence"],
                    },
                )
                assert released.status_code == 200, released.text
                imported = await on_two.put(
                    "/api/documents/api/content",
                    headers=as_ann,
                    json={"roots": {"title": {"type": "text", "text": "From two"}}},
                )
                assert imported.status_code == 200, imported.text
        # (the client left; the import reached the owner's document)
        async with httpx.AsyncClient(base_url=two.http) as on_two:
            now = await on_two.get("/api/documents/api/versions/now", headers=as_ann)
        assert now.status_code == 200, now.text
        assert "From two" in json.dumps(now.json())


async def test_a_lock_outlives_the_owner_that_granted_it() -> None:
    """Ann locks a section through node one, the owner, which is then killed. Node two
    takes the document over with its locks: Bob is refused the section and his write
    into it is rolled back; Ann, reconnected to node two, renews her lock with her
    fencing number, and new fencing numbers are higher."""
    async with cluster() as nodes:
        one = await nodes.start("one", "--lease-ttl", "1", "--secret", SECRET)
        two = await nodes.start("two", "--lease-ttl", "1", "--secret", SECRET)
        ann_token, bob_token = mint(SECRET, user="ann"), mint(SECRET, user="bob")
        ann_doc = Doc()
        async with yclient(one.url, f"kept?token={ann_token}", doc=ann_doc) as ann:
            await ann.request_persisted()
            ann.doc.get("meta", type=Map)["title"] = "Draft"
            await ann.flush()
            await ann.wait_persisted()
            taken = await lock_request(ann, op="acquire", section=["meta"], id=1, ttl=60)
            assert taken["ok"] is True, taken
            one.process.kill()
            await ann.closed.wait()
        fence = taken["lock"]["fence"]  # type: ignore[index]
        # Bob, on node two: the document moves there once node one's lease lapses.
        await eventually(
            lambda: owned_by(two, f"kept?token={bob_token}"), what="node two took it over"
        )
        async with yclient(two.url, f"kept?token={bob_token}") as bob:
            refused = await lock_request(bob, op="acquire", section=["meta"], id=2)
            assert refused["ok"] is False and "locked" in str(refused["error"]), refused
            bob.doc.get("meta", type=Map)["title"] = "Bob's"
            await bob.flush()
            await bob.wait_for(lambda: bob.doc.get("meta", type=Map).get("title") == "Draft")
            other = await lock_request(bob, op="acquire", section=["body"], id=3)
            assert other["ok"] is True and other["lock"]["fence"] > fence  # type: ignore[index]
        async with yclient(two.url, f"kept?token={ann_token}", doc=ann_doc) as ann:
            renewed = await lock_request(ann, op="renew", section=["meta"], fence=fence, id=4)
            assert renewed["ok"] is True, renewed


async def owned_by(node: Node, document: str) -> bool:
    """Whether `node` owns `document` (claimed, if nobody else can have it, by a
    connection that is closed at once)."""
    try:
        async with yclient(node.url, document, open_timeout=2):
            pass
    except Exception:  # noqa: BLE001 - relayed to a dead owner: no sync comes
        return False
    owns = (await health(node)).get("owns", [])
    return document.split("?")[0] in owns  # type: ignore[operator]


async def test_housekeeping_happens_once_per_document_on_its_owner() -> None:
    """Clients on both nodes edit one document, then stop: only the owner holds a room
    of it (the edge relays, and keeps none), so the automatic version after the quiet
    is made once, by the owner."""
    async with cluster() as nodes:
        quiet = ("--version-after-quiet", "0.5", "--version-min-interval", "0")
        one = await nodes.start("one", *quiet)
        two = await nodes.start("two", *quiet)
        async with yclient(one.url, "kept-once") as a, yclient(two.url, "kept-once") as b:
            for i in range(5):
                a.doc.get("body", type=Text).insert(0, f"a{i} ")
                b.doc.get("body", type=Text).insert(0, f"b{i} ")
                await a.flush()
                await b.flush()
            await a.wait_for(lambda: "b4" in text_of(a))
            rooms = [(await health(node))["rooms"] for node in (one, two)]
            assert sorted(rooms) == [0, 1], f"one room, on the owner: {rooms}"

            async def automatic() -> list[dict[str, object]]:
                async with httpx.AsyncClient(base_url=two.http) as http:
                    listed = (await http.get("/api/documents/kept-once/versions")).json()
                return [v for v in listed["versions"] if v["automatic"]]

            async def one_version() -> bool:
                return len(await automatic()) >= 1

            await eventually(one_version, what="the automatic version after the quiet")
            assert len(await automatic()) == 1


async def test_a_relayed_client_over_its_backlog_is_closed_with_1013() -> None:
    """With --relay-backlog 2: the owner's database is cut off, so a relayed client's
    version request must wait (it holds the edit sent before it, which cannot be
    stored). Its next frames queue on the owner, two at most: the third closes it with
    1013. The client on the owner itself is untouched."""
    async with Proxy(5432) as database, cluster() as nodes:
        through = nodes.database_url.replace(":5432/", f":{database.port}/")
        one = await nodes.start("one", "--relay-backlog", "2", database_url=through)
        two = await nodes.start("two", "--relay-backlog", "2")
        async with yclient(one.url, "backlog") as owner_side:
            async with yclient(two.url, "backlog") as relayed:
                database.cut()
                relayed.doc.get("body", type=Text).insert(0, "waits for the disk")
                await relayed.flush()
                await relayed.send(
                    protocol.encode_version_request(json.dumps({"id": 1, "op": "create"}))
                )
                for _ in range(3):
                    await relayed.send(protocol.encode_query_awareness())
                with anyio.fail_after(30):
                    await relayed.closed.wait()
                assert relayed.close_code == 1013, (relayed.close_code, relayed.close_reason)
            await owner_side.wait_for(lambda: "waits for the disk" in text_of(owner_side))
            database.restore()
            await owner_side.round_trip()
            assert not owner_side.closed.is_set()


async def test_a_node_stopped_cleanly_gives_its_documents_up_at_once() -> None:
    """Removing a node without downtime: the owner is stopped with SIGTERM while
    writers on both nodes go on. It closes its clients with 1001, stores what it
    accepted and gives its documents up: the other node takes them over without
    waiting for a lease to lapse (the lease here is long: 30 s), and every
    acknowledged marker is kept."""
    async with cluster() as nodes:
        one = await nodes.start("one", "--lease-ttl", "30")
        two = await nodes.start("two", "--lease-ttl", "30")
        async with yclient(one.url, "drained"):
            pass
        writers = [Writer("on-one", [one.url, two.url]), Writer("on-two", [two.url])]
        async with writing("drained", writers, what="both writers acknowledged by node two"):
            stopped_at = anyio.current_time()
            one.process.terminate()
        assert await one.process.wait() == 0
        stall = max(w.longest_stall(stopped_at, anyio.current_time()) for w in writers)
        print(f"longest stall when the owner stopped cleanly: {stall:.2f} s (lease ttl 30 s)")
        assert 1001 in writers[0].closes, writers[0].closes
        await assert_kept(two.url, "drained", writers)


async def test_a_stopping_node_closes_the_clients_it_relays_with_1001() -> None:
    async with cluster() as nodes:
        one = await nodes.start("one")
        two = await nodes.start("two")
        async with yclient(one.url, "relayed-out"), yclient(two.url, "relayed-out") as relayed:
            two.process.terminate()
            with anyio.fail_after(30):
                await relayed.closed.wait()
            assert relayed.close_code == 1001, (relayed.close_code, relayed.close_reason)
            assert await two.process.wait() == 0


async def test_a_document_nobody_uses_on_its_owner_follows_its_next_user() -> None:
    """Node one owns the document while a client of it is there; once the client has
    gone and the room is unloaded, node one gives the document up, and the next client,
    on node two, makes node two its owner: documents go where they are used."""
    async with cluster() as nodes:
        one = await nodes.start("one", "--unload-grace", "0.2")
        two = await nodes.start("two", "--unload-grace", "0.2")
        async with yclient(one.url, "wanders") as first:
            first.doc.get("body", type=Text).insert(0, "opened on one")
            await first.flush()
            await first.round_trip()
        assert (await health(one)).get("owns") == ["wanders"]

        async def given_up() -> bool:
            return (await health(one)).get("owns") == []

        await eventually(given_up, what="node one gave the unused document up")
        async with yclient(two.url, "wanders") as second:
            assert text_of(second) == "opened on one"
        assert (await health(two)).get("owns") == ["wanders"]


async def test_postgresql_out_of_reach_holds_acknowledgements_and_nothing_else() -> None:
    """Node one's connection to PostgreSQL is cut (a proxy) under a writer and a
    reader on it: the reader keeps getting the writer's edits, nothing is
    acknowledged, the node says so once in its log; once the database can be reached
    again, the writer's edits are acknowledged and stored."""
    async with Proxy(5432) as database, cluster() as nodes:
        through = nodes.database_url.replace(":5432/", f":{database.port}/")
        one = await nodes.start("one", "--lease-ttl", "30", database_url=through)
        async with (
            yclient(one.url, "unreachable") as writer,
            yclient(one.url, "unreachable") as reader,
        ):
            await writer.request_persisted()
            writer.doc.get("body", type=Text).insert(0, "stored. ")
            await writer.flush()
            await writer.wait_persisted()
            database.cut()
            acked = writer.persisted
            writer.doc.get("body", type=Text).insert(len(text_of(writer)), "held. ")
            await writer.flush()
            await reader.wait_for(lambda: text_of(reader) == "stored. held. ")
            await eventually(
                lambda: any("cannot be reached" in line for line in one.log),
                what="the node's log says the store cannot be reached",
            )
            assert writer.persisted == acked, "nothing acknowledged while the store is away"
            database.restore()
            await writer.wait_persisted(timeout=30)
        async with yclient(one.url, "unreachable") as later:
            assert text_of(later) == "stored. held. "
