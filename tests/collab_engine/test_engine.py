"""The engine owns rooms: one per name, loaded on first use (from the store, when it
has one), unloaded after a grace once stored; and it compacts on its own schedule."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from pycrdt import Doc, Text
from sqlalchemy import select

from collab_engine import protocol
from collab_engine.clock import ManualClock
from collab_engine.engine import Engine, EngineConfig, rebuild
from collab_engine.errors import GoingAway, StorageError
from collab_engine.peer import Peer
from collab_engine.presence import PresencePolicy
from collab_engine.protocol import AwarenessEntry, AwarenessUpdate
from collab_engine.room import Room
from collab_engine.store import Entry
from collab_engine.types import ClientId
from storage import SQLStore, sqlite_url
from storage.schema import updates
from tests.timing import advance, eventually

pytestmark = pytest.mark.anyio

FAST = EngineConfig(unload_grace=0.1, sweep_interval=0.02)


async def test_concurrent_users_of_a_cold_room_share_one_room() -> None:
    """Many tasks opening the same cold name at once all get the same room."""
    seen = []
    async with Engine(FAST) as engine:

        async def use() -> None:
            async with engine.room("cold") as room:
                seen.append(room)
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(use)
    assert len(seen) == 20
    assert all(room is seen[0] for room in seen)


async def test_room_unloads_after_the_grace_and_not_while_in_use() -> None:
    """A room stays while used and for the grace after; then it is unloaded."""
    clock = ManualClock()
    async with Engine(FAST, clock=clock) as engine:
        async with engine.room("doc") as room:
            room.doc.get("t", type=Text).insert(0, "x")
            await advance(clock, 1.0)  # ten graces, while in use
            assert "doc" in engine.rooms
        assert "doc" in engine.rooms
        await advance(clock, 0.08)
        assert "doc" in engine.rooms  # within the grace
        await advance(clock, 0.04)
        assert "doc" not in engine.rooms
        # Without a store, reopening gives a fresh, empty room.
        async with engine.room("doc") as again:
            assert again is not room


async def test_reuse_within_the_grace_keeps_the_room() -> None:
    """Coming back before the grace ends finds the same room, content included."""
    clock = ManualClock()
    async with Engine(EngineConfig(unload_grace=5.0, sweep_interval=0.02), clock=clock) as engine:
        async with engine.room("doc") as room:
            room.doc.get("t", type=Text).insert(0, "kept")
        await advance(clock, 4.9)
        async with engine.room("doc") as again:
            assert again is room
            assert str(again.doc.get("t", type=Text)) == "kept"


async def test_embedded_change_reaches_connected_peers() -> None:
    """A service's in-process edit is broadcast to the room's peers as an update."""
    async with Engine(FAST) as engine:
        peer = Peer()
        async with engine.room("shared") as room:
            room.join(peer)
            peer.drain()
            async with engine.room("shared") as service_view:
                with service_view.doc.transaction():
                    service_view.doc.get("t", type=Text).insert(0, "from the service")
            [message] = [protocol.decode(frame) for frame in peer.drain()]
            assert isinstance(message, protocol.SyncUpdate)
            room.leave(peer)
        peer.close()


async def test_sweeper_expires_awareness() -> None:
    """The engine's sweeper removes awareness states that were not renewed in time."""
    config = EngineConfig(awareness_timeout=0.1, sweep_interval=0.02, unload_grace=5)
    clock = ManualClock()
    async with Engine(config, clock=clock) as engine:
        async with engine.room("presence") as room:
            a, b = Peer(), Peer()
            room.join(a)
            room.join(b)
            room.receive(a, AwarenessUpdate((AwarenessEntry(ClientId(9), 1, "{}"),)))
            await advance(clock, 0.09)
            assert room.awareness.get(ClientId(9)) is not None
            await advance(clock, 0.04)
            assert room.awareness.get(ClientId(9)) is None
            # Client 9 is removed for the others, at the clock of its last state (1, or
            # 2 once the server stamped its identity); the server has no entry (no locks).
            assert room.awareness.entries() == []
            removals = [protocol.decode(f) for f in b.drain()][-1]
            assert isinstance(removals, AwarenessUpdate)
            assert [(e.client_id, e.state) for e in removals.entries] == [(9, None)]
            a.close()
            b.close()


