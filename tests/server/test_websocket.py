"""End to end over a real hypercorn on 127.0.0.1: sync, awareness, limits and isolation."""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pycrdt import Doc, Map, Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from collab_engine import protocol
from collab_engine.engine import EngineConfig
from collab_engine.identity import Identity
from collab_engine.permissions import Role
from collab_engine.store import Entry
from server.app import App
from server.settings import Settings
from storage import SQLStore, sqlite_url
from tests.conftest import TEST_ENGINE, running_server
from tests.yclient import yclient

pytestmark = pytest.mark.anyio

Server = tuple[App, str]


async def test_server_opens_with_sync_step1(server: Server) -> None:
    """The first frame of a connection is the server's sync step 1."""
    _, url = server
    async with connect(f"{url}/doc") as ws:
        first = protocol.decode(await ws.recv())  # type: ignore[arg-type]
    assert isinstance(first, protocol.SyncStep1)


async def test_two_clients_sync_and_a_late_joiner_gets_everything(server: Server) -> None:
    """Edits on Text and Map reach the other client; a late joiner receives the whole doc."""
    _, url = server
    async with yclient(url, "notes/today") as a, yclient(url, "notes/today") as b:
        a.doc["t"] = Text()
        a.doc.get("t", type=Text).insert(0, "héllo 😀")
        await a.flush()
        b.doc["m"] = Map()
        b.doc.get("m", type=Map)["k"] = [1, 2]
        await b.flush()
        await b.wait_for(lambda: str(b.doc.get("t", type=Text)) == "héllo 😀")
        await a.wait_for(lambda: a.doc.get("m", type=Map).to_py() == {"k": [1.0, 2.0]})
        async with yclient(url, "notes/today") as late:
            assert str(late.doc.get("t", type=Text)) == "héllo 😀"
            assert late.doc.get("m", type=Map).to_py() == {"k": [1.0, 2.0]}


async def test_names_address_separate_documents_and_ignore_the_query(server: Server) -> None:
    """The whole path is the name (slashes included); the query string is not part of it."""
    _, url = server
    async with (
        yclient(url, "a/b?token=xyz") as a,
        yclient(url, "a/b") as same,
        yclient(url, "a") as other,
    ):
        a.doc.get("t", type=Text).insert(0, "x")
        await a.flush()
        await same.wait_for(lambda: str(same.doc.get("t", type=Text)) == "x")
        await other.round_trip()
        assert str(other.doc.get("t", type=Text)) == ""


async def test_embedded_edit_reaches_websocket_clients(server: Server) -> None:
    """A change made through the engine in-process is seen by connected clients."""
    app, url = server
    async with yclient(url, "svc") as client:
        async with app.engine.room("svc") as room:
            with room.doc.transaction():
                room.doc.get("t", type=Text).insert(0, "from python")
        await client.wait_for(lambda: str(client.doc.get("t", type=Text)) == "from python")


async def test_joiner_gets_awareness_and_disconnect_removes_it(server: Server) -> None:
    """A joiner receives present states at once; an abrupt disconnect removes them fast."""
    _, url = server
    async with yclient(url, "aw") as watcher:
        async with yclient(url, "aw") as leaver:
            await leaver.set_awareness({"user": {"name": "Leaver"}})
            await watcher.wait_for(lambda: leaver.doc.client_id in watcher.awareness)
            async with yclient(url, "aw") as joiner:
                await joiner.wait_for(lambda: leaver.doc.client_id in joiner.awareness)
                user = joiner.awareness[leaver.doc.client_id]["user"]
                # The name is the client's; the id is stamped by the server.
                assert user == {"name": "Leaver", "id": user["id"], "anonymous": True}
                assert user["id"].startswith("anonymous:")
            # Abrupt: drop the TCP connection without a close frame.
            leaver.ws.transport.abort()
            start = anyio.current_time()
            await watcher.wait_for(
                lambda: leaver.doc.client_id not in watcher.awareness, timeout=1.0
            )
            assert anyio.current_time() - start < 1.0


