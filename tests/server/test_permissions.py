"""Permissions end to end over real WebSockets: tokens, rights checked before any
document data, denied writes rolled back for everyone, and rights changed live."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from pycrdt import Doc, Map, Text

from collab_engine import protocol
from collab_engine.permissions import Grant, Role
from server.app import App
from server.auth import mint
from server.settings import Settings
from tests.conftest import TEST_ENGINE, running_server
from tests.yclient import YClient, yclient

pytestmark = pytest.mark.anyio

SECRET = "test-secret-of-at-least-32-bytes!"
Server = tuple[App, str]


@pytest.fixture
async def secured() -> AsyncIterator[Server]:
    settings = Settings(ping_interval=None, engine=TEST_ENGINE, secret=SECRET)
    async with running_server(settings) as running:
        yield running


def token(user: str, role: Role = Role.EDITOR, **claims: object) -> str:
    return mint(SECRET, user=user, name=user.title(), role=role, **claims)  # type: ignore[arg-type]


def denials(client: YClient) -> list[str]:
    return [m.reason for m in client.received if isinstance(m, protocol.PermissionDenied)]


async def refused(url: str, name: str) -> YClient:
    async with yclient(url, name, sync=False) as client:
        with anyio.fail_after(5):
            await client.closed.wait()
    return client


async def test_no_or_bad_token_closes_with_4401_before_any_data(secured: Server) -> None:
    _, url = secured
    for name in ("doc", "doc?token=garbage", f"doc?token={mint('z' * 32, user='eve')}"):
        client = await refused(url, name)
        assert client.close_code == 4401, name
        assert client.received == [], "document data was sent before the check"
    expired = await refused(url, f"doc?token={token('ann', ttl=-5)}")
    assert (expired.close_code, expired.close_reason) == (4401, "token expired")


async def test_no_read_right_closes_with_4403(secured: Server) -> None:
    app, url = secured
    other = await refused(url, f"secret/doc?token={token('ann', documents='notes/*')}")
    assert other.close_code == 4403 and other.received == []
    await app.engine.grant("notes/x", Grant("user:bob", Role.OWNER))
    ungranted = await refused(url, f"notes/x?token={token('ann', documents='notes/*')}")
    assert ungranted.close_code == 4403
    assert (ungranted.close_reason or "").startswith(
        "ann may not read 'notes/x': it has grants, and none for user:ann;"
    ), ungranted.close_reason
    assert other.close_reason == (
        "ann may not read 'secret/doc': the token is only for documents matching 'notes/*'"
    )
    async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
        answer = await http.get(
            "/api/documents/notes/x/versions",
            headers={"authorization": f"Bearer {token('ann', groups=['eng'])}"},
        )
        assert answer.status_code == 403
        assert answer.json()["error"] == (
            "ann may not read 'notes/x': it has grants, and none for user:ann or the "
            "token's groups (group:eng); an owner can add one with "
            "PUT /api/documents/notes/x/grants/user:ann"
        )
        admin = {"authorization": f"Bearer {token('root', Role.VIEWER, admin=True)}"}
        granted = await http.put(
            "/api/documents/notes/x/grants/user:ann", json={"role": "viewer"}, headers=admin
        )
        assert granted.status_code == 200, granted.text
    # The grant the message names is the one that was missing.
    async with yclient(url, f"notes/x?token={token('ann', documents='notes/*')}") as reader:
        assert reader.close_code is None and not reader.closed.is_set()


async def test_a_viewers_write_is_rolled_back_for_everyone(secured: Server) -> None:
    """The viewer reads; its insert, map write and deletion are denied with a reason;
    its own document returns to the server's; the editor never shows any of it."""
    app, url = secured
    async with yclient(url, f"d?token={token('ed')}") as editor:
        editor.doc.get("t", type=Text).insert(0, "keep this text")
        editor.doc.get("m", type=Map)["k"] = "v"
        await editor.flush()
        # Every state the editor's document goes through, replayed afterwards.
        start = editor.doc.get_update()
        updates: list[bytes] = []
        editor.doc.observe(lambda event: updates.append(event.update))
        async with yclient(url, f"d?token={token('vi', Role.VIEWER)}") as viewer:
            await viewer.wait_for(lambda: str(viewer.doc.get("t", type=Text)) == "keep this text")
            vt, vm = viewer.doc.get("t", type=Text), viewer.doc.get("m", type=Map)
            with viewer.doc.transaction():
                vt.insert(0, "HACKED ")
                del vt[len("HACKED keep") : len("HACKED keep this")]
                vm["k"] = "stolen"
            assert str(vt) == "HACKED keep text"
            await viewer.flush()
            await viewer.wait_for(lambda: str(vt) == "keep this text" and vm.to_py() == {"k": "v"})
            assert denials(viewer) == ["vi may not write to 'd'"]
            # Later writes are denied too; the viewer stays connected and in sync.
            vt.insert(0, "again ")
            await viewer.flush()
            await viewer.wait_for(lambda: str(vt) == "keep this text" and len(denials(viewer)) == 2)
            assert not viewer.closed.is_set()
        editor.doc.get("t", type=Text).insert(0, ">")
        await editor.flush()
        await editor.wait_for(
            lambda: str(app.engine.rooms["d"].doc.get("t", type=Text)) == ">keep this text"
        )
    replay: Doc = Doc()
    replay.apply_update(start)
    seen = []
    for update in updates:
        replay.apply_update(update)
        seen.append(str(replay.get("t", type=Text)))
    assert seen and not any("HACKED" in s or "again" in s or s == "keep text" for s in seen), seen


