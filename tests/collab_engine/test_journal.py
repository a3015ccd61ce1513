"""The journal: group commit, bounded with backpressure, drained at exit, and failures
that end only the documents they touch. Real rooms, real SQLite files."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pycrdt import Doc, Text
from sqlalchemy import event

from collab_engine.clock import ManualClock
from collab_engine.engine import Engine, EngineConfig, rebuild
from collab_engine.errors import StorageError
from collab_engine.journal import LINGER_GAP
from collab_engine.peer import Peer
from collab_engine.protocol import Persisted, RequestPersisted, SyncUpdate, decode
from collab_engine.room import Room
from storage import SQLStore, sqlite_url
from tests.timing import advance, eventually

pytestmark = pytest.mark.anyio

FAST = EngineConfig(unload_grace=0.1, sweep_interval=0.02)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLStore]:
    store = await SQLStore.connect(sqlite_url(str(tmp_path / "journal.db")))
    yield store
    await store.aclose()


def updates(count: int, prefix: str = "") -> list[bytes]:
    """`count` successive Yjs updates of one replica, each appending a token."""
    doc: Doc = Doc()
    text = doc.get("t", type=Text)
    out: list[bytes] = []
    doc.observe(lambda event: out.append(event.update))
    for i in range(count):
        text += f"{prefix}{i};"
    return out


def text_of(doc: Doc) -> str:
    return str(doc.get("t", type=Text))


def acks(peer: Peer) -> list[int]:
    return [m.count for m in map(decode, peer.drain()) if isinstance(m, Persisted)]


async def test_one_transaction_carries_the_updates_of_many_documents(store: SQLStore) -> None:
    """Updates submitted while the writer is busy are written together: far fewer
    commits than updates, every update stored once, in order, per document."""
    async with Engine(FAST, store) as engine:
        assert engine.journal is not None
        async with engine.room("a") as a, engine.room("b") as b:
            for update_a, update_b in zip(updates(300, "a"), updates(300, "b"), strict=True):
                a.apply(update_a)
                b.apply(update_b)
            await a.flush()
            await b.flush()
        commits = engine.journal.commits
    assert commits < 100, f"{commits} commits for 600 updates: no group commit"
    for name, prefix in (("a", "a"), ("b", "b")):
        stored = await store.load(name)
        assert [seq for seq, _ in stored.updates] == list(range(1, 301))
        assert text_of(rebuild(name, stored)) == "".join(f"{prefix}{i};" for i in range(300))


async def test_without_lingering_each_update_is_written_without_waiting_for_more(
    store: SQLStore,
) -> None:
    """With no linger the writer commits what it has at once: an update that is
    alone in the queue gets a commit of its own, though nobody awaits it. Each is
    awaited by watching the journal, not with `wait_written` (which would end a
    linger early); with a linger, nothing is written before it ends."""
    config = EngineConfig(unload_grace=0.1, sweep_interval=0.02, journal_linger=0.0)
    async with Engine(config, store) as engine, engine.room("doc") as room:
        journal = engine.journal
        assert journal is not None
        for update in updates(20):
            room.apply(update)
            await eventually(lambda: journal.written >= room.last_ticket, what="written")
        commits = journal.commits
    assert [seq for seq, _ in (await store.load("doc")).updates] == list(range(1, 21))
    assert commits == 20

    clock = ManualClock()
    lingering = EngineConfig(unload_grace=100, sweep_interval=1.0, journal_linger=60.0)
    async with Engine(lingering, store, clock=clock) as engine, engine.room("other") as room:
        journal = engine.journal
        assert journal is not None
        room.apply(updates(1)[0])
        await advance(clock, 59.0, step=1.0)
        assert journal.written < room.last_ticket  # held by the linger, not lost:
        await advance(clock, 2.0, step=1.0)
        await eventually(lambda: journal.written >= room.last_ticket, what="written")
    assert len((await store.load("other")).updates) == 1


async def test_lingering_gathers_updates_that_trickle_in(store: SQLStore) -> None:
    """With a linger, updates arriving 1 ms apart (closer than the linger) share one
    commit."""
    clock = ManualClock()
    config = EngineConfig(unload_grace=100, sweep_interval=1.0, journal_linger=0.2)
    async with Engine(config, store, clock=clock) as engine, engine.room("doc") as room:
        journal = engine.journal
        assert journal is not None
        for update in updates(20):
            room.apply(update)
            await advance(clock, 0.001, step=0.001)
        assert journal.commits == 0
        await advance(clock, 0.2)
        await eventually(lambda: journal.written >= room.last_ticket, what="written")
        assert journal.commits == 1
    assert [seq for seq, _ in (await store.load("doc")).updates] == list(range(1, 21))


async def flush_stepping(room: Room, clock: ManualClock) -> float:
    """Await `room.flush()` while moving `clock` on a millisecond at a time; return
    how much of the clock's time it took."""
    started = clock.monotonic()
    async with anyio.create_task_group() as tg:
        done = anyio.Event()

        async def flush() -> None:
            await room.flush()
            done.set()

        tg.start_soon(flush)
        while not done.is_set():
            await advance(clock, 0.001, step=0.001)
            await anyio.sleep(0.001)  # the store's thread, outside the clock
    return clock.monotonic() - started