async def test_query_awareness_is_answered(server: Server) -> None:
    """Query awareness returns every present state: the server's own only while it
    has something to say (a lock)."""
    app, url = server
    async with yclient(url, "q") as a, yclient(url, "q") as b:
        await a.set_awareness({"status": "online"})
        await b.wait_for(lambda: a.doc.client_id in b.awareness)

        async def query() -> dict[int, Any]:
            b.received.clear()
            await b.send(protocol.encode_query_awareness())
            await b.wait_for(
                lambda: any(isinstance(m, protocol.AwarenessUpdate) for m in b.received)
            )
            [answer] = [m for m in b.received if isinstance(m, protocol.AwarenessUpdate)]
            return {e.client_id: json.loads(e.state or "null") for e in answer.entries}

        states = await query()
        assert set(states) == {a.doc.client_id}
        assert states[a.doc.client_id]["status"] == "online"
        room = app.engine.rooms["q"]
        room.lock("acquire", ("body",), identity=Identity("ann", "Ann"), role=Role.EDITOR)
        await b.wait_for(lambda: room.presence.server_client_id in b.awareness)
        states = await query()
        assert set(states) == {a.doc.client_id, room.presence.server_client_id}
        assert states[room.presence.server_client_id]["server"]["locks"] == [
            {"section": ["body"], "holder": {"id": "ann", "name": "Ann"}}
        ]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        pytest.param(b"\x00\x07\xff", "unknown sync message type 7", id="unknown-sync"),
        pytest.param(b"\x00\x02\x04junk", "invalid Yjs update", id="bad-update"),
        pytest.param(b"\x09", "unknown message type 9", id="unknown-type"),
        pytest.param("text", "text frames", id="text-frame"),
    ],
)
async def test_malformed_frame_closes_only_that_connection(
    server: Server, frame: bytes | str, reason: str
) -> None:
    """A bad frame closes its connection with 4400 and a reason; others and the doc are fine."""
    app, url = server
    async with yclient(url, "iso") as good:
        good.doc.get("t", type=Text).insert(0, "safe")
        await good.flush()
        async with yclient(url, "iso") as bad:
            await bad.wait_for(lambda: str(bad.doc.get("t", type=Text)) == "safe")
            await bad.send(frame)  # type: ignore[arg-type]
            with anyio.fail_after(5):
                await bad.closed.wait()
            assert bad.close_code == 4400
            assert bad.close_reason is not None and reason in bad.close_reason
        # The room, the other client and the document are untouched and still in sync.
        assert str(app.engine.rooms["iso"].doc.get("t", type=Text)) == "safe"
        good.doc.get("t", type=Text).insert(4, "!")
        await good.flush()
        async with yclient(url, "iso") as fresh:
            await fresh.wait_for(lambda: str(fresh.doc.get("t", type=Text)) == "safe!")
        assert not good.closed.is_set()


async def test_frame_over_the_limit_closes_with_1009() -> None:
    """A frame larger than max_frame_size closes that connection with 1009."""
    settings = Settings(max_frame_size=4096, ping_interval=None, engine=TEST_ENGINE)
    async with running_server(settings) as (app, url):
        async with yclient(url, "big") as other, yclient(url, "big") as sender:
            doc = Doc()
            doc.get("t", type=Text).insert(0, "x" * 5000)
            await sender.send(protocol.encode_sync_update(doc.get_update()))
            with anyio.fail_after(5):
                await sender.closed.wait()
            assert sender.close_code == 1009
            assert str(app.engine.rooms["big"].doc.get("t", type=Text)) == ""
            assert not other.closed.is_set()
            # Just under the limit passes.
            small = Doc()
            small.get("t", type=Text).insert(0, "y" * 3000)
            await other.send(protocol.encode_sync_update(small.get_update()))
            room = app.engine.rooms["big"]
            with anyio.fail_after(5):
                while len(str(room.doc.get("t", type=Text))) != 3000:
                    await anyio.sleep(0.01)
            assert not other.closed.is_set()


