"""Version history end to end: real WebSocket clients, the HTTP API and the version
message on a real server over a SQLite file; roles; restore under concurrent edits;
restart."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pycrdt import Array, Map, Text

from collab_engine import protocol
from collab_engine.content import content_of
from collab_engine.history import HistoryPolicy
from collab_engine.permissions import Role
from server.app import App
from server.auth import mint
from server.settings import Settings
from storage import sqlite_url
from tests.conftest import TEST_ENGINE, running_server
from tests.timing import eventually
from tests.yclient import YClient, yclient

pytestmark = pytest.mark.anyio

SECRET = "test-secret-of-at-least-32-bytes!"
ENGINE = replace(TEST_ENGINE, history=HistoryPolicy(enabled=False))
Server = tuple[App, str]


@pytest.fixture
async def secured() -> AsyncIterator[Server]:
    settings = Settings(ping_interval=None, engine=ENGINE, secret=SECRET)
    async with running_server(settings) as running:
        yield running


@pytest.fixture
async def open_server() -> AsyncIterator[Server]:
    async with running_server(Settings(ping_interval=None, engine=ENGINE)) as running:
        yield running


def token(user: str, role: Role) -> str:
    return mint(SECRET, user=user, role=role)


def http(url: str) -> str:
    return url.replace("ws://", "http://")


def api(url: str, user: str | None = None, role: Role = Role.OWNER) -> httpx.AsyncClient:
    headers = {} if user is None else {"authorization": f"Bearer {token(user, role)}"}
    return httpx.AsyncClient(base_url=f"{http(url)}/api/documents", headers=headers)


async def settle(*clients: YClient) -> None:
    """Wait until every client holds the same document."""
    first = clients[0]
    for client in clients[1:]:
        await client.wait_for(
            lambda c=client: (
                protocol.decode_state_vector(c.doc.get_state())
                == protocol.decode_state_vector(first.doc.get_state())
            ),
            timeout=10,
        )


async def test_versions_over_http_follow_roles(secured: Server) -> None:
    """Viewers list, read and diff; editors also name versions; only owners restore.
    Content at a version is what the clients saw then."""
    app, url = secured
    async with yclient(url, f"doc?token={token('ann', Role.OWNER)}") as ann:
        text = ann.doc.get("body", type=Text)
        text.insert(0, "Grüße 👋 from Ann")
        await ann.flush()
        await ann.request_persisted()
        await ann.wait_persisted()
        saw_then = content_of(ann.doc)
        async with api(url, "bob", Role.EDITOR) as bob, api(url, "val", Role.VIEWER) as val:
            refused = await val.post("/doc/versions", json={"label": "mine"})
            assert refused.status_code == 403
            made = await bob.post("/doc/versions", json={"label": "greeting"})
            assert made.status_code == 200, made.text
            version = made.json()["version"]
            assert (version["label"], version["author"], version["editors"]) == (
                "greeting",
                "bob",
                ["ann"],
            )
            text.insert(len(str(text).encode()), " and Bob")
            await ann.flush()
            listed = (await val.get("/doc/versions")).json()["versions"]
            assert [v["id"] for v in listed] == [version["id"]]
            content = (await val.get(f"/doc/versions/{version['id']}")).json()
            assert content["roots"] == saw_then

            async def bob_arrived() -> bool:
                now = (await val.get("/doc/versions/now")).json()
                return bool(now["roots"]["body"]["text"] == "Grüße 👋 from Ann and Bob")

            await eventually(bob_arrived, what="Ann's second edit on the server")
            changes = (await val.get(f"/doc/versions/{version['id']}/diff/now")).json()
            assert changes["roots"]["body"]["changes"] == [
                {"op": "insert", "index": 17, "length": 8, "text": " and Bob", "author": "ann"}
            ]
            assert (await bob.post(f"/doc/versions/{version['id']}/restore")).status_code == 403
            assert (await val.get("/doc/versions/99")).status_code == 404
            assert (await val.delete("/doc/versions")).status_code == 405
        async with api(url, "ann", Role.OWNER) as owner:
            restored = await owner.post(f"/doc/versions/{version['id']}/restore")
            assert restored.status_code == 200, restored.text
            assert restored.json()["version"]["label"] == "Restored version 1 (greeting)"
        await ann.wait_for(lambda: str(text) == "Grüße 👋 from Ann")
    async with httpx.AsyncClient() as anonymous:
        answer = await anonymous.get(f"{http(url)}/api/documents/doc/versions")
        assert answer.status_code == 401


async def test_restore_while_others_keep_editing_converges(open_server: Server) -> None:
    """One client types without pause while the document is restored: every replica
    ends equal, with the version's content followed by the typist's later words,
    in order, the last one included."""
    app, url = open_server
    async with yclient(url, "doc") as ann, yclient(url, "doc") as bob:
        ann.doc.get("body", type=Text).insert(0, "Version text. ")
        ann.doc.get("meta", type=Map)["state"] = "draft"
        ann.doc.get("list", type=Array).extend([1, 2])
        await ann.flush()
        await settle(ann, bob)
        async with api(url) as client:
            version = (await client.post("/doc/versions", json={"label": "v"})).json()["version"]
            expected = content_of(ann.doc)
            ann.doc.get("body", type=Text).insert(0, "Ann's later edit. ")
            ann.doc.get("meta", type=Map)["state"] = "final"
            ann.doc.get("list", type=Array).append(3)
            await ann.flush()
            await settle(ann, bob)
            await settle(ann, bob)
            typed: list[str] = []
            done = anyio.Event()

            async def type_along() -> None:
                body = bob.doc.get("body", type=Text)
                n = 0
                while not done.is_set() or n < 5:
                    word = f"w{n};"
                    body.insert(len(str(body).encode()), word)
                    typed.append(word)
                    await bob.flush()
                    n += 1
                    await anyio.sleep(0.005)

            async with anyio.create_task_group() as tg:
                tg.start_soon(type_along)
                await eventually(lambda: len(typed) >= 3, what="typing under way")
                answer = await client.post(f"/doc/versions/{version['id']}/restore")
                assert answer.status_code == 200, answer.text
                done.set()
        await settle(ann, bob)
        async with yclient(url, "doc") as fresh:
            await settle(ann, fresh)
        body = str(ann.doc.get("body", type=Text))
        assert body.startswith(expected["body"]["text"])
        tail = body[len(expected["body"]["text"]) :]
        words = re.findall(r"w\d+;", tail)
        assert "".join(words) == tail and words, tail
        assert words == typed[typed.index(words[0]) :]  # in order, through the last
        after = content_of(ann.doc)
        assert after["meta"] == expected["meta"]
        assert after["list"] == expected["list"]
        assert content_of(bob.doc) == after == content_of(fresh.doc)


async def test_the_version_message_names_what_was_sent_before_it(open_server: Server) -> None:
    """Our WebSocket version request: a version made with it holds every update the
    client sent before the request; list works too; unknown ops are refused in the
    reply, and the connection stays."""
    app, url = open_server
    async with yclient(url, "doc") as client:
        client.doc.get("t", type=Text).insert(0, "before the version")
        await client.flush()
        await client.send(
            protocol.encode_version_request(json.dumps({"id": 1, "op": "create", "label": "ws"}))
        )
        for request in ({"id": 2, "op": "list"}, {"id": 3, "op": "rewrite"}):
            await client.send(protocol.encode_version_request(json.dumps(request)))
        replies: list[dict[str, Any]] = []

        def collected() -> bool:
            replies[:] = [
                json.loads(m.body) for m in client.received if isinstance(m, protocol.VersionReply)
            ]
            return len(replies) == 3

        await client.wait_for(collected)
        made, listed, refused = replies
        assert made["ok"] and made["version"]["label"] == "ws"
        assert listed["ok"] and [v["id"] for v in listed["versions"]] == [made["version"]["id"]]
        assert (refused["id"], refused["ok"]) == (3, False) and "unknown version op" in refused[
            "error"
        ]
        content = await app.engine.history.content("doc", made["version"]["id"])
        assert content["roots"]["t"]["text"] == "before the version"
        assert client.close_code is None


async def test_a_viewer_may_list_but_not_name_over_the_websocket(secured: Server) -> None:
    _, url = secured
    async with yclient(url, f"doc?token={token('ann', Role.EDITOR)}") as editor:
        editor.doc.get("t", type=Text).insert(0, "x")
        await editor.flush()
        async with yclient(url, f"doc?token={token('val', Role.VIEWER)}") as viewer:
            for request in ({"id": 1, "op": "create"}, {"id": 2, "op": "list"}):
                await viewer.send(protocol.encode_version_request(json.dumps(request)))
            await viewer.wait_for(
                lambda: sum(isinstance(m, protocol.VersionReply) for m in viewer.received) == 2
            )
            replies = [
                json.loads(m.body) for m in viewer.received if isinstance(m, protocol.VersionReply)
            ]
            assert replies[0] == {
                "id": 1,
                "ok": False,
                "error": "editor right needed to create versions",
            }
            assert replies[1]["ok"] is True


async def test_the_restored_state_survives_a_restart(tmp_path: Path) -> None:
    """Restore, stop the server, start another on the same file: it holds the
    restored content, and both versions."""
    settings = Settings(
        ping_interval=None, engine=ENGINE, database_url=sqlite_url(str(tmp_path / "h.db"))
    )
    async with running_server(settings) as (_, url):
        async with yclient(url, "doc") as client:
            client.doc.get("t", type=Text).insert(0, "kept")
            await client.flush()
            await client.request_persisted()
            await client.wait_persisted()
            async with api(url) as http_client:
                version = (await http_client.post("/doc/versions", json={})).json()["version"]
                client.doc.get("t", type=Text).insert(4, " and lost")
                await client.flush()
                await client.wait_for(lambda: client.persisted >= 2)
                answer = await http_client.post(f"/doc/versions/{version['id']}/restore")
                assert answer.status_code == 200
            await client.wait_for(lambda: str(client.doc.get("t", type=Text)) == "kept")
    async with running_server(settings) as (_, url):
        async with yclient(url, "doc") as client:
            assert str(client.doc.get("t", type=Text)) == "kept"
        async with api(url) as http_client:
            listed = (await http_client.get("/doc/versions")).json()["versions"]
    assert [v["label"] for v in listed] == [None, f"Restored version {version['id']}"]


async def test_a_denied_writer_is_no_editor_of_the_next_version(secured: Server) -> None:
    """A viewer's write is denied and rolled back: the version made afterwards, and the
    diff up to it, list only the editor whose changes were kept."""
    _, url = secured
    async with (
        yclient(url, f"doc?token={token('ann', Role.EDITOR)}") as ann,
        yclient(url, f"doc?token={token('val', Role.VIEWER)}") as val,
        api(url, "own", Role.OWNER) as owner,
    ):
        ann.doc.get("t", type=Text).insert(0, "kept")
        await ann.flush()
        await ann.request_persisted()
        await ann.wait_persisted()
        first = (await owner.post("/doc/versions", json={})).json()["version"]
        await val.wait_for(lambda: str(val.doc.get("t", type=Text)) == "kept")
        val.doc.get("t", type=Text).insert(0, "DENIED ")
        await val.flush()
        await val.wait_for(
            lambda: any(isinstance(m, protocol.PermissionDenied) for m in val.received)
        )
        await val.wait_for(lambda: str(val.doc.get("t", type=Text)) == "kept")
        ann.doc.get("t", type=Text).insert(4, " too")
        await ann.flush()
        await settle(ann, val)
        made = await owner.post("/doc/versions", json={"label": "after the denial"})
        assert made.status_code == 200, made.text
        second = made.json()["version"]
        assert second["seq"] > first["seq"] + 1, "the denied write was not stored"
        assert second["editors"] == ["ann"]
        changes = (await owner.get(f"/doc/versions/{first['id']}/diff/{second['id']}")).json()
        assert changes["editors"] == ["ann"]
        authors = {change.get("author") for change in changes["roots"]["t"]["changes"]}
        assert "val" not in authors and "ann" in authors, changes