async def test_the_sweeper_visits_every_room_a_slice_at_a_time() -> None:
    """With the sweep spread over five presence steps, every one of twelve rooms is
    still visited each sweep interval: every room's stale state is removed."""
    config = EngineConfig(
        awareness_timeout=0.1, sweep_interval=0.25, presence_interval=0.05, unload_grace=5
    )
    clock = ManualClock()
    async with Engine(config, clock=clock) as engine, contextlib.AsyncExitStack() as stack:
        rooms = [await stack.enter_async_context(engine.room(f"r{i}")) for i in range(12)]
        peers = [Peer() for _ in rooms]
        for i, (room, peer) in enumerate(zip(rooms, peers, strict=True)):
            room.join(peer)
            room.receive(peer, AwarenessUpdate((AwarenessEntry(ClientId(100 + i), 1, "{}"),)))
        # Due after 0.1 s; every room is visited once in each 0.25 s pass.
        await advance(clock, 0.1 + 0.25 + 0.05, step=0.05)
        assert all(room.awareness.get(ClientId(100 + i)) is None for i, room in enumerate(rooms))
        for peer in peers:
            peer.close()


async def test_states_held_by_the_rate_limit_go_out_at_the_presence_rhythm() -> None:
    """A state over the rate waits for the room's next tick: within a few presence
    intervals, not at the next sweep (here a minute away)."""
    config = EngineConfig(
        sweep_interval=60.0,
        presence_interval=0.02,
        presence=PresencePolicy(rate=20.0, burst=1),
        unload_grace=5,
    )
    clock = ManualClock()
    async with Engine(config, clock=clock) as engine:
        async with engine.room("busy") as room:
            a, b = Peer(), Peer()
            room.join(a)
            room.join(b)
            b.drain()
            for n in (1, 2, 3):
                state = json.dumps({"cursor": n})
                room.receive(a, AwarenessUpdate((AwarenessEntry(ClientId(7), n, state),)))
            assert room.presence.holding

            def cursors() -> list[int]:
                seen = []
                for frame in b.drain():
                    message = protocol.decode(frame)
                    if isinstance(message, AwarenessUpdate):
                        seen += [e.state for e in message.entries if e.client_id == 7]
                return [json.loads(state or "{}").get("cursor") for state in seen]

            assert cursors() == [1]  # the burst; 2 and 3 wait
            # A token comes back after 1/rate = 0.05 s: the latest state goes out at
            # the next presence step, not at the next sweep.
            await advance(clock, 0.06, step=0.02)
            assert cursors() == [3]
            assert not room.presence.holding
            a.close()
            b.close()


async def test_shutdown_closes_peers_with_going_away() -> None:
    """Leaving the engine's block closes every connected peer with 1001."""
    peer = Peer()
    async with Engine(FAST) as engine:
        async with engine.room("doc") as room:
            room.join(peer)
            engine.close_peers()
            room.leave(peer)
    assert isinstance(peer.error, GoingAway)
    assert peer.error.close_code == 1001


async def test_room_needs_a_running_engine() -> None:
    """Using rooms outside `async with Engine()` is an error that says so."""
    engine = Engine()
    with pytest.raises(RuntimeError, match="not running"):
        async with engine.room("x"):
            pass


# -- with a store ----------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLStore]:
    store = await SQLStore.connect(sqlite_url(str(tmp_path / "engine.db")))
    yield store
    await store.aclose()


def write(room: Room, text: str) -> None:
    room.doc.get("t", type=Text).insert(len(room.doc.get("t", type=Text)), text)


async def test_an_unloaded_room_reloads_from_the_store(store: SQLStore) -> None:
    """Idle rooms leave memory once stored; reopening loads the same content."""
    clock = ManualClock()
    async with Engine(FAST, store, clock=clock) as engine:
        async with engine.room("doc") as room:
            write(room, "survives ")
            write(room, "unloading")
        await advance(clock, 0.06)  # the journal's linger (50 ms): it writes now
        await eventually(lambda: room.stored, what="the writes stored")
        assert "doc" in engine.rooms
        await advance(clock, 0.12)  # the grace (0.1 s)
        assert "doc" not in engine.rooms
        async with engine.room("doc") as again:
            assert again is not room
            assert str(again.doc.get("t", type=Text)) == "survives unloading"
            assert again.stored_seq == 2