async def test_awareness_state_over_the_limit_closes_with_1009() -> None:
    """An awareness state over the limit closes with 1009 and a reason; nobody sees it."""
    settings = Settings(
        ping_interval=None, engine=replace(TEST_ENGINE, max_awareness_state_size=256)
    )
    async with running_server(settings) as (_, url):
        async with yclient(url, "aw") as watcher, yclient(url, "aw") as sender:
            await sender.set_awareness({"pad": "x" * 300})
            with anyio.fail_after(5):
                await sender.closed.wait()
            assert sender.close_code == 1009
            assert sender.close_reason is not None and "over 256 bytes" in sender.close_reason
            assert sender.doc.client_id not in watcher.awareness


@pytest.mark.parametrize(
    ("name", "reason"), [("", "no document name"), ("n" * 600, "longer than 512 bytes")]
)
async def test_bad_document_name_is_refused_with_4400(
    server: Server, name: str, reason: str
) -> None:
    """An empty or over-long document name is refused with 4400 and a reason."""
    _, url = server
    async with connect(f"{url}/{name}") as ws:
        with anyio.fail_after(5), pytest.raises(ConnectionClosedError):
            async for _ in ws:
                pass
    assert ws.close_code == 4400
    assert ws.close_reason is not None and reason in ws.close_reason


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        # The wire: bounded by the bytes the client has not read.
        (Settings(ping_interval=None, max_buffered=1024 * 1024), "bytes sent and not yet read"),
        # The ASGI writer: bounded by the frames waiting in the outbox.
        (
            Settings(ping_interval=None, wire=False, engine=replace(TEST_ENGINE, outbox_size=8)),
            "frames waiting to be sent",
        ),
    ],
    ids=["wire", "asgi"],
)
@pytest.mark.own_transport
async def test_slow_reader_is_evicted_with_1013_and_heals_on_reconnect(
    settings: Settings, reason: str
) -> None:
    """A client that stops reading is closed with 1013; the room goes on; reconnecting heals."""
    async with running_server(settings) as (app, url):
        host, port = url.removeprefix("ws://").split(":")
        async with yclient(url, "slow") as writer:
            # A client with a tiny receive window that completes the handshake, then
            # never reads. No compression: the payload must really fill the buffers.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            async with connect(
                f"{url}/slow", sock=sock, compression=None, max_size=None, ping_interval=None
            ) as stalled:
                stalled.transport.pause_reading()
                room = app.engine.rooms["slow"]
                text = writer.doc.get("t", type=Text)
                with anyio.fail_after(30):
                    while len(room.peers) == 2:
                        # Incompressible text, so that no layer can shrink it.
                        text.insert(len(text), secrets.token_hex(128 * 1024))
                        await writer.flush()
                        await anyio.sleep(0.01)
                stalled.transport.resume_reading()
                with anyio.fail_after(10), pytest.raises(ConnectionClosedError):
                    async for _ in stalled:
                        pass
                assert stalled.close_code == 1013
                assert stalled.close_reason is not None and reason in stalled.close_reason
            assert not writer.closed.is_set()
            expected = str(text)
            async with yclient(url, "slow") as healed:
                assert str(healed.doc.get("t", type=Text)) == expected


@pytest.mark.own_transport
@pytest.mark.parametrize("wire", [True, False], ids=["wire", "asgi"])
@pytest.mark.parametrize("size", [10, 125, 126, 65_535, 65_536, 200_000])
async def test_frames_of_every_length_class_arrive_whole(wire: bool, size: int) -> None:
    """Updates whose frames need a 7-bit, 16-bit or 64-bit length (and the largest,
    written apart from their header) reach the other client intact, by either path."""
    async with running_server(Settings(ping_interval=None, wire=wire)) as (_, url):
        async with yclient(url, "sizes") as a, yclient(url, "sizes") as b:
            content = secrets.token_hex(size // 2 + 1)[:size]
            a.doc.get("t", type=Text).insert(0, content)
            await a.flush()
            await b.wait_for(lambda: str(b.doc.get("t", type=Text)) == content)


async def test_healthz_and_unknown_paths() -> None:
    """GET /healthz answers 200 with the load; other HTTP paths are 404."""
    async with running_server() as (_, url):
        base = url.replace("ws://", "http://")
        async with yclient(url, "h"):
            async with httpx.AsyncClient() as http:
                health = await http.get(f"{base}/healthz")
                missing = await http.get(f"{base}/nope")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "rooms": 1, "peers": 1}
    assert missing.status_code == 404


