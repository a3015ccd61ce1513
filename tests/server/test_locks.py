"""Locks over real connections: what one user's lock requests may cost the others.

The attack this guards against: sections of megabyte keys, and many leases, each
change re-sending every lease to every reader (and every joiner). Here the requests
are bounded (key and section length, leases per user and per document, refused with
`ok: false` on the WebSocket and 400 or 429 over HTTP), and the readers are sent a
bounded summary at most once per `--lock-mirror-interval`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from collab_engine import protocol
from collab_engine.locks import LockLimits
from server.app import App
from server.settings import Settings
from tests.conftest import TEST_ENGINE, running_server
from tests.timing import eventually

pytestmark = pytest.mark.anyio

LIMITS = LockLimits()


class Reader:
    """A raw WebSocket client that reads everything and counts the bytes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received = 0
        self.frames = 0
        self.server_states: list[dict[str, Any] | None] = []
        """Every state of the server's own entry received, in order (None: removed)."""
        self.server_id: int | None = None

    async def run(self) -> None:
        async for frame in self.ws:
            assert isinstance(frame, bytes)
            self.received += len(frame)
            self.frames += 1
            message = protocol.decode(frame)
            if isinstance(message, protocol.AwarenessUpdate):
                for entry in message.entries:
                    if entry.client_id == self.server_id:
                        state = None if entry.state is None else json.loads(entry.state)
                        self.server_states.append(state)


async def lock(ws: ClientConnection, **request: Any) -> dict[str, Any]:
    """Send one lock request on `ws` and return its reply."""
    await ws.send(protocol.encode_lock_request(json.dumps(request)))
    while True:
        frame = await ws.recv()
        assert isinstance(frame, bytes)
        message = protocol.decode(frame)
        if isinstance(message, protocol.LockReply):
            reply: dict[str, Any] = json.loads(message.body)
            return reply


async def test_a_flood_of_lock_requests_costs_a_reader_less_than_it_costs_the_sender(
    server: tuple[App, str],
) -> None:
    """The issue's attack, over real sockets: one request of 8 keys of 1 MB, then
    hundreds of acquisitions and releases of the largest sections allowed. The reader
    receives less than a quarter of what the attacker sends, is not evicted, and ends
    with the server's entry removed (no lease left)."""
    app, url = server
    async with (
        connect(f"{url}/flood", max_size=None) as reader_ws,
        connect(f"{url}/flood", max_size=None) as attacker,
        anyio.create_task_group() as tg,
    ):
        await eventually(
            lambda: "flood" in app.engine.rooms and len(app.engine.rooms["flood"].peers) == 2,
            what="both connections in the room",
        )
        room = app.engine.rooms["flood"]
        reader = Reader(reader_ws)
        reader.server_id = room.presence.server_client_id
        tg.start_soon(reader.run)
        sent = 0

        async def request(**body: Any) -> dict[str, Any]:
            nonlocal sent
            sent += len(json.dumps(body)) + 3
            return await lock(attacker, **body)

        huge = await request(id=1, op="acquire", section=["k" * 1_000_000] * 8)
        assert huge == {
            "id": 1,
            "ok": False,
            "error": f"a section's key is at most {LIMITS.max_key_length} bytes",
        }
        assert room.locks.leases == []
        # Refused requests cost the reader nothing; what is measured from here on is
        # what granted ones cost (the first 8 MB would make any ratio look good).
        sent = 0
        # The largest section allowed: 4 keys of 128 bytes.
        key = "k" * (LIMITS.max_key_length - 3)

        def section(n: int) -> list[str]:
            return [key + "a", key + "b", key + "c", f"{key}{n:03d}"]

        with anyio.fail_after(60):
            for _ in range(10):
                fences = []
                for n in range(LIMITS.per_user):
                    reply = await request(op="acquire", section=section(n))
                    assert reply["ok"], reply
                    fences.append(reply["lock"]["fence"])
                over = await request(op="acquire", section=section(99))
                assert over["ok"] is False and "16 locks" in over["error"]
                for n, fence in enumerate(fences):
                    assert (await request(op="release", section=section(n), fence=fence))["ok"]
            # The reader ends with the server's entry removed: nothing is locked.
            await eventually(
                lambda: bool(reader.server_states) and reader.server_states[-1] is None,
                what="the server's entry removed",
            )
        assert sent > 150_000
        assert reader.received * 4 < sent, (reader.received, sent)
        assert all(
            len(json.dumps(state)) < LIMITS.summary_size + 200
            for state in reader.server_states
            if state is not None
        )
        assert len(room.peers) == 2, "nobody was evicted"
        tg.cancel_scope.cancel()


async def test_http_leases_are_bounded_and_refused_with_a_reason() -> None:
    """Over HTTP: a 60 KB key gets 400, a user's 17th lease 429, the document's
    lease past its limit 429; a joiner then receives a bounded summary."""
    limits = LockLimits(per_document=20)
    settings = Settings(
        host="127.0.0.1",
        port=0,
        ping_interval=None,
        engine=replace(TEST_ENGINE, lock_limits=limits),
    )
    async with running_server(settings) as (app, url):
        base = url.replace("ws://", "http://")
        async with httpx.AsyncClient(base_url=base) as http:
            path = "/api/documents/held/locks"
            big = await http.post(path, json={"op": "acquire", "section": ["k" * 60_000]})
            assert big.status_code == 400
            assert big.json() == {"error": "a section's key is at most 128 bytes"}
            long = await http.post(path, json={"op": "acquire", "section": ["k" * 100] * 6})
            assert long.status_code == 400
            assert long.json() == {"error": "a section's keys are at most 512 bytes in all"}
            key = "k" * 120
            for n in range(limits.per_user):
                took = await http.post(
                    path,
                    json={"op": "acquire", "section": [key, key, key, f"{n}"], "ttl": 600},
                )
                assert took.status_code == 200, took.text
            over = await http.post(path, json={"op": "acquire", "section": [key, key, "x"]})
            assert over.status_code == 429
            assert over.json() == {
                "error": "anonymous:http holds 16 locks on the document, the most one user may hold"
            }
            # Other users (WebSocket connections, anonymous: one user each) fill the
            # document up to its limit.
            room = app.engine.rooms["held"]
            async with connect(f"{url}/held") as other:
                for n in range(limits.per_document - limits.per_user):
                    assert (await lock(other, op="acquire", section=["o", str(n)]))["ok"]
                full = await lock(other, op="acquire", section=["o", "last"])
                assert full["ok"] is False
                assert full["error"] == "the document has 20 locks, the most it may have"
                # A joiner gets the summary, once the latest change has gone out
                # (changes are held for the mirror's interval): bounded whatever the
                # leases.
                await eventually(lambda: not room.presence.holding, what="the summary sent")
                async with connect(f"{url}/held", max_size=None) as joiner:
                    await anyio.wait_all_tasks_blocked()
                    with anyio.fail_after(30):
                        while True:
                            frame = await joiner.recv()
                            assert isinstance(frame, bytes)
                            message = protocol.decode(frame)
                            if isinstance(message, protocol.AwarenessUpdate):
                                break
                    [entry] = [
                        e for e in message.entries if e.client_id == room.presence.server_client_id
                    ]
                    assert entry.state is not None
                    summary = json.loads(entry.state)["server"]
                    assert len(entry.state) <= limits.summary_size + 100
                    assert len(summary["locks"]) + summary["more"] == limits.per_document
            listed = await http.get(path)
            assert listed.status_code == 200 and len(listed.json()["locks"]) == 20
