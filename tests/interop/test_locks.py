"""Interop of session locks (issue 5): the real npm `yjs` + `y-websocket` client, in
Node, taking leases over our lock messages and writing into locked sections.

A Node client (`client.mjs`, see `test_yjs_client.py`) sends a lock request as
`varUint(100) varUint(2) varString(JSON)` on its provider's WebSocket and receives the
reply `varUint(100) varUint(3) varString(JSON)` through a handler registered as
`provider.messageHandlers[100]` (op `lock`); the server mirrors the current leases into
its own awareness entry `{"server": {"locks": [{"section", "holder"}, ...]}}`, which
every Yjs client sees (wait condition `serverLocks`), and removes that entry when no
lease is left.

Sections used here: `["map", "intro"]` (a key of the root Y.Map `map`) and `["text"]`
(the whole root Y.Text `text`), the two roots `client.mjs` edits.

Node >= 20 and `npm ci --prefix tests/interop` are required: without them these
tests fail (they are not skipped).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import anyio
import pytest

from collab_engine.clock import ManualClock
from collab_engine.permissions import Role
from server.settings import Settings
from tests.conftest import TEST_ENGINE, running_server
from tests.interop.test_permissions import assert_never_showed, denials, node_client, token
from tests.interop.test_permissions import settings as secret_settings
from tests.interop.test_yjs_client import (
    NodeClient,
    node_executable,
    server_map,
    server_text,
    wait_server,
)
from tests.interop.test_yjs_client import node_client as yjs_client
from tests.timing import advance, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.timeout(60)]

DENIED = "DENIED"
"""Every write into a section locked by someone else carries this marker."""
INTRO = ["map", "intro"]
TEXT = ["text"]


async def lock(
    node: NodeClient, op: str, section: list[str], *, client: int | str = 0, **fields: Any
) -> list[dict[str, Any]]:
    """Send the lock request `op` on `section` from `client` (all of them, in one tick,
    for "all"); return the server's replies ({"id", "ok", "lock" | "error"}), in
    client order."""
    reply = await node.request("lock", client=client, lockOp=op, section=section, **fields)
    return [item["reply"] for item in reply["replies"]]


def lease_key(lease: dict[str, Any]) -> dict[str, Any]:
    """What the wait condition `serverLocks` compares of a lease."""
    return {"section": lease["section"], "holder": lease["holder"]["id"]}


def assert_lease(
    lease: dict[str, Any], section: list[str], user: str, name: str, ttl: float
) -> None:
    """The shape of a lease in a reply (the server's awareness entry shows only its
    section and holder)."""
    assert set(lease) == {"section", "holder", "fence", "expiresIn", "expiresAt"}, lease
    assert lease["section"] == section
    assert lease["holder"] == {"id": user, "name": name}
    assert isinstance(lease["fence"], int) and lease["fence"] > 0
    assert 0 < lease["expiresIn"] <= ttl
    # The wall-clock expiry agrees with the countdown (within the test's own clock).
    assert abs(lease["expiresAt"] / 1000 - time.time() - lease["expiresIn"]) < 5


async def test_write_into_locked_section_is_rolled_back_elsewhere_passes() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/locks-sections"
    with anyio.fail_after(40):
        async with running_server(secret_settings()) as (app, url):
            async with (
                node_client(url, room, token("alice", Role.EDITOR), label="alice") as alice,
                node_client(url, room, token("bob", Role.EDITOR), label="bob") as bob,
                node_client(url, room, token("carol", Role.EDITOR), label="carol") as carol,
            ):
                for node in (alice, bob, carol):
                    await node.request("trackContent")
                # Alice's content, before any lock: a Y.Map under `intro`, and the text.
                await alice.request(
                    "mapSetNested", key="intro", inner="title", value="Intro by Alice"
                )
                await alice.request("insert", index=0, text="Alice's text")
                before = {"intro": {"title": "Intro by Alice"}}
                for node in (bob, carol):
                    await node.wait({"mapEquals": before, "text": "Alice's text"})

                # Alice locks the key `intro` and the whole text; the reply's shape.
                (got,) = await lock(alice, "acquire", INTRO)
                assert set(got) == {"id", "ok", "lock"} and got["ok"] is True, got
                assert_lease(got["lock"], INTRO, "alice", "Alice", 30)
                intro_lease = got["lock"]
                (got,) = await lock(alice, "acquire", TEXT, ttl=20)
                assert got["ok"] is True, got
                assert_lease(got["lock"], TEXT, "alice", "Alice", 20)
                text_lease = got["lock"]
                assert text_lease["fence"] > intro_lease["fence"]
                mirrored = [lease_key(intro_lease), lease_key(text_lease)]
                for node in (alice, bob, carol):
                    await node.wait({"serverLocks": mirrored})

                # Bob can neither take nor release Alice's leases.
                (got,) = await lock(bob, "acquire", INTRO)
                assert got["ok"] is False and "locked by Alice" in got["error"], got
                (got,) = await lock(bob, "acquire", [])  # the whole document overlaps both
                assert got["ok"] is False and "locked by Alice" in got["error"], got
                (got,) = await lock(bob, "release", INTRO, fence=intro_lease["fence"])
                assert got["ok"] is False and "not by you" in got["error"], got
                (got,) = await lock(bob, "renew", TEXT, fence=text_lease["fence"])
                assert got["ok"] is False, got
                await carol.wait({"serverLocks": mirrored})  # still Alice's

                # Bob writes into the locked key (under it, then over it), and into the
                # locked text: each is denied and rolled back, his own doc included.
                expected_denials = 0
                for op, fields in (
                    ("mapSetNested", {"key": "intro", "inner": "title", "value": DENIED}),
                    ("mapSet", {"key": "intro", "value": DENIED}),
                    ("insert", {"index": 0, "text": DENIED}),
                ):
                    await bob.request(op, **fields)
                    expected_denials += 1
                    await bob.wait(
                        {
                            "permissionDenied": expected_denials,
                            "mapEquals": before,
                            "text": "Alice's text",
                        },
                        timeout=5,
                    )
                    assert "['map', 'intro'] is locked by Alice" in denials(bob)[0]
                assert "['text'] is locked by Alice" in denials(bob)[-1], denials(bob)

                # Bob's writes elsewhere pass: another key of the map.
                await bob.request("mapSet", key="outro", value="Outro by Bob")
                after = {**before, "outro": "Outro by Bob"}
                for node in (alice, bob, carol):
                    await node.wait({"mapEquals": after, "text": "Alice's text"})
                # The holder writes freely into its sections.
                await alice.request("mapSetNested", key="intro", inner="title", value="Intro v2")
                await alice.request("insert", index=0, text="» ")
                final = {"intro": {"title": "Intro v2"}, "outro": "Outro by Bob"}
                for node in (alice, bob, carol):
                    await node.wait({"mapEquals": final, "text": "» Alice's text"})
                await wait_server(app, room, lambda: server_text(app, room) == "» Alice's text")
                assert server_map(app, room) == final
                assert len(denials(bob)) == 3
                assert denials(alice) == [] and denials(carol) == []
                # Neither the holder nor the third client ever showed a denied write.
                for node in (alice, carol):
                    assert_never_showed(node, DENIED)
                assert_never_showed(bob, DENIED, remote_only=True)

                # Offline, Bob writes into the locked key; on reconnection his edit comes
                # in the handshake (sync step 2): denied and rolled back just the same.
                await bob.request("disconnect")
                await bob.wait({"status": "disconnected"})
                await bob.request("mapSet", key="intro", value=DENIED)
                await bob.request("connect")
                await bob.wait(
                    {"synced": True, "permissionDenied": 4, "mapEquals": final}, timeout=5
                )
                await bob.request("mapSet", key="outro", value="Outro v2")  # a barrier
                final = {**final, "outro": "Outro v2"}
                for node in (alice, carol):
                    await node.wait({"mapEquals": final})
                    assert_never_showed(node, DENIED)
                assert server_map(app, room) == final

                # With the text released, Bob may write into it; `intro` stays locked.
                (got,) = await lock(alice, "release", TEXT, fence=text_lease["fence"])
                assert got["ok"] is True and got["lock"]["fence"] == text_lease["fence"], got
                await bob.wait({"serverLocks": [lease_key(intro_lease)]})
                await bob.request("insert", index=-1, text=" + Bob")
                for node in (alice, carol):
                    await node.wait({"text": "» Alice's text + Bob"})
                assert len(denials(bob)) == 4


async def test_lock_of_killed_holder_is_gone_after_grace() -> None:
    node_executable()
    room = "interop/locks-kill"
    grace = 0.3
    base = secret_settings()
    clock = ManualClock()
    with anyio.fail_after(40):
        async with running_server(
            replace(base, engine=replace(base.engine, lock_grace=grace)), clock=clock
        ) as (app, url):
            async with (
                node_client(url, room, token("victim", Role.EDITOR), label="victim") as victim,
                node_client(url, room, token("watcher", Role.EDITOR), label="watcher") as watcher,
            ):
                (held,) = await lock(victim, "acquire", TEXT)
                assert held["ok"] is True, held
                await watcher.wait({"serverLocks": [lease_key(held["lock"])]})
                (got,) = await lock(watcher, "acquire", TEXT)
                assert got["ok"] is False and "locked by Victim" in got["error"], got

                victim.kill9()
                # The end of the connection is noticed at once (no timer); its lease
                # outlives it by the grace, on the server's clock.
                server_room = app.engine.rooms[room]
                await eventually(lambda: len(server_room.peers) == 1, what="the victim gone")
                await advance(clock, grace - 0.05)
                assert [lease.user_id for lease in server_room.locks.leases] == ["victim"]
                await advance(clock, 0.1)
                assert server_room.locks.leases == []
                await watcher.wait({"serverLocks": []})
                (got,) = await lock(watcher, "acquire", TEXT)
                assert got["ok"] is True, got
                assert_lease(got["lock"], TEXT, "watcher", "Watcher", 30)
                assert got["lock"]["fence"] > held["lock"]["fence"]
                await advance(clock, 0.3)  # the mirror's interval since the lease ended
                await watcher.wait({"serverLocks": [lease_key(got["lock"])]})
                await watcher.request("insert", index=0, text="mine now")
                await wait_server(app, room, lambda: server_text(app, room) == "mine now")
                assert denials(watcher) == []


async def test_ten_clients_racing_for_one_lock_one_wins() -> None:
    node_executable()
    room = "interop/locks-race"
    # Open mode: every connection is a distinct anonymous user (and an owner).
    open_mode = Settings(ping_interval=None, engine=TEST_ENGINE)
    with anyio.fail_after(40):
        async with running_server(open_mode) as (app, url):
            async with yjs_client(url, room, label="racers", clients=10) as racers:
                for round_ in range(3):
                    section = INTRO if round_ != 1 else []
                    # All ten requests leave in the same tick.
                    replies = await lock(racers, "acquire", section, client="all")
                    winners = [i for i, reply in enumerate(replies) if reply["ok"]]
                    assert len(winners) == 1, replies
                    (winner,) = winners
                    lease = replies[winner]["lock"]
                    holder = lease["holder"]
                    assert holder["id"].startswith("anonymous:"), lease
                    assert_lease(lease, section, holder["id"], holder["name"], 30)
                    for i, reply in enumerate(replies):
                        if i != winner:
                            assert reply["ok"] is False, reply
                            assert (
                                f"is locked by {holder['name']} (fence {lease['fence']})"
                                in reply["error"]
                            ), reply
                    # Every client sees that one holder in the server's awareness entry.
                    await racers.wait({"serverLocks": [lease_key(lease)]}, timeout=5)
                    assert [x.fence for x in app.engine.rooms[room].locks.leases] == [
                        lease["fence"]
                    ]

                    # A loser's release (even with the right fence) is refused.
                    loser = (winner + 1) % 10
                    (got,) = await lock(
                        racers, "release", section, client=loser, fence=lease["fence"]
                    )
                    assert got["ok"] is False and "not by you" in got["error"], got
                    # The winner's release ends it, for everyone.
                    (got,) = await lock(
                        racers, "release", section, client=winner, fence=lease["fence"]
                    )
                    assert got["ok"] is True, got
                    await racers.wait({"serverLocks": []}, timeout=5)
