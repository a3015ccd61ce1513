"""Interop of presence (issue 4): the real npm `yjs`, `y-websocket` and `y-protocols`
awareness, in Node, against the server's presence policy (`collab_engine.presence`).

Each test runs the real server (hypercorn on 127.0.0.1, a free port) with short
presence timings, drives Node clients through `client.mjs` (see
`test_yjs_client.py`) and reads presence back over HTTP
(`GET /api/documents/<name>/presence`), where cursors are resolved to UTF-16 indexes.

Node >= 20 and `npm ci --prefix tests/interop` are required: without them these
tests fail (they are not skipped).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import anyio
import httpx
import pytest

from collab_engine.clock import ManualClock
from collab_engine.presence import PresencePolicy
from collab_engine.room import Room
from collab_engine.types import ClientId, DocumentName
from server.app import App
from server.settings import Settings
from tests.conftest import TEST_ENGINE, running_server
from tests.interop.test_yjs_client import (
    NodeClient,
    disconnections,
    node_client,
    node_executable,
    server_text,
    wait_server,
)
from tests.timing import DEADLINE, advance, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.timeout(60)]


def settings(**policy: Any) -> Settings:
    """Server settings with the test timings and the presence policy `policy`."""
    return Settings(
        ping_interval=None, engine=replace(TEST_ENGINE, presence=PresencePolicy(**policy))
    )


def room_of(app: App, room: str) -> Room:
    return app.engine.rooms[DocumentName(room)]


def utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def utf16_len(text: str) -> int:
    return len(utf16(text)) // 2


def unit_at(text: str, index: int, length: int = 1) -> str:
    """The `length` UTF-16 code units of `text` at `index`, as Yjs indexes text."""
    return utf16(text)[2 * index : 2 * (index + length)].decode("utf-16-le")


# -- presence over HTTP -------------------------------------------------------------------


async def http_presence(url: str, room: str) -> list[dict[str, Any]]:
    """`GET /api/documents/<room>/presence` on the server at ws `url`."""
    async with httpx.AsyncClient(base_url="http" + url.removeprefix("ws"), timeout=5.0) as http:
        response = await http.get(f"/api/documents/{room}/presence")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["document"] == room
    return body["presence"]  # type: ignore[no-any-return]


async def wait_presence(
    url: str,
    room: str,
    predicate: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout: float = DEADLINE,
) -> list[dict[str, Any]]:
    """Poll the presence endpoint until `predicate` holds for its list; return it."""
    seen: list[list[dict[str, Any]]] = []

    async def holds() -> bool:
        seen[:] = [await http_presence(url, room)]
        return predicate(seen[0])

    await eventually(holds, timeout=timeout, what=f"presence endpoint: {what}")
    return seen[0]


def entry(people: list[dict[str, Any]], client_id: int) -> dict[str, Any] | None:
    """The presence entry of awareness client `client_id`, if listed."""
    found = [person for person in people if person["clientId"] == client_id]
    assert len(found) <= 1, people
    return found[0] if found else None


def has(client_id: int, **fields: Any) -> Callable[[list[dict[str, Any]]], bool]:
    """A predicate: the entry of `client_id` is listed, with these top-level fields."""

    def check(people: list[dict[str, Any]]) -> bool:
        person = entry(people, client_id)
        return person is not None and all(person.get(k) == v for k, v in fields.items())

    return check


# -- what Node saw ------------------------------------------------------------------------


def seen_states(node: NodeClient, client_id: int, client: int = 0) -> list[dict[str, Any] | None]:
    """Every state of `client_id` that `node`'s client `client` saw (after `trackStates`)."""
    key = str(client_id)
    return [
        event["changes"][key]
        for event in node.events
        if event["event"] == "awareness-states"
        and event["client"] == client
        and key in event["changes"]
    ]


def denials(node: NodeClient) -> list[str]:
    """The reasons of the permission-denied messages `node` received."""
    return [event["reason"] for event in node.events if event["event"] == "permission-denied"]