@pytest.mark.own_transport
@pytest.mark.parametrize("wire", [True, False], ids=["wire", "asgi"])
async def test_idle_connection_is_kept_alive_with_pings(wire: bool) -> None:
    """With a ping interval set, the server pings an idle connection, which stays open:
    the wire's timer on its connections, hypercorn's ping task through ASGI. Three
    pings in a row, each answered, are awaited (a generous deadline, not a count
    within a time)."""
    settings = Settings(ping_interval=0.1, engine=EngineConfig(unload_grace=0.2), wire=wire)
    async with running_server(settings) as (_, url):
        host, port = url.removeprefix("ws://").split(":")
        pings = await await_pings(host, int(port), count=3, deadline=30.0)
    assert pings == 3


async def await_pings(host: str, port: int, count: int, deadline: float) -> int:
    """Open a raw WebSocket with wsproto, answer the server's pings, and return once
    `count` have come (or the deadline passed: fewer are returned)."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import Ping, Request

    ws = WSConnection(ConnectionType.CLIENT)
    pings = 0
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(ws.send(Request(host=host, target="/ping-doc")))
        with anyio.move_on_after(deadline):
            while pings < count:
                ws.receive_data(await stream.receive())
                for event in ws.events():
                    if isinstance(event, Ping):
                        pings += 1
                        await stream.send(ws.send(event.response()))
    return pings


async def test_an_unreadable_document_is_refused_with_1011(tmp_path: Path) -> None:
    """A document whose stored update does not decode is refused whole (1011, with the
    document and sequence in the reason); another document on the server is served,
    and the stored rows are left as they were."""
    url_db = sqlite_url(str(tmp_path / "bad.db"))
    store = await SQLStore.connect(url_db)
    try:
        await store.append([Entry("bad", b"\xff\xff garbage")])
    finally:
        await store.aclose()
    settings = Settings(ping_interval=None, engine=TEST_ENGINE, database_url=url_db)
    async with running_server(settings) as (_, url):
        async with yclient(url, "good") as good:
            async with yclient(url, "bad", sync=False) as bad:
                with anyio.fail_after(5):
                    await bad.closed.wait()
                assert bad.close_code == 1011
                assert bad.close_reason is not None
                assert "'bad': update 1 cannot be decoded" in bad.close_reason
            good.doc.get("t", type=Text).insert(0, "still served")
            await good.flush()
            await good.request_persisted()
            await good.wait_persisted()
    store = await SQLStore.connect(url_db)
    try:
        assert (await store.load("bad")).updates == [(1, b"\xff\xff garbage")]
        assert len((await store.load("good")).updates) == 1
    finally:
        await store.aclose()


async def test_acknowledgements_over_the_wire(server: Server) -> None:
    """A client that asks is told, with our Persisted message, when its updates are stored."""
    app, url = server
    async with yclient(url, "acked") as client:
        await client.request_persisted()
        text = client.doc.get("t", type=Text)
        for i in range(30):
            text += f"{i} "
            await client.flush()
        await client.wait_persisted()
        assert client.persisted == client.updates_sent == 31  # with the sync step 2
        assert app.engine.rooms["acked"].stored


async def test_presence_over_http(server: Server) -> None:
    """`GET /api/documents/<name>/presence` lists the connected clients with their
    stamped identity and status; a document nobody has open lists nobody."""
    _, url = server
    base = url.replace("ws://", "http://")
    async with httpx.AsyncClient(base_url=base) as http:
        async with yclient(url, "team/notes") as a, yclient(url, "team/notes"):
            await a.set_awareness({"user": {"name": "Ann", "color": "#123456"}, "status": "busy"})
            await a.wait_for(lambda: a.doc.client_id in a.awareness)  # our stamped copy
            reply = await http.get("/api/documents/team/notes/presence")
            assert reply.status_code == 200
            body = reply.json()
            assert body["document"] == "team/notes"
            people = body["presence"]
            assert len(people) == 2
            [ann] = [p for p in people if p["clientId"] == a.doc.client_id]
            assert ann["user"]["name"] == "Ann" and ann["user"]["color"] == "#123456"
            assert ann["user"]["id"].startswith("anonymous:") and ann["user"]["anonymous"]
            assert (ann["status"], ann["typing"], ann["idle"]) == ("busy", False, False)
            [other] = [p for p in people if p["clientId"] is None]  # no awareness state
            assert other["status"] == "online" and other["user"]["id"] != ann["user"]["id"]
        nobody = await http.get("/api/documents/never/opened/presence")
        assert nobody.status_code == 200 and nobody.json()["presence"] == []
        assert (await http.post("/api/documents/x/presence")).status_code == 405
        assert (await http.get("/api/documents//presence")).status_code == 400


@pytest.mark.parametrize("enabled", [False, True])
async def test_websocket_compression_is_off_unless_configured(enabled: bool) -> None:
    """A client offering permessage-deflate (as browsers do) gets it only when the
    server is configured for it; either way the document syncs."""

    settings = Settings(ping_interval=None, engine=TEST_ENGINE, websocket_compression=enabled)
    async with running_server(settings) as (_, url):
        async with yclient(url, "doc") as client:  # websockets offers deflate by default
            names = [extension.name for extension in client.ws.protocol.extensions]
            assert names == (["permessage-deflate"] if enabled else [])
            client.doc.get("t", type=Text).insert(0, "x" * 1000)
            await client.flush()
            async with yclient(url, "doc") as other:
                assert str(other.doc.get("t", type=Text)) == "x" * 1000


DEEP_JSON = '{"a":' + "[" * 30_000 + "]" * 30_000 + "}"
"""A JSON object nested 30,001 deep: 60 KB, under the 64 KiB awareness state cap."""


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(protocol.encode_lock_request(DEEP_JSON), id="lock-request"),
        pytest.param(protocol.encode_version_request(DEEP_JSON), id="version-request"),
        pytest.param(
            protocol.encode_lock_request(
                '{"id": 1, "op": "acquire", "x": ' + "[" * 101 + "]" * 101 + "}"
            ),
            id="lock-request-just-over-the-limit",
        ),
    ],
)
async def test_deep_lock_and_version_requests_close_with_4400(server: Server, frame: bytes) -> None:
    """A lock or version request nested too deep is refused as a non-JSON one is: that
    connection is closed with 4400 and a reason; the room serves on."""
    app, url = server
    async with yclient(url, "deep-requests") as good, yclient(url, "deep-requests") as bad:
        await bad.send(frame)
        with anyio.fail_after(5):
            await bad.closed.wait()
        assert bad.close_code == 4400
        assert bad.close_reason is not None and "nested deeper than 100 levels" in bad.close_reason
        good.doc.get("t", type=Text).insert(0, "fine")
        await good.flush()
        async with yclient(url, "deep-requests") as fresh:
            await fresh.wait_for(lambda: str(fresh.doc.get("t", type=Text)) == "fine")
        assert not good.closed.is_set()


@pytest.mark.parametrize("levels", [101, 900, 30_000])
async def test_a_deep_awareness_state_closes_only_that_connection(
    server: Server, levels: int
) -> None:
    """A deeply nested awareness state (within the size cap) closes its connection with
    4400 and a reason; nobody sees it, and the others in the room sync and edit on."""
    app, url = server
    state = '{"user": {"name": "x"}, "deep": ' + "[" * levels + "]" * levels + "}"
    assert len(state) < app.engine.config.max_awareness_state_size
    async with yclient(url, "deep-aw") as watcher, yclient(url, "deep-aw") as sender:
        await watcher.set_awareness({"user": {"name": "Watcher"}})
        client_id = sender.doc.client_id
        await sender.send(protocol.encode_awareness([protocol.AwarenessEntry(client_id, 1, state)]))  # type: ignore[arg-type]
        with anyio.fail_after(5):
            await sender.closed.wait()
        assert sender.close_code == 4400
        assert sender.close_reason is not None and "nested deeper than 100" in sender.close_reason
        watcher.doc.get("t", type=Text).insert(0, "after")
        await watcher.flush()
        async with yclient(url, "deep-aw") as late:
            await late.wait_for(lambda: str(late.doc.get("t", type=Text)) == "after")
            late.doc.get("t", type=Text).insert(5, "!")
            await late.flush()
            await watcher.wait_for(lambda: str(watcher.doc.get("t", type=Text)) == "after!")
            await late.wait_for(lambda: watcher.doc.client_id in late.awareness)
            assert client_id not in late.awareness
        assert client_id not in watcher.awareness
        assert not watcher.closed.is_set()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("bin/%FF", "not UTF-8"),
        ("bin/%FE", "not UTF-8"),
        ("bin/%C3", "not UTF-8"),  # a truncated sequence
        ("bin/%ED%A0%80", "not UTF-8"),  # an encoded surrogate
        ("nul%00name", "control character U+0000"),
        ("unit%1Fsep", "control character U+001F"),
        ("del%7F", "control character U+007F"),
        ("next%C2%85line", "control character U+0085"),  # C1
    ],
)
async def test_names_that_are_not_clean_utf8_text_are_refused_with_4400(
    server: Server, path: str, reason: str
) -> None:
    """Bytes that are not UTF-8 are refused, not replaced by U+FFFD (which made
    `%FF`, `%FE` and `%EF%BF%BD` one document); so are control characters."""
    app, url = server
    async with connect(f"{url}/{path}") as ws:
        with anyio.fail_after(5), pytest.raises(ConnectionClosedError):
            async for _ in ws:
                pass
    assert ws.close_code == 4400
    assert ws.close_reason is not None and reason in ws.close_reason
    assert not app.engine.rooms


async def test_the_replacement_character_itself_is_a_name_of_its_own(server: Server) -> None:
    app, url = server
    async with yclient(url, "bin/%EF%BF%BD") as client:
        client.doc.get("t", type=Text).insert(0, "mine")
        await client.flush()
        await client.wait_for(
            lambda: "mine" in str(app.engine.rooms["bin/\ufffd"].doc.get("t", type=Text))
        )
    assert list(app.engine.rooms) == ["bin/\ufffd"]


async def test_nfc_and_nfd_spellings_reach_one_document(server: Server) -> None:
    """Names are normalized to NFC: `café` as one code point or as `e` and a combining
    accent is one document, over the WebSocket and over HTTP alike."""
    app, url = server
    nfc, nfd = "caf%C3%A9", "cafe%CC%81"
    async with yclient(url, f"menu/{nfd}") as writer:
        writer.doc.get("t", type=Text).insert(0, "crème")
        await writer.flush()
        async with yclient(url, f"menu/{nfc}") as reader:
            await reader.wait_for(lambda: str(reader.doc.get("t", type=Text)) == "crème")
    assert list(app.engine.rooms) == ["menu/caf\u00e9"]
    async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
        reply = await http.put(
            f"/api/documents/menu/{nfc}/content",
            json={"roots": {"t": {"type": "text", "text": "soupe"}}},
        )
        assert reply.status_code == 200, reply.text
        async with yclient(url, f"menu/{nfd}") as reader:
            await reader.wait_for(lambda: str(reader.doc.get("t", type=Text)) == "soupe")
        reply = await http.get(f"/api/documents/menu/{nfd}/versions/now")
        assert reply.status_code == 200 and reply.json()["document"] == "menu/caf\u00e9"
