"""Interop of permissions (issue 5): the real npm `yjs` + `y-websocket` client, in Node,
against a server with a secret.

Each test runs the real server in-process (hypercorn on 127.0.0.1, a free port, a
32-byte secret, the test timings) and Node clients through `client.mjs` (see
`test_yjs_client.py`), each connecting with `--token`: y-websocket's
`params: {token}`, sent as `?token=` on every connection and reconnection.

What a viewer is denied must be rolled back for everyone: its own Y.Doc returns to
the server's content, and no other client shows the denied content at any moment.
The clients record what their application sees after every transaction (op
`trackContent`: the text, the map, and the changes their observers were told of).

Node >= 20 and `npm ci --prefix tests/interop` are required: without them these
tests fail (they are not skipped).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx
import jwt
import pytest
from pycrdt import Doc, Map, Text, TransactionEvent

from collab_engine.clock import ManualClock
from collab_engine.permissions import Role
from collab_engine.types import DocumentName
from server.app import App
from server.auth import mint
from server.settings import Settings
from tests.conftest import TEST_ENGINE, running_server
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

SECRET = "interop-permissions-secret-0123456789abcdef"  # 43 bytes: at least 32
OTHER_SECRET = "another-secret-of-another-server-0123456789"
DENIED = "DENIED"
"""Every denied write carries this marker: nobody but its author may ever show it."""


def settings() -> Settings:
    return Settings(secret=SECRET, ping_interval=None, engine=TEST_ENGINE)


def token(
    user: str,
    role: Role,
    *,
    documents: str = "**",
    groups: tuple[str, ...] = (),
    ttl: float = 600.0,
    secret: str = SECRET,
) -> str:
    return mint(
        secret, user=user, name=user.title(), groups=groups, role=role, documents=documents, ttl=ttl
    )


@asynccontextmanager
async def node_client(
    base_url: str,
    room: str,
    token: str | None,
    *,
    label: str,
    synced: bool = True,
    defer_connect: bool = False,
) -> AsyncIterator[NodeClient]:
    """The interop client of `test_yjs_client`, with `token` as y-websocket's `params`."""
    async with yjs_client(
        base_url, room, label=label, token=token, synced=synced, defer_connect=defer_connect
    ) as client:
        yield client


# -- what each side saw -------------------------------------------------------------------


def contents(node: NodeClient, *, remote_only: bool = False) -> list[dict[str, Any]]:
    """Every `content` event of `node` (after `trackContent`), oldest first."""
    return [
        event
        for event in node.events
        if event["event"] == "content" and not (remote_only and event["local"])
    ]


def assert_never_showed(node: NodeClient, marker: str, *, remote_only: bool = False) -> None:
    """No text, map, text change or map change `node`'s application saw holds `marker`."""
    for event in contents(node, remote_only=remote_only):
        seen = {key: event[key] for key in ("text", "map", "delta", "keys")}
        assert marker not in json.dumps(seen), (node.label, event)


def denials(node: NodeClient) -> list[str]:
    return [event["reason"] for event in node.events if event["event"] == "permission-denied"]


def closes(node: NodeClient) -> list[dict[str, Any]]:
    return [event for event in node.events if event["event"] == "connection-close"]


def assert_closed_with(node: NodeClient, code: int) -> None:
    """Every close `node` saw has `code`: the server waits for the client's close after
    a refusal, so the close frame is never lost to a reset connection (1006)."""
    codes = [event["code"] for event in closes(node)]
    assert codes and set(codes) == {code}, codes