# -- the tests ----------------------------------------------------------------------------


async def test_cursor_selection_after_emoji_resolves_alike_in_yjs_and_http() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/presence-cursor"
    text = "héllo 🌍 wörld"  # 14 UTF-16 units: the globe is a surrogate pair at 6-7
    end = utf16_len(text)
    assert end == 14 and unit_at(text, 6, 2) == "🌍"
    # (style, anchor, head, assoc): y-codemirror.next keeps Y.relativePositionToJSON,
    # y-prosemirror the RelativePosition object itself ({type, tname, item, assoc}).
    cases = [
        ("json", 8, 12, 0),  # " wö", just after the emoji
        ("object", 8, 12, 0),
        ("object", end, 8, 0),  # backwards, from the end (no item: the type's end)
        ("json", 8, end, -1),  # left-associated: sticks to the emoji's end
        ("json", 0, 8, -1),  # left-associated at 0: the type's start
    ]
    with anyio.fail_after(40):
        async with running_server(settings()) as (_app, url):
            async with (
                node_client(url, room, label="a", user={"name": "Ärger", "color": "#30bced"}) as a,
                node_client(url, room, label="b", user={"name": "b"}) as b,
            ):
                await a.request("insert", index=0, text=text)
                await b.wait({"text": text, "stampedUsers": [a.client_id]})
                key = str(a.client_id)
                for style, anchor, head, assoc in cases:
                    case = f"{style} anchor={anchor} head={head} assoc={assoc}"
                    reply = await a.request(
                        "setCursor", anchor=anchor, head=head, assoc=assoc, style=style
                    )
                    sent = reply["cursors"][0]
                    if style == "object":
                        assert set(sent["anchor"]) == {"type", "tname", "item", "assoc"}, sent
                    else:
                        assert "type" not in sent["anchor"], sent
                    assert sent["anchor"]["tname"] == "text"
                    # B gets the cursor exactly as A sent it, and Yjs resolves it alike.
                    await b.wait(
                        {
                            "statesMatch": {key: {"cursor": sent}},
                            "cursorAt": {key: {"anchor": anchor, "head": head}},
                        }
                    )
                    resolved = (await b.request("resolveCursor", of=a.client_id))["cursor"]
                    assert resolved == {"anchor": anchor, "head": head}, case
                    own = (await a.request("resolveCursor", of=a.client_id))["cursor"]
                    assert own == resolved, case
                    # And the server resolves it to the same UTF-16 indexes.
                    expected = {"anchor": anchor, "head": head, "type": "text"}
                    people = await wait_presence(
                        url, room, has(a.client_id, cursor=expected), f"cursor {case}"
                    )
                    person = entry(people, a.client_id)
                    assert person is not None
                    assert person["user"]["name"] == "Ärger"
                    assert person["user"]["color"] == "#30bced"
                    assert person["user"]["anonymous"] is True
                    assert person["user"]["id"].startswith("anonymous:")
                # The server reads B's state without a cursor as no cursor.
                b_entry = entry(await http_presence(url, room), b.client_id)
                assert b_entry is not None and b_entry["cursor"] is None
                a_entry = entry(await http_presence(url, room), a.client_id)
                assert a_entry is not None and b_entry["user"]["id"] != a_entry["user"]["id"]