async def test_rights_change_live(secured: Server) -> None:
    """A downgrade to viewer makes the next write denied; losing every right closes
    the connection with 4403; an expiring token closes it with 4401."""
    app, url = secured
    async with yclient(url, f"live?token={token('ann')}") as ann:
        ann.doc.get("t", type=Text).insert(0, "mine")
        await ann.flush()
        await app.engine.grant("live", Grant("user:ann", Role.VIEWER))
        ann.doc.get("t", type=Text).insert(0, "denied ")
        await ann.flush()
        await ann.wait_for(
            lambda: str(ann.doc.get("t", type=Text)) == "mine" and len(denials(ann)) == 1
        )
        await app.engine.grant("live", Grant("user:bob", Role.OWNER))
        await app.engine.revoke("live", "user:ann")
        with anyio.fail_after(5):
            await ann.closed.wait()
        assert (ann.close_code, ann.close_reason) == (4403, "no right to read 'live' any more")
    # `exp` is whole seconds (int(issued + ttl)): a 1 s token can have only
    # milliseconds left, and be closed before the client's first frame goes out.
    async with yclient(url, f"short?token={token('cat', ttl=2)}") as cat:
        with anyio.fail_after(5):
            await cat.closed.wait()
        assert (cat.close_code, cat.close_reason) == (4401, "token expired")


async def test_grants_over_http(secured: Server) -> None:
    """Owners read and change grants over HTTP; editors and strangers may not."""
    app, url = secured
    base = url.replace("ws://", "http://")
    owner = {"Authorization": f"Bearer {token('olga', Role.OWNER)}"}
    editor = {"Authorization": f"Bearer {token('ed')}"}
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/api/documents/g/grants")).status_code == 401
        assert (await http.get("/api/documents/g/grants", headers=editor)).status_code == 403
        put = await http.put(
            "/api/documents/g/grants/user:olga", headers=owner, json={"role": "owner"}
        )
        assert put.status_code == 200 and put.json()["grant"] == {
            "principal": "user:olga",
            "role": "owner",
        }
        assert (
            await http.put(
                "/api/documents/g/grants/group:eng", headers=owner, json={"role": "viewer"}
            )
        ).status_code == 200
        bad = await http.put(
            "/api/documents/g/grants/group:eng", headers=owner, json={"role": "god"}
        )
        assert bad.status_code == 400 and "unknown role" in bad.json()["error"]
        listed = await http.get("/api/documents/g/grants", headers=owner)
        assert listed.json()["grants"] == [
            {"principal": "group:eng", "role": "viewer"},
            {"principal": "user:olga", "role": "owner"},
        ]
        # Grants now bound every token: the editor, matching none, may not even read.
        assert (await http.get("/api/documents/g/presence", headers=editor)).status_code == 403
        assert (
            await http.delete("/api/documents/g/grants/group:eng", headers=owner)
        ).status_code == 200
        assert (
            await http.delete("/api/documents/g/grants/group:eng", headers=owner)
        ).status_code == 404
    assert await app.engine.grants("g") == [Grant("user:olga", Role.OWNER)]


