"""RedisBus on a real Redis (127.0.0.1:6379, a fresh key prefix per test): order per
link, notices to every node, clusters apart by prefix, and every loss reported on
both sides of the link, never silent."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from storage.redis import RedisBus
from tests.services import REDIS, need
from tests.timing import eventually

pytestmark = pytest.mark.anyio


class Heard:
    """A listener that keeps everything it is told."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self.resets: list[str] = []
        self.notices: list[bytes] = []
        self.notices_lost = 0

    def received(self, sender: str, bodies: Sequence[bytes]) -> None:
        self.bodies.extend((sender, body) for body in bodies)

    def reset(self, node: str) -> None:
        self.resets.append(node)

    def noticed(self, sender: str, bodies: Sequence[bytes]) -> None:
        self.notices.extend(bodies)

    def lost(self) -> None:
        self.notices_lost += 1


class _Listener:
    """`Heard` as the bus's listener (`notices_lost` is a count there)."""

    def __init__(self, heard: Heard) -> None:
        self.received = heard.received
        self.reset = heard.reset
        self.noticed = heard.noticed
        self.notices_lost = heard.lost


def listener(heard: Heard) -> Any:
    return _Listener(heard)


@asynccontextmanager
async def buses(
    *nodes: str, prefix: str | None = None, **options: Any
) -> AsyncIterator[tuple[list[RedisBus], list[Heard]]]:
    """Running buses for `nodes`, on one prefix (a fresh one by default); the prefix's
    keys are deleted afterwards."""
    need("Redis", 6379)
    prefix = prefix or f"test-{uuid.uuid4().hex[:8]}"
    heard = [Heard() for _ in nodes]
    async with AsyncExitStack() as stack:
        running = [
            await stack.enter_async_context(
                RedisBus(REDIS, prefix=prefix, node=node, listener=listener(h), **options)
            )
            for node, h in zip(nodes, heard, strict=True)
        ]
        try:
            yield running, heard
        finally:
            redis = Redis.from_url(REDIS)
            keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()


async def test_bodies_arrive_in_order_both_ways_and_notices_everywhere() -> None:
    async with buses("a", "b") as ([a, b], [heard_a, heard_b]):
        for i in range(10_000):
            a.send("b", b"a%d" % i)
            b.send("a", b"b%d" % i)
        a.notify(b"grants changed")
        await eventually(lambda: len(heard_a.bodies) == len(heard_b.bodies) == 10_000)
        assert heard_b.bodies == [("a", b"a%d" % i) for i in range(10_000)]
        assert heard_a.bodies == [("b", b"b%d" % i) for i in range(10_000)]
        await eventually(lambda: heard_a.notices == heard_b.notices == [b"grants changed"])
        assert heard_a.resets == heard_b.resets == []
        assert a.healthy and b.healthy


async def test_two_clusters_on_one_redis_do_not_hear_each_other() -> None:
    async with buses("a") as ([first], [heard_first]), buses("a", "b") as ([_, b], heard):
        b.send("a", b"to the other cluster's a")
        first.notify(b"first cluster only")
        await eventually(lambda: heard[0].bodies == [("b", b"to the other cluster's a")])
        await eventually(lambda: heard_first.notices == [b"first cluster only"])
        assert heard_first.bodies == [] and heard[0].notices == heard[1].notices == []


async def test_a_killed_connection_resets_the_links_on_both_sides_then_flows_again() -> None:
    async with buses("a", "b") as ([a, b], [heard_a, heard_b]):
        a.send("b", b"before")
        b.send("a", b"hello")
        await eventually(lambda: heard_b.bodies == [("a", b"before")] and bool(heard_a.bodies))
        redis = Redis.from_url(REDIS)
        try:
            # Only this test's connections (the bus names them): other tests share Redis.
            clients = await redis.client_list()
            ours = [c["id"] for c in clients if c["name"].startswith(f"{a.prefix}:a:")]
            for client_id in ours:
                await redis.client_kill_filter(_id=client_id)
        finally:
            await redis.aclose()
        assert len(ours) == 2, "a's bus holds a writer and a reader connection"
        # a's reader lost its connection: it resets b, and tells b so.
        await eventually(lambda: "b" in heard_a.resets and "a" in heard_b.resets)
        a.send("b", b"after")
        await eventually(lambda: heard_b.bodies[-1:] == [("a", b"after")])
        await eventually(lambda: heard_a.notices_lost >= 1)


async def test_a_full_queue_is_dropped_and_reported_on_both_sides() -> None:
    async with buses("a", "b", max_pending=10) as ([a, b], [heard_a, heard_b]):
        for i in range(11):  # synchronously: the writer has not run; the 11th overflows
            a.send("b", b"%d" % i)
        await eventually(lambda: heard_a.resets == ["b"])
        a.send("b", b"next")
        await eventually(lambda: heard_b.bodies == [("a", b"next")])
        assert heard_b.resets == ["a"], "the receiver heard of the loss too"


async def test_a_sender_that_restarted_is_reported_as_a_reset() -> None:
    """b sends, stops, and starts again under the same id (a restarted process):
    its new generation tells a that whatever was in flight from the old b is void."""
    need("Redis", 6379)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    async with buses("a", prefix=prefix) as (_, [heard_a]):
        async with buses("b", prefix=prefix) as ([b], _):
            b.send("a", b"first")
            await eventually(lambda: heard_a.bodies == [("b", b"first")])
        async with buses("b", prefix=prefix) as ([b], _):
            b.send("a", b"again")
            await eventually(lambda: heard_a.bodies[-1:] == [("b", b"again")])
        assert heard_a.resets == ["b"], "a new generation of b is reported as a reset"


async def test_a_bus_without_redis_is_unhealthy_and_keeps_trying() -> None:
    async with RedisBus(
        "redis://127.0.0.1:1/0", prefix="nowhere", node="a", listener=listener(Heard())
    ) as bus:
        bus.send("b", b"lost")
        assert not bus.healthy
    assert not bus.healthy


async def test_a_gap_in_a_link_is_reset_on_both_sides() -> None:
    """A batch of b's lost on the way to a (as when a stream is trimmed under a reader
    that fell behind, or Redis lost it): the next one does not follow the last a had.
    a reports the reset and tells b, which reports it too; then bodies flow again."""
    async with buses("a", "b") as ([a, b], [heard_a, heard_b]):
        b.send("a", b"one")
        await eventually(lambda: heard_a.bodies == [("b", b"one")])
        b._sequencing.stamp("a")  # noqa: SLF001 - batch 2, numbered and never delivered
        b.send("a", b"three")
        await eventually(lambda: heard_a.resets == ["b"] and heard_b.resets == ["a"])
        assert heard_a.bodies[-1] == ("b", b"three"), "the batch after the gap is delivered"
        b.send("a", b"four")
        await eventually(lambda: heard_a.bodies[-1] == ("b", b"four"))
        assert heard_a.resets == ["b"] and heard_b.resets == ["a"], "the link is whole again"