async def test_relative_cursor_follows_its_character_through_concurrent_edits() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/presence-concurrent"
    initial = "start 😀X🎉 end"
    anchor, head = 8, 12  # "X", and the "e" of "end"
    assert unit_at(initial, anchor) == "X" and unit_at(initial, head, 3) == "end"
    with anyio.fail_after(40):
        async with running_server(settings()) as (app, url):
            # A (client 0) and B (client 1): two providers, two connections, one process,
            # so that a batch of edits on both is made in one tick, truly concurrently.
            async with (
                node_client(url, room, label="ab", clients=2, user={"name": "a"}) as ab,
                node_client(url, room, label="c", user={"name": "c"}) as c,
            ):
                await ab.request("setUser", client=1, user={"name": "b"})
                a_id, b_id = ab.client_ids
                key = str(a_id)
                await ab.request("insert", client=0, index=0, text=initial)
                await ab.wait({"text": initial})
                await ab.request("setCursor", client=0, anchor=anchor, head=head)
                await ab.wait({"cursorAt": {key: {"anchor": anchor, "head": head}}})
                await c.wait({"text": initial, "cursorAt": {key: {"anchor": anchor, "head": head}}})
                await wait_presence(
                    url,
                    room,
                    has(a_id, cursor={"anchor": anchor, "head": head, "type": "text"}),
                    "initial cursor",
                )

                # Concurrent edits, before, at and after both positions. Each client's
                # edits are listed from the end of its text, so that its indexes hold.
                edits = [
                    {
                        "op": "insert",
                        "client": 0,
                        "index": 9,
                        "text": "«A after»😺",
                    },  # right after X
                    {"op": "insert", "client": 0, "index": 0, "text": "Ωα🌍"},
                    {"op": "insert", "client": 1, "index": -1, "text": "🦄"},
                    {"op": "insert", "client": 1, "index": 12, "text": "🐍 "},  # right before "end"
                    {
                        "op": "insert",
                        "client": 1,
                        "index": 8,
                        "text": "B✓before🐍",
                    },  # right before X
                    {"op": "insert", "client": 1, "index": 6, "text": "ñ"},
                    {"op": "delete", "client": 1, "index": 0, "length": 2},  # "st"
                ]
                await ab.request("batch", ops=edits)
                # B has made all of its edits: once it has A's too, it has the final text.
                await ab.wait({"textIncludes": ["«A after»😺", "Ωα🌍"]}, client=1)
                final = (await ab.state(client=1))["text"]
                await ab.wait({"text": final})
                await c.wait({"text": final})
                await wait_server(app, room, lambda: server_text(app, room) == final)
                for marker in ("«A after»😺🎉", "Ωα🌍art ñ😀", "B✓before🐍X", "🐍 end🦄"):
                    assert marker in final, (marker, final)
                assert final.count("X") == 1

                # The cursor still points at the same characters, for Yjs and the server.
                people = await wait_presence(url, room, has(a_id), "a's entry")
                person = entry(people, a_id)
                assert person is not None
                cursor = person["cursor"]
                assert cursor["type"] == "text"
                assert unit_at(final, cursor["anchor"]) == "X", (final, cursor)
                assert unit_at(final, cursor["head"], 5) == "end🦄", (final, cursor)
                assert cursor["anchor"] == utf16(final).index(utf16("X")) // 2
                expected = {"anchor": cursor["anchor"], "head": cursor["head"]}
                for node, client in ((ab, 0), (ab, 1), (c, 0)):
                    resolved = (await node.request("resolveCursor", client=client, of=a_id))[
                        "cursor"
                    ]
                    assert resolved == expected, (node.label, client, final)
                assert b_id != a_id


