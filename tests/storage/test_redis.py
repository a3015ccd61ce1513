"""RedisBus on a real Redis at 127.0.0.1:6379 (a fresh key prefix per test, its keys
deleted afterwards): order both ways, notices everywhere, clusters apart, and every way
of losing something reported on both sides (a full queue, a killed connection, a
reader left behind by trimming, no Redis at all)."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from collab_engine.clock import ManualClock
from storage.redis import ENTRY_BYTES, RedisBus, inbox_key
from tests.proxy import Proxy
from tests.services import REDIS, need
from tests.timing import advance, eventually

pytestmark = pytest.mark.anyio


class Heard:
    """A listener that writes down what it hears, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, bytes]] = []

    def received(self, sender: str, bodies: Sequence[bytes]) -> None:
        self.events += [("body", sender, body) for body in bodies]

    def reset(self, node: str) -> None:
        self.events.append(("reset", node, b""))

    def noticed(self, sender: str, bodies: Sequence[bytes]) -> None:
        self.events += [("notice", sender, body) for body in bodies]

    def notices_lost(self) -> None:
        self.events.append(("notices lost", "", b""))

    def bodies(self, sender: str) -> list[bytes]:
        return [body for kind, node, body in self.events if kind == "body" and node == sender]

    def notices(self, sender: str) -> list[bytes]:
        return [body for kind, node, body in self.events if kind == "notice" and node == sender]

    def resets(self) -> list[str]:
        return [node for kind, node, _ in self.events if kind == "reset"]

    def lost_notices(self) -> int:
        return sum(1 for kind, _, _ in self.events if kind == "notices lost")


