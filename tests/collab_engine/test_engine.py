"""The engine owns rooms: one per name, loaded on first use, unloaded after a grace."""

from __future__ import annotations

import anyio
import pytest
from pycrdt import Text

from collab_engine import protocol
from collab_engine.engine import Engine, EngineConfig
from collab_engine.errors import GoingAway
from collab_engine.peer import Peer
from collab_engine.protocol import AwarenessEntry, AwarenessUpdate
from collab_engine.types import ClientId

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
    async with Engine(FAST) as engine:
        async with engine.room("doc") as room:
            room.doc.get("t", type=Text).insert(0, "x")
            await anyio.sleep(0.3)
            assert "doc" in engine.rooms
        assert "doc" in engine.rooms
        with anyio.fail_after(2):
            while "doc" in engine.rooms:
                await anyio.sleep(0.02)
        # Reopening gives a fresh room (this issue has no storage yet: content is gone).
        async with engine.room("doc") as again:
            assert again is not room


async def test_reuse_within_the_grace_keeps_the_room() -> None:
    """Coming back before the grace ends finds the same room, content included."""
    async with Engine(EngineConfig(unload_grace=5.0, sweep_interval=0.02)) as engine:
        async with engine.room("doc") as room:
            room.doc.get("t", type=Text).insert(0, "kept")
        await anyio.sleep(0.1)
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
    async with Engine(config) as engine:
        async with engine.room("presence") as room:
            a, b = Peer(), Peer()
            room.join(a)
            room.join(b)
            room.receive(a, AwarenessUpdate((AwarenessEntry(ClientId(9), 1, "{}"),)))
            with anyio.fail_after(2):
                while room.awareness.entries():
                    await anyio.sleep(0.02)
            removals = [protocol.decode(f) for f in b.drain()][-1]
            assert removals == AwarenessUpdate((AwarenessEntry(ClientId(9), 1, None),))
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