async def test_identity_stamped_and_other_client_ids_refused() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/presence-identity"
    with anyio.fail_after(40):
        async with running_server(settings()) as (app, url):
            async with (
                node_client(url, room, label="a", user={"name": "alice"}) as a,
                node_client(url, room, label="b", user={"name": "bob"}) as b,
                node_client(url, room, label="s", user={"name": "spoofer"}) as s,
            ):
                ids = [a.client_id, b.client_id, s.client_id]
                for node in (a, b, s):
                    await node.wait({"stampedUsers": ids})
                    await node.request("trackStates")
                a_key, s_key = str(a.client_id), str(s.client_id)
                a_state = (await b.state())["awareness"][a_key]
                a_user_id = a_state["user"]["id"]
                s_user_id = (await b.state())["awareness"][s_key]["user"]["id"]
                assert a_user_id.startswith("anonymous:") and s_user_id.startswith("anonymous:")
                assert a_user_id != s_user_id

                # 1. S claims A's user id: everyone (S too) sees S under its own id.
                await s.request(
                    "setUser", user={"name": "impostor", "id": a_user_id, "anonymous": False}
                )
                corrected = {
                    s_key: {"user.name": "impostor", "user.id": s_user_id, "user.anonymous": True}
                }
                for node in (a, b, s):
                    await node.wait({"statesMatch": corrected})
                for node in (a, b):
                    for state in seen_states(node, s.client_id):
                        assert state is None or state["user"]["id"] == s_user_id, (
                            node.label,
                            state,
                        )
                people = await http_presence(url, room)
                assert len(people) == 3
                user_ids = [person["user"]["id"] for person in people]
                assert len(set(user_ids)) == 3, people
                s_entry = entry(people, s.client_id)
                a_entry = entry(people, a.client_id)
                assert s_entry is not None and a_entry is not None
                assert s_entry["user"] == {
                    "id": s_user_id,
                    "name": "impostor",
                    "color": None,
                    "anonymous": True,
                }
                assert a_entry["user"]["id"] == a_user_id

                # 2. S sends, over its own socket, A's client id with a newer clock: a
                # state, then a removal. Both refused, S is told, and keeps its socket.
                spoofed = {"user": {"name": "alice", "id": a_user_id}, "spoofed": True}
                before = len(denials(s))
                await s.request("spoofAwareness", **{"as": a.client_id}, state=spoofed, clock=1000)
                await s.wait({"permissionDenied": before + 1})
                await s.request("spoofAwareness", **{"as": a.client_id}, state=None, clock=2000)
                await s.wait({"permissionDenied": before + 2})
                for reason in denials(s)[before:]:
                    assert str(a.client_id) in reason, reason
                # A legit change of A's as a barrier: S's messages were handled before S
                # was answered, so whatever the server forwarded of them has reached B
                # by the time B sees A's change.
                await a.request("setField", field="marker", value=1)
                for node in (a, b):
                    await node.wait(
                        {
                            "statesMatch": {
                                a_key: {"marker": 1, "user.name": "alice", "user.id": a_user_id}
                            }
                        }
                    )
                for node in (a, b):
                    seen = seen_states(node, a.client_id)
                    assert seen, node.label
                    for state in seen:
                        assert state is not None and "spoofed" not in state, (node.label, state)
                    removed = [
                        event
                        for event in node.events
                        if event["event"] == "awareness" and a.client_id in event["removed"]
                    ]
                    assert removed == [], (node.label, removed)
                record = room_of(app, room).awareness.get(ClientId(a.client_id))
                assert (
                    record is not None
                    and record.state is not None
                    and "spoofed" not in record.state
                )

                # S's connection is still open and S still speaks for itself.
                await s.request("setField", field="after", value=True)
                for node in (a, b):
                    await node.wait({"statesMatch": {s_key: {"after": True}}})
                assert disconnections(s) == []
                assert [e["status"] for e in s.events if e["event"] == "status"] == [
                    "connecting",
                    "connected",
                ]
                assert len(room_of(app, room).peers) == 3


async def test_legit_clients_are_not_told_permission_denied() -> None:
    """y-websocket re-broadcasts every awareness update it applies, the others' states
    and the server's entry included (`_awarenessUpdateHandler` in y-websocket.js sends
    added + updated + removed, whatever the origin), at the clock it got them: a no-op
    for everyone. Such an echo is no attempt to set another client's state: a plain
    client must not be told permission denied (y-websocket logs each as a warning)."""
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/presence-echo"
    with anyio.fail_after(40):
        async with running_server(settings()) as (app, url):
            async with (
                node_client(url, room, label="a", user={"name": "alice"}) as a,
                node_client(url, room, label="b", user={"name": "bob"}) as b,
            ):
                ids = [a.client_id, b.client_id]
                for node in (a, b):
                    await node.wait({"stampedUsers": ids})
                await a.request("setCursor", anchor=0, head=0)
                await b.request("setField", field="typing", value=False)
                await a.wait({"statesMatch": {str(b.client_id): {"typing": False}}})
                await b.wait({"statesMatch": {str(a.client_id): {"cursor.anchor.assoc": 0}}})
                # A round trip each (a lock request the server refuses: no state
                # changes): anything the server sent them before has arrived.
                for node in (a, b):
                    (reply,) = [
                        item["reply"]
                        for item in (await node.request("lock", lockOp="probe", section=[]))[
                            "replies"
                        ]
                    ]
                    assert reply["ok"] is False and "unknown lock op" in reply["error"]
                server_id = room_of(app, room).presence.server_client_id
                who = f"(a is {a.client_id}, b is {b.client_id}, the server's entry {server_id})"
                assert denials(a) == [], f"a was told {denials(a)} {who}"
                assert denials(b) == [], f"b was told {denials(b)} {who}"