@pytest.fixture
async def new_prefix() -> AsyncIterator[Callable[[], str]]:
    """Makes key prefixes no other test uses; their keys are deleted afterwards."""
    need("Redis", 6379)
    made: list[str] = []

    def new() -> str:
        made.append(f"test-bus-{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield new
    async with Redis.from_url(REDIS) as admin:
        for prefix in made:
            keys = [key async for key in admin.scan_iter(match=f"{prefix}:*")]
            if keys:
                await admin.delete(*keys)


@asynccontextmanager
async def running(
    prefix: str, *nodes: str, url: str = REDIS, **options: Any
) -> AsyncIterator[tuple[list[RedisBus], list[Heard]]]:
    """A running bus for each of `nodes` of the cluster `prefix`, and what each hears."""
    heard = [Heard() for _ in nodes]
    async with AsyncExitStack() as stack:
        buses = [
            await stack.enter_async_context(
                RedisBus(url, prefix=prefix, node=node, listener=listener, **options)
            )
            for node, listener in zip(nodes, heard, strict=True)
        ]
        yield buses, heard


async def kill(client_name: str) -> int:
    """Kill every Redis connection named `client_name`, from another connection; how
    many there were."""
    async with Redis.from_url(REDIS) as admin:
        clients = [c for c in await admin.client_list() if c.get("name") == client_name]
        for client in clients:
            await admin.client_kill_filter(_id=client["id"])
    return len(clients)


@asynccontextmanager
async def proxy() -> AsyncIterator[Proxy]:
    """A proxy to the machine's Redis (`tests/proxy.py`)."""
    async with Proxy(6379) as through:
        yield through


def url_of(through: Proxy) -> str:
    return f"redis://127.0.0.1:{through.port}/0"


def moving(clock: ManualClock, condition: Callable[[], bool]) -> Callable[[], Any]:
    """`condition`, checked each time after `clock` has moved on a little (for
    `eventually`, when what is awaited waits for the bus's clock: a backoff, a ping)."""

    async def check() -> bool:
        await advance(clock, 0.25, step=0.25)
        return condition()

    return check


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_two_nodes_exchange_ten_thousand_bodies_each_way_in_order(
    new_prefix: Callable[[], str],
) -> None:
    """10,000 bodies each way, sent in bursts while the other way flows too (an empty
    body, and bodies larger than an entry, among them): every one arrives, in order,
    and nobody hears a reset."""
    async with running(new_prefix(), "a", "b") as ((a, b), (heard_a, heard_b)):
        to_b = [b"a to b %d" % i for i in range(10_000)]
        to_a = [b"b to a %d" % i for i in range(10_000)]
        to_b[10], to_b[5_000], to_a[7_000] = b"", bytes(3 * ENTRY_BYTES), b"x" * (ENTRY_BYTES + 1)
        for i in range(10_000):
            a.send("b", to_b[i])
            b.send("a", to_a[i])
            if i % 100 == 99:
                await anyio.lowlevel.checkpoint()
        await eventually(
            lambda: len(heard_b.bodies("a")) == len(heard_a.bodies("b")) == 10_000,
            what="every body arrived",
        )
        assert heard_b.bodies("a") == to_b
        assert heard_a.bodies("b") == to_a
        assert heard_a.resets() == heard_b.resets() == []


async def test_notices_reach_every_node_including_the_sender(
    new_prefix: Callable[[], str],
) -> None:
    async with running(new_prefix(), "a", "b", "c") as ((a, b, _), heard):
        a.notify(b"grants of doc-1")
        b.notify(b"grants of doc-2")
        b.notify(b"grants of doc-3")
        for listener in heard:
            await eventually(
                lambda listener=listener: (
                    listener.notices("a") == [b"grants of doc-1"]
                    and listener.notices("b") == [b"grants of doc-2", b"grants of doc-3"]
                ),
                what="every node has every notice",
            )
            assert listener.lost_notices() == 0
            assert listener.resets() == []


async def test_two_clusters_on_one_redis_do_not_see_each_other(
    new_prefix: Callable[[], str],
) -> None:
    """Two clusters with the same node names, apart by their prefixes."""
    async with (
        running(new_prefix(), "a", "b") as ((a1, _), (heard_a1, heard_b1)),
        running(new_prefix(), "a", "b") as ((a2, _), (heard_a2, heard_b2)),
    ):
        a1.send("b", b"first cluster")
        a1.notify(b"first notice")
        a2.send("b", b"second cluster")
        a2.notify(b"second notice")
        for heard_b, body, notice in (
            (heard_b1, b"first cluster", b"first notice"),
            (heard_b2, b"second cluster", b"second notice"),
        ):
            await eventually(
                lambda heard_b=heard_b, body=body, notice=notice: (
                    heard_b.events == [("body", "a", body), ("notice", "a", notice)]
                    or heard_b.events == [("notice", "a", notice), ("body", "a", body)]
                ),
                what="each cluster's node b has its own cluster's body and notice",
            )
        assert heard_a1.events == [("notice", "a", b"first notice")]
        assert heard_a2.events == [("notice", "a", b"second notice")]


async def test_a_full_queue_resets_the_link_on_both_sides(new_prefix: Callable[[], str]) -> None:
    """The writer cannot run between synchronous sends: the fourth 30-byte body does not
    fit 100 bytes. What was queued is dropped, and so is what is sent before the reset
    is reported; the sender hears the reset once `send` has returned (never inside it),
    and the receiver hears it before anything sent after it."""
    async with running(new_prefix(), "a", "b", max_pending_bytes=100) as (
        (a, _),
        (heard_a, heard_b),
    ):
        a.send("b", b"hello")
        await eventually(lambda: heard_b.bodies("a") == [b"hello"], what="the first body arrived")
        for i in range(6):
            a.send("b", b"%30d" % i)
        assert heard_a.events == []
        await eventually(lambda: heard_a.events == [("reset", "b", b"")], what="the sender's reset")
        await eventually(lambda: heard_b.resets() == ["a"], what="the receiver heard the reset")
        a.send("b", b"after")
        await eventually(lambda: heard_b.bodies("a")[-1:] == [b"after"], what="bodies flow again")
        assert heard_b.events == [
            ("body", "a", b"hello"),
            ("reset", "a", b""),
            ("body", "a", b"after"),
        ]
        assert heard_a.events == [("reset", "b", b"")]


async def test_a_full_queue_of_notices_is_heard_as_lost_notices_everywhere(
    new_prefix: Callable[[], str],
) -> None:
    async with running(new_prefix(), "a", "b", max_pending=2) as ((a, _), heard):
        for i in range(3):
            a.notify(b"notice %d" % i)
        for listener in heard:
            await eventually(lambda listener=listener: listener.lost_notices() == 1)
            assert listener.notices("a") == []
        a.notify(b"after")
        for listener in heard:
            await eventually(lambda listener=listener: listener.notices("a") == [b"after"])


async def test_killed_connections_reset_both_sides_then_bodies_flow_again(
    new_prefix: Callable[[], str],
) -> None:
    """Every connection of node a's bus killed from outside (`CLIENT KILL`): a's reader
    may have missed something, so both sides hear a reset (b from a's new generation);
    then bodies flow both ways again, after the resets."""
    async with running(new_prefix(), "a", "b") as ((a, b), (heard_a, heard_b)):
        a.send("b", b"before")
        b.send("a", b"before")
        await eventually(lambda: heard_a.bodies("b") == heard_b.bodies("a") == [b"before"])
        assert await kill(a.client_name) == 3
        await eventually(
            lambda: "b" in heard_a.resets() and "a" in heard_b.resets(),
            what="both sides heard a reset",
        )
        assert heard_a.lost_notices() >= 1
        a.send("b", b"after")
        b.send("a", b"after")
        await eventually(
            lambda: heard_a.bodies("b") == heard_b.bodies("a") == [b"before", b"after"]
        )
        for heard, peer in ((heard_a, "b"), (heard_b, "a")):
            assert [event for event in heard.events if event[1] == peer] == [
                ("body", peer, b"before"),
                ("reset", peer, b""),
                ("body", peer, b"after"),
            ]


async def test_a_reader_left_behind_by_trimming_resets_both_sides(
    new_prefix: Callable[[], str],
) -> None:
    """Node b reads through a proxy that holds back Redis's answers; node a writes
    with `stream_maxlen=1`, so b's inbox is trimmed past where b reads. Released, b
    finds the gap: it hears a reset, and so does a (b's new generation)."""
    prefix = new_prefix()
    async with (
        proxy() as through,
        running(prefix, "a", stream_maxlen=1) as ((a,), (heard_a,)),
        running(prefix, "b", url=url_of(through)) as (_, (heard_b,)),
        Redis.from_url(REDIS) as admin,
    ):
        inbox = inbox_key(prefix, "b")

        async def added(count: int) -> bool:
            info = await admin.xinfo_stream(inbox)
            return bool(info["entries-added"] >= count)

        a.send("b", b"first")
        await eventually(lambda: heard_b.bodies("a") == [b"first"])
        through.hold()
        a.send("b", b"held")  # answers b's waiting read: the answer waits in the proxy
        await eventually(lambda: added(2))
        [(held_id, _)] = await admin.xrevrange(inbox, count=1)
        for _ in range(20):  # entries too large to share a node of the stream: trimmed
            a.send("b", bytes(2 * ENTRY_BYTES))
        a.send("b", b"last")
        await eventually(lambda: added(23))
        assert await admin.xrange(inbox, min=held_id, max=held_id) == []  # trimmed
        through.release()
        await eventually(lambda: heard_b.bodies("a")[-1:] == [b"last"], what="b read on")
        assert heard_b.resets() == ["a"]
        assert heard_b.events[:3] == [
            ("body", "a", b"first"),
            ("body", "a", b"held"),
            ("reset", "a", b""),
        ]
        assert len(heard_b.bodies("a")) < 23
        await eventually(lambda: heard_a.resets() == ["b"], what="a heard the reset too")


async def test_without_redis_the_bus_is_unhealthy_keeps_trying_and_stops_cleanly(
    new_prefix: Callable[[], str],
) -> None:
    """A bus pointed at a closed port: never healthy; what it is given to send is
    reported lost (a reset), it goes on trying as its clock moves, nothing raises, and
    its `async with` ends."""
    clock = ManualClock()
    url = f"redis://127.0.0.1:{closed_port()}/0"
    with anyio.fail_after(30):
        async with running(new_prefix(), "a", url=url, clock=clock, health_timeout=1.0) as (
            (a,),
            (heard,),
        ):
            assert not a.healthy
            a.send("b", b"body")
            a.notify(b"notice")
            await eventually(lambda: heard.resets() == ["b"], what="the body reported lost")
            await advance(clock, 10.0, step=0.25)
            a.send("b", b"another")
            await eventually(moving(clock, lambda: heard.resets() == ["b", "b"]))
            assert not a.healthy


async def test_healthy_follows_whether_redis_answers(new_prefix: Callable[[], str]) -> None:
    """Healthy while Redis answers; unhealthy once it has not for `health_timeout` of
    the bus's clock (the proxy closed); healthy again when it answers again, with every
    link the reader may have missed something on reset."""
    clock = ManualClock()
    prefix = new_prefix()
    async with (
        proxy() as through,
        running(prefix, "b") as ((b,), _),
        running(prefix, "a", url=url_of(through), clock=clock, health_timeout=1.0) as (
            (a,),
            (heard,),
        ),
    ):
        b.send("a", b"hello")
        await eventually(lambda: a.healthy and heard.bodies("b") == [b"hello"])
        through.cut()
        await eventually(moving(clock, lambda: not a.healthy), what="unhealthy")
        through.restore()
        await eventually(moving(clock, lambda: a.healthy), what="healthy again")
        await eventually(
            moving(clock, lambda: heard.resets() == ["b"] and heard.lost_notices() == 1),
            what="the reader is back, and says what it may have missed",
        )


async def test_a_listener_that_raises_is_logged_and_the_bus_goes_on(
    new_prefix: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    class Raising(Heard):
        def received(self, sender: str, bodies: Sequence[bytes]) -> None:
            if b"boom" in bodies:
                raise RuntimeError("the listener's own bug")
            super().received(sender, bodies)

    prefix = new_prefix()
    raising = Raising()
    async with (
        running(prefix, "a") as ((a,), _),
        RedisBus(REDIS, prefix=prefix, node="b", listener=raising),
    ):
        with caplog.at_level(logging.ERROR, logger="storage.redis"):
            a.send("b", b"boom")
            await eventually(lambda: any(r.exc_info for r in caplog.records), what="logged")
        a.send("b", b"fine")
        await eventually(lambda: raising.bodies("a") == [b"fine"])
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.name == "storage.redis" and "the listener's own bug" in caplog.text


async def test_a_notice_whose_write_failed_is_heard_as_lost_everywhere_at_once(
    new_prefix: Callable[[], str],
) -> None:
    """Node a's XADD of a notice is held in a proxy, which is then closed: the write
    failed, so the notice may be lost (here it is). Every node hears `notices_lost`
    as soon as a reaches Redis again, without waiting for a's next notice: a notice
    says what changed (a revocation), and must not be missed silently."""
    prefix = new_prefix()
    async with (
        proxy() as through,
        running(prefix, "b") as ((_,), (heard_b,)),
        running(prefix, "a", url=url_of(through)) as ((a,), (heard_a,)),
    ):
        a.notify(b"before")
        await eventually(lambda: heard_b.notices("a") == [b"before"])
        through.hold()
        a.notify(b"grants of doc-1 changed")
        await eventually(lambda: any(b"XADD" in chunk for chunk in through.held))
        through.cut()
        through.restore()
        await eventually(lambda: heard_b.lost_notices() == 1, what="b heard of the loss")
        assert heard_b.notices("a") == [b"before"]
        assert heard_a.lost_notices() >= 1