async def test_a_pause_in_the_updates_ends_the_linger_of_an_awaited_update(
    store: SQLStore,
) -> None:
    """A lone update someone waits for is not held for the whole linger: once no
    other update comes for `LINGER_GAP`, it is written (a linger of 10 s, over in a
    few milliseconds), whether the wait began before the linger or during it."""
    clock = ManualClock()
    config = EngineConfig(unload_grace=100, sweep_interval=1.0, journal_linger=10.0)
    async with Engine(config, store, clock=clock) as engine, engine.room("doc") as room:
        room.apply(updates(1)[0])
        await advance(clock, 0.1)  # the writer is in its linger, nobody waiting yet
        assert engine.journal is not None and engine.journal.commits == 0
        took = await flush_stepping(room, clock)
        assert LINGER_GAP <= took < 10 * LINGER_GAP
    assert [seq for seq, _ in (await store.load("doc")).updates] == [1]


async def test_a_peer_that_asked_for_acknowledgements_ends_the_linger_at_a_pause(
    store: SQLStore,
) -> None:
    """A client waiting for `persisted` (one update in flight) gets it at the first
    pause, not after the whole linger of 10 s."""
    clock = ManualClock()
    config = EngineConfig(unload_grace=100, sweep_interval=1.0, journal_linger=10.0)
    async with Engine(config, store, clock=clock) as engine, engine.room("doc") as room:
        peer = Peer()
        room.join(peer)
        room.receive(peer, RequestPersisted())
        for count, update in enumerate(updates(3), start=1):
            room.receive(peer, SyncUpdate(update))
            started = clock.monotonic()
            while peer.acked < count:
                await advance(clock, 0.001, step=0.001)
                await anyio.sleep(0.001)  # the store's thread, outside the clock
            assert clock.monotonic() - started < 10 * LINGER_GAP
        assert engine.journal is not None and engine.journal.commits == 3


async def test_with_nobody_waiting_the_linger_runs_to_its_deadline(store: SQLStore) -> None:
    """Updates nobody awaits (y-websocket clients never ask) are written at the end
    of the linger, pause or not: the writer sleeps through it in one wait instead of
    waking every `LINGER_GAP` to look for a pause."""
    clock = ManualClock()
    config = EngineConfig(unload_grace=100, sweep_interval=1.0, journal_linger=2.0)
    async with Engine(config, store, clock=clock) as engine, engine.room("doc") as room:
        journal = engine.journal
        assert journal is not None
        quiet = Peer()  # did not ask for acknowledgements
        room.join(quiet)
        room.receive(quiet, SyncUpdate(updates(1)[0]))
        await advance(clock, 1.9, step=0.1)  # hundreds of gaps: still lingering
        assert journal.commits == 0
        await advance(clock, 0.2, step=0.1)
        await eventually(lambda: journal.commits == 1, what="one commit")
        assert quiet.acked == 1
    assert [seq for seq, _ in (await store.load("doc")).updates] == [1]


async def test_a_full_transaction_ends_the_linger(store: SQLStore) -> None:
    """Once `journal_max_batch` updates wait, lingering cannot add to the transaction:
    it is written at once (a linger of 10 s, nobody waiting, the clock stopped)."""
    clock = ManualClock()
    config = EngineConfig(
        unload_grace=100, sweep_interval=1.0, journal_linger=10.0, journal_max_batch=5
    )
    async with Engine(config, store, clock=clock) as engine, engine.room("doc") as room:
        journal = engine.journal
        assert journal is not None
        for update in updates(5):
            room.apply(update)
        await eventually(lambda: journal.commits == 1, what="one commit")
    assert [seq for seq, _ in (await store.load("doc")).updates] == [1, 2, 3, 4, 5]


