"""The connection: the one seam between a transport and a room. Frames in, the room's
decisions out; what must wait is returned as a `Later`, errors close the peer."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from pycrdt import Doc, Text

from collab_engine import protocol
from collab_engine.clock import ManualClock
from collab_engine.connection import Connection
from collab_engine.engine import Engine, EngineConfig
from collab_engine.peer import Peer
from collab_engine.room import Room
from collab_engine.types import DocumentName
from storage import SQLStore, sqlite_url
from tests.timing import advance

pytestmark = pytest.mark.anyio


def update(text: str) -> bytes:
    doc: Doc = Doc()
    doc.get("t", type=Text).insert(0, text)
    return doc.get_update()


def test_frames_reach_the_room_and_bad_ones_close_only_that_peer() -> None:
    room = Room(DocumentName("r"))
    writer, reader = Peer(), Peer()
    connection, other = Connection(room, writer, 1000), Connection(room, reader, 1000)
    connection.join()
    other.join()
    reader.drain()
    assert connection.receive(protocol.encode_sync_update(update("hi"))) is None
    assert str(room.doc.get("t", type=Text)) == "hi"
    assert [type(protocol.decode(f)) for f in reader.drain()] == [protocol.SyncUpdate]
    assert connection.receive(b"\x00\x07") is None  # no such sync step
    assert writer.closed and writer.error is not None and writer.error.close_code == 4400
    # Dropped once closed: its rights may be what closed it.
    assert connection.receive(protocol.encode_sync_update(update("later"))) is None
    assert "later" not in str(room.doc.get("t", type=Text))
    assert not reader.closed
    big = Peer()
    Connection(room, big, 10).receive(protocol.encode_sync_update(update("x" * 100)))
    assert big.error is not None and big.error.close_code == 1009


def test_a_version_request_without_a_store_closes_with_4400() -> None:
    room = Room(DocumentName("r"))
    peer = Peer()
    Connection(room, peer, 1000).receive(
        protocol.encode_version_request(json.dumps({"id": 1, "op": "list"}))
    )
    assert peer.error is not None and peer.error.close_code == 4400


async def test_what_must_wait_is_returned_and_done_when_awaited(tmp_path: Path) -> None:
    """An update while the journal is full, and a version request, come back as a
    `Later`: nothing happens until the transport awaits it (reading nothing more)."""
    store = await SQLStore.connect(sqlite_url(str(tmp_path / "c.db")))
    clock = ManualClock()
    config = EngineConfig(journal_max_pending=2, journal_linger=10.0, sweep_interval=1.0)
    try:
        async with Engine(config, store, clock=clock) as engine, engine.room("doc") as room:
            peer = Peer()
            connection = Connection(room, peer, 1 << 20)
            connection.join()
            for word in ("a", "b"):
                assert connection.receive(protocol.encode_sync_update(update(word))) is None
            assert engine.journal is not None and engine.journal.full()
            waiting = connection.receive(protocol.encode_sync_update(update("c")))
            assert waiting is not None
            assert "c" not in str(room.doc.get("t", type=Text))  # not yet applied
            async with anyio.create_task_group() as tg:
                tg.start_soon(connection.catch_up, waiting)
                await advance(clock, 10.0, step=1.0)  # the linger ends: room again
            assert "c" in str(room.doc.get("t", type=Text))
            version = connection.receive(
                protocol.encode_version_request(json.dumps({"id": 7, "op": "create"}))
            )
            assert version is not None
            peer.drain()
            async with anyio.create_task_group() as tg:
                tg.start_soon(connection.catch_up, version)
                await advance(clock, 10.0, step=1.0)
            [reply] = [
                m
                for m in map(protocol.decode, peer.drain())
                if isinstance(m, protocol.VersionReply)
            ]
            answer = json.loads(reply.body)
            assert answer["id"] == 7 and answer["ok"] and answer["version"]["seq"] == 3
    finally:
        await store.aclose()