async def test_locks_over_http_and_websocket(secured: Server) -> None:
    """An editor takes a lock over HTTP; another editor's WebSocket write into the
    section is denied and rolled back; its own lock request is refused; viewers may
    list but not lock; an owner forces the lock open; clients see locks in awareness."""
    app, url = secured
    base = url.replace("ws://", "http://")
    ann = {"Authorization": f"Bearer {token('ann')}"}
    viewer = {"Authorization": f"Bearer {token('vi', Role.VIEWER)}"}
    owner = {"Authorization": f"Bearer {token('olga', Role.OWNER)}"}
    async with (
        httpx.AsyncClient(base_url=base) as http,
        yclient(url, f"lk?token={token('bob')}") as bob,
    ):
        bob.doc.get("sections", type=Map)["intro"] = "first"
        await bob.flush()
        await bob.wait_for(lambda: "intro" in app.engine.rooms["lk"].doc.get("sections", type=Map))
        took = await http.post(
            "/api/documents/lk/locks",
            headers=ann,
            json={"op": "acquire", "section": ["sections", "intro"], "ttl": 60},
        )
        assert took.status_code == 200 and took.json()["lock"]["holder"]["id"] == "ann"
        server_id = app.engine.rooms["lk"].presence.server_client_id
        await bob.wait_for(
            lambda: bool(bob.awareness.get(server_id, {}).get("server", {}).get("locks"))
        )
        bob.doc.get("sections", type=Map)["intro"] = "overwritten"
        await bob.flush()
        await bob.wait_for(
            lambda: bob.doc.get("sections", type=Map)["intro"] == "first" and denials(bob) != []
        )
        assert denials(bob) == ["['sections', 'intro'] is locked by Ann"]
        await bob.send(
            protocol.encode_lock_request('{"id": 9, "op": "acquire", "section": ["sections"]}')
        )
        await bob.wait_for(lambda: any(isinstance(m, protocol.LockReply) for m in bob.received))
        [reply] = [m for m in bob.received if isinstance(m, protocol.LockReply)]
        assert '"ok": false' in reply.body and "locked by Ann" in reply.body
        listed = await http.get("/api/documents/lk/locks", headers=viewer)
        assert [lock["section"] for lock in listed.json()["locks"]] == [["sections", "intro"]]
        assert (
            await http.post(
                "/api/documents/lk/locks", headers=viewer, json={"op": "acquire", "section": []}
            )
        ).status_code == 403
        assert (
            await http.post(
                "/api/documents/lk/locks",
                headers=ann,
                json={"op": "forceRelease", "section": ["sections", "intro"]},
            )
        ).status_code == 403
        assert (
            await http.post(
                "/api/documents/lk/locks",
                headers=owner,
                json={"op": "forceRelease", "section": ["sections", "intro"]},
            )
        ).status_code == 200
        bob.doc.get("sections", type=Map)["intro"] = "now free"
        await bob.flush()
        await bob.wait_for(
            lambda: app.engine.rooms["lk"].doc.get("sections", type=Map)["intro"] == "now free"
        )


async def test_a_star_in_a_tokens_pattern_stays_within_one_segment(secured: Server) -> None:
    """`notes/*` opens `notes/a` but not `notes/a/b` (4403); `notes/**` opens both."""
    _, url = secured
    one = token("ann", documents="notes/*")
    async with yclient(url, f"notes/a?token={one}") as client:
        assert not client.closed.is_set()
    deeper = await refused(url, f"notes/a/b?token={one}")
    assert deeper.close_code == 4403 and deeper.received == []
    every = token("ann", documents="notes/**")
    for name in ("notes/a", "notes/a/b"):
        async with yclient(url, f"{name}?token={every}") as client:
            assert client.synced.is_set() and not client.closed.is_set()


async def test_a_tokens_pattern_and_the_name_are_compared_in_nfc(secured: Server) -> None:
    _, url = secured
    nfd_pattern = token("ann", documents="cafe\u0301/*")
    async with yclient(url, f"caf%C3%A9/menu?token={nfd_pattern}") as client:
        assert client.synced.is_set()