async def test_a_peer_is_acknowledged_only_once_its_updates_are_stored(store: SQLStore) -> None:
    """Persisted(n) arrives after the first n update messages are in the store, and a
    message that changed nothing is acknowledged too (once what the room held is stored)."""
    stream = updates(20)
    async with Engine(FAST, store) as engine, engine.room("doc") as room:
        peer = Peer()
        room.join(peer)
        peer.drain()
        room.receive(peer, RequestPersisted())
        assert acks(peer) == [0]
        for update in stream:
            room.receive(peer, SyncUpdate(update))
        room.receive(peer, SyncUpdate(stream[0]))  # a duplicate: changes nothing
        assert acks(peer) == [], "acknowledged before anything was written"
        await eventually(lambda: peer.acked >= 21, what="21 acknowledged")
        received = acks(peer)
        assert received == sorted(received) and received[-1] == 21
        stored = await store.load("doc")
        assert len(stored.updates) == 20  # the duplicate added no row


async def test_peers_that_did_not_ask_get_no_acknowledgement(store: SQLStore) -> None:
    """y-websocket logs an error for unknown message types: only askers are told."""
    async with Engine(FAST, store) as engine, engine.room("doc") as room:
        quiet = Peer()
        room.join(quiet)
        for update in updates(5):
            room.receive(quiet, SyncUpdate(update))
        await room.flush()
        assert quiet.acked == 5
        assert not [m for m in map(decode, quiet.drain()) if isinstance(m, Persisted)]


async def test_senders_wait_while_the_journal_is_full(store: SQLStore, tmp_path: Path) -> None:
    """With the disk held (another process's write lock), the queue fills to its bound,
    `room_for_more` blocks; once the disk is free everything is written, nothing lost."""
    config = EngineConfig(unload_grace=0.1, sweep_interval=0.02, journal_max_pending=5)
    blocker = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
    async with Engine(config, store) as engine, engine.room("doc") as room:
        journal = engine.journal
        assert journal is not None
        stream = updates(40)
        room.apply(stream[0])
        await room.flush()
        blocker.execute("BEGIN IMMEDIATE")  # the writer's next append waits on this lock
        taken = 1
        try:

            async def sender() -> None:
                nonlocal taken
                for update in stream[1:]:
                    await journal.room_for_more()
                    room.apply(update)
                    taken += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                await eventually(journal.full, what="the journal full")
                await anyio.wait_all_tasks_blocked()
                # One batch is in the writer's hands, the queue is at its bound, and
                # the sender is parked in room_for_more.
                assert journal.pending() == 5
                assert taken < 40
                blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        await room.flush()
    assert taken == 40
    assert text_of(rebuild("doc", await store.load("doc"))) == "".join(f"{i};" for i in range(40))


async def test_leaving_the_engine_writes_everything_accepted(store: SQLStore) -> None:
    """Nothing accepted is lost when the engine stops: the journal is drained first."""
    async with Engine(FAST, store) as engine, engine.room("doc") as room:
        for update in updates(500):
            room.apply(update)
        assert engine.journal is not None and engine.journal.pending() > 0
    assert len((await store.load("doc")).updates) == 500


async def test_a_document_that_cannot_be_written_ends_alone(
    store: SQLStore, tmp_path: Path
) -> None:
    """A write refused by the database (here a trigger rejecting one document) fails
    that document only: its peers are closed with 1011 and a reason naming it and the
    sequence, it takes no more changes, and the other document is written."""
    with sqlite3.connect(tmp_path / "journal.db") as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON updates WHEN NEW.document = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    async with Engine(FAST, store) as engine:
        async with engine.room("poison") as poison, engine.room("fine") as fine:
            victim, bystander = Peer(), Peer()
            poison.join(victim)
            fine.join(bystander)
            for update_p, update_f in zip(updates(10, "p"), updates(10, "f"), strict=True):
                poison.receive(victim, SyncUpdate(update_p))
                fine.receive(bystander, SyncUpdate(update_f))
            await fine.flush()
            with pytest.raises(StorageError, match=r"'poison' from seq 1 .*disk says no"):
                await poison.flush()
            assert victim.closed and victim.error is not None
            assert victim.error.close_code == 1011
            assert "poison" in victim.error.reason
            assert not bystander.closed
            with pytest.raises(StorageError):
                poison.apply(updates(1, "late")[0])
        # A failed room is discarded: the next opening loads what is stored (nothing).
        async with engine.room("poison") as again:
            assert again is not poison and text_of(again.doc) == ""
    assert len((await store.load("fine")).updates) == 10
    assert (await store.load("poison")).updates == []