@contextmanager
def server_history(app: App, room: str) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The server's text and map after every transaction on `room`'s document, filled
    in when the block ends: each transaction's update is recorded as it commits (the
    document cannot be read inside its own commit), then replayed on a copy."""
    doc = app.engine.rooms[DocumentName(room)].doc
    start = doc.get_update()
    updates: list[bytes] = []

    def on_transaction(event: TransactionEvent) -> None:
        updates.append(event.update)

    history: list[tuple[str, dict[str, Any]]] = []
    subscription = doc.observe(on_transaction)
    try:
        yield history
    finally:
        doc.unobserve(subscription)
        copy: Doc[Any] = Doc()
        copy.apply_update(start)
        text, entries = copy.get("text", type=Text), copy.get("map", type=Map)
        for update in updates:
            copy.apply_update(update)
            history.append((str(text), dict(entries.to_py() or {})))


async def put_content(app: App, url: str, room: str, text: str, entries: dict[str, Any]) -> None:
    """Write `text` and the map `entries` into `room` through the embedding API."""
    # `running_server` yields once the port is bound, maybe before the ASGI lifespan
    # has started the engine: hypercorn answers requests only once it has.
    async with httpx.AsyncClient(base_url="http" + url.removeprefix("ws"), timeout=5.0) as client:
        assert (await client.get("/healthz")).status_code == 200
    async with app.engine.room(room) as r:
        with r.doc.transaction():
            r.doc.get("text", type=Text).insert(0, text)
            for key, value in entries.items():
                r.doc.get("map", type=Map)[key] = value
        await r.flush()


def http(url: str, bearer: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url="http" + url.removeprefix("ws"),
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=5.0,
    )


# -- the tests ----------------------------------------------------------------------------


async def test_viewer_reads_but_its_writes_are_denied_and_rolled_back_for_everyone() -> None:
    """A viewer syncs and reads; its insert, map sets and deletion are each denied with
    the auth message and rolled back: its own doc returns to the server's content, and
    the editor (and the server's document) never show the denied change at any moment,
    nor lose the text the viewer deleted."""
    node_executable()  # fail here, clearly, without Node or node_modules
    room = "perm/viewer"
    with anyio.fail_after(40):
        async with running_server(settings()) as (app, url):
            async with node_client(url, room, token("erin", Role.EDITOR), label="editor") as editor:
                await editor.request("insert", text="hello world")
                await editor.request("mapSet", key="k", value="original")
                await wait_server(
                    app,
                    room,
                    lambda: (
                        server_text(app, room) == "hello world"
                        and server_map(app, room) == {"k": "original"}
                    ),
                )
                await editor.request("trackContent")
                with server_history(app, room) as history:
                    async with node_client(
                        url, room, token("vic", Role.VIEWER), label="viewer"
                    ) as viewer:
                        # It reads: the content came with the sync.
                        await viewer.wait({"text": "hello world", "mapEquals": {"k": "original"}})
                        await viewer.request("trackContent")
                        # Its sync step 2 (nothing new) is no write: nothing to deny.
                        assert denials(viewer) == []

                        # 1. An insert in the middle of the text.
                        await viewer.request("insert", index=5, text=f" {DENIED}-insert")
                        # Its editor returns to the server's content within a second.
                        await viewer.wait(
                            {"permissionDenied": 1, "text": "hello world"}, timeout=1.0
                        )
                        # 2. A map set over an existing key, then of a new key.
                        await viewer.request("mapSet", key="k", value=f"{DENIED}-k")
                        await viewer.wait({"permissionDenied": 2, "mapEquals": {"k": "original"}})
                        await viewer.request("mapSet", key="fresh", value=f"{DENIED}-fresh")
                        await viewer.wait({"permissionDenied": 3, "mapEquals": {"k": "original"}})
                        # 3. A deletion: "hello " comes back in the viewer's doc.
                        await viewer.request("delete", index=0, length=6)
                        await viewer.wait({"permissionDenied": 4, "text": "hello world"})

                        # A barrier: the editor's own edit, after all of the above, reaches
                        # both; whatever the server sent the editor before has arrived.
                        await editor.request("insert", text="!")
                        for node in (editor, viewer):
                            await node.wait(
                                {"text": "hello world!", "mapEquals": {"k": "original"}}
                            )
                        assert server_text(app, room) == "hello world!"
                        assert server_map(app, room) == {"k": "original"}

                        # The viewer was told, once per write, and kept its connection.
                        reasons = denials(viewer)
                        assert len(reasons) == 4, reasons
                        assert all("vic" in reason for reason in reasons), reasons
                        assert closes(viewer) == []
                        # It did show its own writes (local transactions), and then the
                        # server's answer took them back: no remote transaction re-showed them.
                        local = contents(viewer)
                        assert any(DENIED in e["text"] for e in local if e["local"]), local
                        assert any(e["text"] == "world" for e in local if e["local"]), local
                        assert_never_showed(viewer, DENIED, remote_only=True)
                        for event in contents(viewer, remote_only=True):
                            assert "hello" in event["text"], event

                # The editor: never the marker, never without "hello world", never told.
                seen = contents(editor)
                assert seen and seen[-1]["text"] == "hello world!", seen
                assert_never_showed(editor, DENIED)
                for event in seen:
                    assert event["text"].startswith("hello world"), event
                    assert event["map"] == {"k": "original"}, event
                assert denials(editor) == []
                # The server's document never held it either, after any transaction.
                assert history, "the server's document did not change at all"
                for text, entries in history:
                    assert DENIED not in text and text.startswith("hello world"), history
                    assert DENIED not in json.dumps(entries), history


async def test_viewers_offline_edits_in_sync_step_2_are_denied_and_rolled_back() -> None:
    """A viewer that edited before connecting sends its edits in sync step 2: they are
    denied and rolled back alike; the viewer ends up with the server's content and the
    editor never shows them."""
    node_executable()
    room = "perm/viewer-offline"
    with anyio.fail_after(40):
        async with running_server(settings()) as (app, url):
            await put_content(app, url, room, "shared text", {"k": "original"})
            async with node_client(url, room, token("erin", Role.EDITOR), label="editor") as editor:
                await editor.wait({"text": "shared text", "mapEquals": {"k": "original"}})
                await editor.request("trackContent")
                async with node_client(
                    url, room, token("vic", Role.VIEWER), label="viewer", defer_connect=True
                ) as viewer:
                    await viewer.request("insert", text=f"{DENIED}-offline")
                    await viewer.request("mapSet", key="k", value=f"{DENIED}-k")
                    await viewer.request("trackContent")
                    await viewer.request("connect")
                    await viewer.wait(
                        {
                            "synced": True,
                            "permissionDenied": 1,
                            "text": "shared text",
                            "mapEquals": {"k": "original"},
                        }
                    )
                    await editor.request("insert", text="!")
                    for node in (editor, viewer):
                        await node.wait({"text": "shared text!", "mapEquals": {"k": "original"}})
                    assert closes(viewer) == []
                assert_never_showed(editor, DENIED)
                for event in contents(editor):
                    assert event["text"].startswith("shared text") and event["map"] == {
                        "k": "original"
                    }, event
                assert server_text(app, room) == "shared text!"
                assert server_map(app, room) == {"k": "original"}


REFUSED: dict[str, tuple[Callable[[], str | None], int]] = {
    "no token": (lambda: None, 4401),
    "token for other documents": (lambda: token("otto", Role.OWNER, documents="other/*"), 4403),
    "token signed with another secret": (
        lambda: token("eve", Role.OWNER, secret=OTHER_SECRET),
        4401,
    ),
    "expired token": (lambda: token("late", Role.OWNER, ttl=-30), 4401),
    "malformed token": (lambda: "not-a-jwt", 4401),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_refused_connections_close_before_any_document_data(case: str) -> None:
    """y-websocket's connection is closed with the case's code, on every reconnection
    too, and the client never receives a sync or awareness message: it never syncs
    and holds nothing of the document."""
    node_executable()
    make_token, code = REFUSED[case]
    room = "perm/refused/doc"
    with anyio.fail_after(30):
        async with running_server(settings()) as (app, url):
            await put_content(app, url, room, "confidential", {"secret": "value"})
            async with node_client(url, room, make_token(), label=case, synced=False) as node:
                # y-websocket reconnects after each close: refused every time.
                await node.wait({"closedWith": [code, 3]}, timeout=10)
                state = await node.state()
                assert state["synced"] is False
                assert state["text"] == "" and state["map"] == {}, state
                assert state["received"] == {"sync": 0, "awareness": 0, "auth": 0}, state
                assert_closed_with(node, code)
                assert not [e for e in node.events if e["event"] == "synced" and e["synced"]]
                reasons = [event["reason"] for event in closes(node) if event["code"] == code]
                assert all(reasons) and len(set(reasons)) == 1, reasons
                room_now = app.engine.rooms.get(DocumentName(room))
                assert room_now is None or not room_now.peers


async def test_grants_changed_over_http_apply_to_open_y_websocket_connections() -> None:
    """An editor writes; the owner stores grants (HTTP, Bearer) that make it a viewer:
    its next write is denied and rolled back while the owner's still go through; the
    owner then removes its last matching grant: its connection closes with 4403, and
    so does every reconnection."""
    node_executable()
    room = "perm/live"
    alice = token("alice", Role.OWNER)
    bob = token("bob", Role.EDITOR, groups=("staff",))
    with anyio.fail_after(40):
        async with running_server(settings()) as (app, url):
            async with (
                node_client(url, room, alice, label="alice") as owner,
                node_client(url, room, bob, label="bob") as editor,
                http(url, alice) as api,
            ):
                await owner.request("trackContent")
                await editor.request("insert", text="bob1;")
                await owner.wait({"text": "bob1;"})

                # A non-owner may not change grants.
                async with http(url, bob) as bob_api:
                    response = await bob_api.put(
                        f"/api/documents/{room}/grants/user:bob", json={"role": "owner"}
                    )
                    assert response.status_code == 403, response.text

                # Grants that keep alice owner and bob editor (through `*`)...
                for principal, role in (
                    ("*", "owner"),
                    ("user:alice", "owner"),
                    ("group:staff", "viewer"),
                ):
                    response = await api.put(
                        f"/api/documents/{room}/grants/{principal}", json={"role": role}
                    )
                    assert response.status_code == 200, response.text
                await editor.request("insert", text="bob2;")
                await owner.wait({"text": "bob1;bob2;"})
                assert denials(editor) == []

                # ... then without `*`: bob's only grant is group:staff viewer.
                response = await api.delete(f"/api/documents/{room}/grants/*")
                assert response.status_code == 200, response.text
                response = await api.get(f"/api/documents/{room}/grants")
                assert response.status_code == 200, response.text
                assert sorted((g["principal"], g["role"]) for g in response.json()["grants"]) == [
                    ("group:staff", "viewer"),
                    ("user:alice", "owner"),
                ]
                await editor.request("insert", text=f"{DENIED};")
                await editor.wait({"permissionDenied": 1, "text": "bob1;bob2;"})
                await owner.request("insert", text="alice;")
                for node in (owner, editor):
                    await node.wait({"text": "bob1;bob2;alice;"})
                assert_never_showed(owner, DENIED)
                assert closes(editor) == [] and closes(owner) == []

                # Editor again (same connection): its writes go through, after the
                # denied one that its own doc and the server both hold as deleted.
                response = await api.put(
                    f"/api/documents/{room}/grants/group:staff", json={"role": "editor"}
                )
                assert response.status_code == 200, response.text
                await editor.request("insert", text="bob3;")
                for node in (owner, editor):
                    await node.wait({"text": "bob1;bob2;alice;bob3;"})
                assert len(denials(editor)) == 1

                # No matching grant left for bob: closed with 4403, and refused after.
                response = await api.delete(f"/api/documents/{room}/grants/group:staff")
                assert response.status_code == 200, response.text
                await editor.wait({"closedWith": [4403, 2]}, timeout=10)
                assert closes(editor)[0]["code"] == 4403, closes(editor)
                assert_closed_with(editor, 4403)
                # Alice is untouched: still connected, still writing.
                await owner.request("insert", text="end")
                final = "bob1;bob2;alice;bob3;end"
                await wait_server(app, room, lambda: server_text(app, room) == final)
                await owner.wait({"text": final, "status": "connected"})
                assert_never_showed(owner, DENIED)
                assert closes(owner) == []
                assert len(app.engine.rooms[DocumentName(room)].peers) == 1
                assert DENIED not in server_text(app, room)


async def test_expiring_token_closes_with_4401() -> None:
    """A connection whose token expires is closed with 4401 once it has (the engine's
    sweep, on the server's clock), and its reconnections are refused; a connection
    with a longer token in the same room stays."""
    node_executable()
    room = "perm/expiry"
    clock = ManualClock()
    with anyio.fail_after(30):
        async with running_server(settings(), clock=clock) as (app, url):
            expires = int(clock.wall()) + 60
            short = mint(SECRET, user="sam", role=Role.EDITOR, ttl=60, now=expires - 60)
            assert jwt.decode(short, options={"verify_signature": False})["exp"] == expires
            long = mint(SECRET, user="lena", role=Role.EDITOR, ttl=3600, now=clock.wall())
            async with (
                node_client(url, room, long, label="long") as long_lived,
                node_client(url, room, short, label="short") as short_lived,
            ):
                await short_lived.request("insert", text="before expiry")
                await long_lived.wait({"text": "before expiry"})
                # Not before the expiry: a second before it, both are still there.
                await advance(clock, expires - clock.wall() - 1.0, step=0.5)
                assert len(app.engine.rooms[DocumentName(room)].peers) == 2
                assert closes(short_lived) == []
                # After it: closed at the next sweep, and every reconnection refused.
                await advance(clock, 1.5, step=0.05)
                await short_lived.wait({"closedWith": [4401, 1]})
                first = closes(short_lived)[0]
                assert first["code"] == 4401 and "expired" in first["reason"], first
                await short_lived.wait({"closedWith": [4401, 2]})
                assert_closed_with(short_lived, 4401)
                await long_lived.request("insert", text="; after")
                await wait_server(
                    app, room, lambda: server_text(app, room) == "before expiry; after"
                )
                assert closes(long_lived) == []
                assert len(app.engine.rooms[DocumentName(room)].peers) == 1


async def test_presence_says_read_only_after_a_live_downgrade() -> None:
    """Downgraded to viewer by a grant, a connection's writes are denied; its presence
    (GET /api/documents/<name>/presence, `readOnly`) should say so as well."""
    node_executable()
    room = "perm/presence-downgrade"
    alice = token("alice", Role.OWNER)
    with anyio.fail_after(30):
        async with running_server(settings()) as (_app, url):
            async with (
                node_client(
                    url, room, token("bob", Role.EDITOR, groups=("staff",)), label="bob"
                ) as bob,
                http(url, alice) as api,
            ):
                await bob.request("setUser", user={"name": "Bob"})

                async def bob_read_only() -> bool | None:
                    response = await api.get(f"/api/documents/{room}/presence")
                    assert response.status_code == 200, response.text
                    found = [p for p in response.json()["presence"] if p["user"]["id"] == "bob"]
                    return found[0]["readOnly"] if found else None

                async def listed() -> bool:
                    return await bob_read_only() is not None

                await eventually(listed, what="bob's presence listed")
                assert await bob_read_only() is False
                # As in the test above: through `*` first, so that bob is never without
                # a grant (and never reconnects, which would make a new presence entry).
                for principal, role in (
                    ("*", "owner"),
                    ("user:alice", "owner"),
                    ("group:staff", "viewer"),
                ):
                    response = await api.put(
                        f"/api/documents/{room}/grants/{principal}", json={"role": role}
                    )
                    assert response.status_code == 200, response.text
                response = await api.delete(f"/api/documents/{room}/grants/*")
                assert response.status_code == 200, response.text
                await bob.request("insert", text=DENIED)
                await bob.wait({"permissionDenied": 1, "text": ""})  # bob is a viewer now
                assert closes(bob) == []
                read_only = await bob_read_only()
    # Asserted once the server and the client are gone, for a clean teardown.
    assert read_only is True