async def test_typing_cleared_after_timeout_without_activity() -> None:
    """`typing` stays while the client edits, and is cleared for everyone, the client
    included, once it has done nothing for the timeout (on the server's clock)."""
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/presence-typing"
    timeout = 0.8
    clock = ManualClock()
    with anyio.fail_after(40):
        async with running_server(
            settings(typing_timeout=timeout, idle_timeout=30.0), clock=clock
        ) as (app, url):
            async with (
                node_client(url, room, label="a", user={"name": "a"}) as a,
                node_client(url, room, label="b", user={"name": "b"}) as b,
            ):
                key = str(a.client_id)
                await b.wait({"stampedUsers": [a.client_id]})
                await b.request("trackStates")

                # Typing, and still active (an edit every half timeout, for two
                # timeouts): it stays.
                await a.request("setField", field="typing", value=True)
                await b.wait({"statesMatch": {key: {"typing": True}}})
                await wait_presence(url, room, has(a.client_id, typing=True), "typing: true")
                for _ in range(4):
                    await advance(clock, timeout / 2)
                    await a.request("insert", index=-1, text="x")
                    # The server has the edit once the other client has it.
                    await b.wait({"textLength": (await a.state())["textLength"]})
                assert all(
                    state is not None and state.get("typing") is True
                    for state in seen_states(b, a.client_id)
                ), (
                    "typing was cleared while the client was editing",
                    seen_states(b, a.client_id),
                )

                # Then nothing: still typing just before the timeout, cleared after it,
                # for the others and for the client itself.
                await advance(clock, timeout - 0.05)
                person = entry(await http_presence(url, room), a.client_id)
                assert person is not None and person["typing"] is True
                await advance(clock, 0.1)
                await b.wait({"statesMatch": {key: {"typing": False}}})
                await a.wait({"statesMatch": {key: {"typing": False}}})
                person = entry(await http_presence(url, room), a.client_id)
                assert person is not None and person["typing"] is False
                assert (await a.state())["awareness"][key]["user"]["name"] == "a"
                assert len(room_of(app, room).peers) == 2