async def test_a_read_only_database_fails_writes_with_a_clear_reason(tmp_path: Path) -> None:
    """A database opened read-only refuses the append: the room fails with 1011 and
    the database's own words; nothing stored is touched."""
    path = tmp_path / "ro.db"
    writable = await SQLStore.connect(sqlite_url(str(path)))
    async with Engine(FAST, writable) as engine, engine.room("doc") as room:
        room.apply(updates(1, "kept")[0])
        await room.flush()
    await writable.aclose()
    read_only = await SQLStore.connect(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")
    try:
        async with Engine(FAST, read_only) as engine, engine.room("doc") as room:
            assert text_of(room.doc) == "kept0;"
            peer = Peer()
            room.join(peer)
            doc = rebuild("doc", await read_only.load("doc"))
            doc.observe(lambda event: room.receive(peer, SyncUpdate(event.update)))
            doc.get("t", type=Text).insert(0, "more ")
            with pytest.raises(StorageError, match=r"'doc' from seq 2 .*readonly"):
                await room.flush()
            assert peer.error is not None and peer.error.close_code == 1011
    finally:
        await read_only.aclose()
    reopened = await SQLStore.connect(sqlite_url(str(path)))
    try:
        assert [seq for seq, _ in (await reopened.load("doc")).updates] == [1]
    finally:
        await reopened.aclose()


async def test_room_without_journal_acknowledges_nothing() -> None:
    """A room kept in memory only never claims durability."""
    room = Room("mem")  # type: ignore[arg-type]
    peer = Peer()
    room.join(peer)
    room.receive(peer, RequestPersisted())
    room.receive(peer, SyncUpdate(updates(1)[0]))
    assert acks(peer) == [0]
    assert peer.acked == 0


async def test_a_locked_database_fails_the_write_with_a_clear_reason(tmp_path: Path) -> None:
    """A lock held past the busy timeout fails the write: 1011, with the document, the
    sequence and SQLite's words; once the lock is gone, reopening serves what is stored."""
    path = tmp_path / "locked.db"
    store = await SQLStore.connect(sqlite_url(str(path)), sqlite_busy_timeout=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        async with Engine(FAST, store) as engine:
            async with engine.room("doc") as room:
                first, second = updates(2)
                room.apply(first)
                await room.flush()
                blocker.execute("BEGIN IMMEDIATE")
                room.apply(second)
                with pytest.raises(StorageError, match=r"'doc' from seq 2 .*database is locked"):
                    await room.flush()
            blocker.execute("ROLLBACK")
            async with engine.room("doc") as again:
                assert text_of(again.doc) == "0;"
    finally:
        blocker.close()
        await store.aclose()


async def test_a_full_database_fails_the_write_and_keeps_what_is_stored(tmp_path: Path) -> None:
    """SQLITE_FULL (here a page limit on the connection, the way SQLite reports a full
    disk): the room fails with 1011 and SQLite's words; what was stored stays whole."""
    path = tmp_path / "full.db"
    store = await SQLStore.connect(sqlite_url(str(path)))

    def cap(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA max_page_count=20")

    event.listen(store.engine.sync_engine, "connect", cap)
    await store.engine.dispose()  # new connections get the cap
    try:
        async with Engine(FAST, store) as engine, engine.room("doc") as room:
            room.apply(updates(1, "small")[0])
            await room.flush()
            big = Doc()
            big.get("t", type=Text).insert(0, "x" * 200_000)
            room.apply(big.get_update())
            with pytest.raises(StorageError, match=r"'doc' from seq 2 .*full"):
                await room.flush()
    finally:
        await store.aclose()
    reopened = await SQLStore.connect(sqlite_url(str(path)))
    try:
        stored = await reopened.load("doc")
        assert [seq for seq, _ in stored.updates] == [1]
        assert text_of(rebuild("doc", stored)) == "small0;"
    finally:
        await reopened.aclose()
