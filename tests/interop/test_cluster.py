"""Interop with a cluster: the real npm `yjs` + `y-websocket` clients, in Node, spread
over two real `collab-engine serve` nodes on one PostgreSQL and one Redis."""

from __future__ import annotations

from contextlib import AsyncExitStack
from functools import partial

import anyio
import pytest

from tests.interop.test_yjs_client import _normalise, node_client, node_executable
from tests.server.test_cluster import cluster

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.timeout(90)]


async def test_npm_clients_on_two_nodes_converge() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/cluster"
    with anyio.fail_after(80):
        async with cluster() as nodes, AsyncExitStack() as stack:
            one = await nodes.start("one")
            two = await nodes.start("two")
            clients = [
                await stack.enter_async_context(node_client(url, room, label=label))
                for url, label in ((one.url, "a"), (two.url, "b"), (two.url, "c"))
            ]
            async with anyio.create_task_group() as group:
                for seed, client in enumerate(clients, start=1):
                    group.start_soon(
                        partial(
                            client.request,
                            "randomEdits",
                            count=80,
                            seed=seed * 7919,
                            tag=client.label,
                        )
                    )
            done = [f"done:{client.label}" for client in clients]
            for client in clients:
                await client.wait({"mapHas": done}, timeout=30)
            states = [await client.state() for client in clients]
            first = states[0]
            for state in states[1:]:
                assert state["textSha256"] == first["textSha256"]
                assert _normalise(state["map"]) == _normalise(first["map"])
            assert first["textLength"] > 0