async def test_idle_client_shown_away_and_back_on_activity() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/presence-idle"
    idle = 1.2
    clock = ManualClock()
    with anyio.fail_after(40):
        async with running_server(
            settings(idle_timeout=idle, typing_timeout=30.0), clock=clock
        ) as (_app, url):
            async with (
                node_client(url, room, label="a", user={"name": "a"}) as a,
                node_client(url, room, label="b", user={"name": "b"}) as b,
                node_client(url, room, label="c", user={"name": "c"}) as c,
            ):
                a_key, c_key = str(a.client_id), str(c.client_id)
                await b.request("trackStates")
                await a.request("insert", index=0, text="héllo 🌍")
                await c.request("setField", field="statusText", value="in a meeting")
                await c.request("setField", field="status", value="busy")
                await a.request("setCursor", anchor=2, head=2)
                await b.wait(
                    {
                        "statesMatch": {c_key: {"status": "busy"}},
                        "cursorAt": {a_key: {"anchor": 2, "head": 2}},
                    }
                )

                # A does nothing: shown away, to the others and to itself, once the
                # idle timeout has passed on the server's clock, not before.
                await advance(clock, idle - 0.05)
                person = entry(await http_presence(url, room), a.client_id)
                assert person is not None and person["idle"] is False
                await advance(clock, 0.1)
                await b.wait({"statesMatch": {a_key: {"status": "away"}}})
                await a.wait({"statesMatch": {a_key: {"status": "away"}}})
                person = entry(await http_presence(url, room), a.client_id)
                assert person is not None
                assert (person["status"], person["idle"]) == ("away", True)
                assert person["inactiveFor"] >= idle - 0.05
                # C said busy: idle, but still busy (away is for online clients only).
                c_person = await wait_presence(url, room, has(c.client_id, idle=True), "c idle")
                c_entry = entry(c_person, c.client_id)
                assert c_entry is not None
                assert (c_entry["status"], c_entry["statusText"]) == ("busy", "in a meeting")
                assert all(
                    state is None or state.get("status") != "away"
                    for state in seen_states(b, c.client_id)
                )

                # A moves its cursor: back to its own status (none: online), for all.
                await a.request("setCursor", anchor=4, head=6)
                await b.wait(
                    {
                        "statesMatch": {a_key: {"status": None}},
                        "cursorAt": {a_key: {"anchor": 4, "head": 6}},
                    }
                )
                await a.wait({"statesMatch": {a_key: {"status": None}}})
                person = entry(await http_presence(url, room), a.client_id)
                assert person is not None and (person["status"], person["idle"]) == (
                    "online",
                    False,
                )

                # Away again, and back with an edit this time.
                await advance(clock, idle + 0.1)
                await b.wait({"statesMatch": {a_key: {"status": "away"}}})
                await a.request("insert", index=0, text="¡")
                await b.wait({"statesMatch": {a_key: {"status": None}}, "textIncludes": ["¡héllo"]})
                person = entry(await http_presence(url, room), a.client_id)
                assert person is not None and (person["status"], person["idle"]) == (
                    "online",
                    False,
                )
                # The cursor survived both round trips: its state was only re-statused.
                assert (await b.request("resolveCursor", of=a.client_id))["cursor"] == {
                    "anchor": 5,
                    "head": 7,
                }


async def test_killed_client_cursor_disappears_when_its_connection_drops() -> None:
    """A client killed with SIGKILL (no close frame) has its cursor removed for
    everyone when its connection drops, not by the awareness timeout: the server's
    clock does not move in this test."""
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "interop/presence-kill"
    clock = ManualClock()
    with anyio.fail_after(40):
        async with running_server(settings(), clock=clock) as (app, url):
            async with (
                node_client(url, room, label="victim", user={"name": "victim"}) as victim,
                node_client(url, room, label="watchers", clients=2) as watchers,
            ):
                key = str(victim.client_id)
                for i in range(2):
                    await watchers.request("setUser", client=i, user={"name": f"w{i}"})
                await victim.request("insert", index=0, text="a 🌍 b")
                await victim.request("setCursor", anchor=2, head=4, style="object")
                await watchers.wait(
                    {"cursorAt": {key: {"anchor": 2, "head": 4}}, "users": ["victim", "w0", "w1"]}
                )
                await wait_presence(
                    url,
                    room,
                    has(victim.client_id, cursor={"anchor": 2, "head": 4, "type": "text"}),
                    "cursor",
                )

                started = clock.monotonic()
                victim.kill9()
                await watchers.wait({"awarenessAbsent": [victim.client_id]})
                assert clock.monotonic() == started  # no timer did it
                for i in range(2):
                    assert (await watchers.request("resolveCursor", client=i, of=victim.client_id))[
                        "cursor"
                    ] is None
                people = await wait_presence(
                    url, room, lambda p: entry(p, victim.client_id) is None, "victim gone"
                )
                assert len(people) == 2
                await victim.process.wait()
                assert victim.process.returncode == -signal.SIGKILL
                assert len(room_of(app, room).peers) == 2
                assert disconnections(watchers) == []