async def test_a_room_is_not_unloaded_before_its_changes_are_stored(
    store: SQLStore, tmp_path: Path
) -> None:
    """With the disk held, an idle room stays loaded past its grace: unloading it
    would lose the changes still queued for the disk."""
    blocker = sqlite3.connect(tmp_path / "engine.db", isolation_level=None)
    try:
        clock = ManualClock()
        async with Engine(FAST, store, clock=clock) as engine:
            async with engine.room("doc") as room:
                blocker.execute("BEGIN IMMEDIATE")
                write(room, "queued")
            await advance(clock, 1.0)  # ten graces, and the journal's linger
            assert "doc" in engine.rooms and not room.stored
            blocker.execute("ROLLBACK")
            await eventually(lambda: room.stored, what="the queued write stored")
            await advance(clock, 0.12)
            assert "doc" not in engine.rooms
            async with engine.room("doc") as again:
                assert str(again.doc.get("t", type=Text)) == "queued"
    finally:
        blocker.close()


async def test_an_undecodable_row_refuses_the_document_whole(store: SQLStore) -> None:
    """A stored update that does not decode refuses the document with a StorageError
    (1011) naming it and the sequence number; nothing is overwritten; other documents
    load as usual."""
    good = Doc()
    good.get("t", type=Text).insert(0, "fine")
    await store.append(
        [
            Entry("broken", good.get_update()),
            Entry("broken", b"\x07\x07 not a yjs update"),
            Entry("other", good.get_update()),
        ]
    )
    async with Engine(FAST, store) as engine:
        for _ in range(2):  # refused every time, not half-served the second time
            with pytest.raises(
                StorageError, match=r"document 'broken': update 2 cannot be decoded"
            ):
                async with engine.room("broken"):
                    pass
        assert "broken" not in engine.rooms
        async with engine.room("other") as other:
            assert str(other.doc.get("t", type=Text)) == "fine"
    assert StorageError.close_code == 1011
    stored = await store.load("broken")
    assert [seq for seq, _ in stored.updates] == [1, 2]
    assert stored.updates[1][1] == b"\x07\x07 not a yjs update"


async def test_compaction_snapshots_on_schedule_and_keeps_the_log(store: SQLStore) -> None:
    """Past `compact_after_updates`, the compactor writes a snapshot on its own; the
    log rows stay; loading from the snapshot gives the same document."""
    config = EngineConfig(unload_grace=0.1, sweep_interval=0.02, compact_after_updates=10)
    async with Engine(config, store) as engine:
        async with engine.room("doc") as room:
            for i in range(25):
                write(room, f"{i},")
            await room.flush()
            await eventually(lambda: room.snapshot_seq >= 20, what="a snapshot at 20")
            expected = str(room.doc.get("t", type=Text))
    stored = await store.load("doc")
    assert stored.snapshot is not None and stored.snapshot_seq >= 20
    assert str(rebuild("doc", stored).get("t", type=Text)) == expected
    # Every log row is kept for version history: a full replay gives the same text.
    async with store.engine.connect() as connection:
        rows = (
            await connection.execute(select(updates.c.seq).where(updates.c.document == "doc"))
        ).all()
    assert sorted(row.seq for row in rows) == list(range(1, 26))


async def test_compact_by_bytes_and_nothing_to_do(store: SQLStore) -> None:
    """The byte threshold triggers compaction too; compacting a document with nothing
    after its snapshot is a no-op that says so (None)."""
    config = EngineConfig(
        unload_grace=5, sweep_interval=0.02, compact_after_updates=10**9, compact_after_bytes=2000
    )
    async with Engine(config, store) as engine, engine.room("doc") as room:
        write(room, "x" * 3000)
        await room.flush()
        await eventually(lambda: room.snapshot_seq >= 1, what="a snapshot")
        assert room.since_snapshot_bytes == 0
        assert await engine.compact("doc") is None
