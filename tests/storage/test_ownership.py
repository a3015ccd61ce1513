"""Ownership in PostgreSQL: one owner per document, epochs that only grow, and the
fence: an append of a node that lost its document is refused, so it can never be
acknowledged. Real PostgreSQL at 127.0.0.1:5432, a fresh schema per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from pycrdt import Doc, Text
from sqlalchemy import text

from collab_engine.journal import Journal
from collab_engine.ownership import Deposed, Lease
from collab_engine.peer import Peer
from collab_engine.protocol import Persisted, RequestPersisted, SyncUpdate, decode
from collab_engine.room import Room
from collab_engine.store import Entry
from collab_engine.types import DocumentName, Update
from storage import SQLStore
from storage.ownership import SQLOwnership
from tests.proxy import Proxy
from tests.services import POSTGRES, need, postgres_schema
from tests.timing import eventually

pytestmark = pytest.mark.anyio

TTL = 30.0
"""Long: in these tests a lease lapses only when a test says so (`lapse`)."""

Nodes = Callable[[str], SQLOwnership]


@pytest.fixture
async def store() -> AsyncIterator[SQLStore]:
    async with postgres_schema("ownership") as options:
        store = await SQLStore.connect(POSTGRES, **options)  # type: ignore[arg-type]
        try:
            yield store
        finally:
            await store.aclose()


@pytest.fixture
def node(store: SQLStore) -> Nodes:
    """A node of the cluster by its id (the same database, the same schema)."""
    return lambda name: SQLOwnership(store.engine, name, TTL)


async def lapse(store: SQLStore, node: str) -> None:
    """Let `node`'s lease lapse now, as if it had not renewed it for a ttl: what a
    paused or partitioned node looks like to the others."""
    async with store.engine.begin() as connection:
        await connection.execute(
            text("UPDATE nodes SET expires_at = 0 WHERE id = :node"), {"node": node}
        )


async def logged(store: SQLStore, document: str) -> list[str | None]:
    """The authors of `document`'s log, in order."""
    return [author for _, _, author in await store.log(document, 0)]


async def test_a_document_has_one_owner_however_many_claim_it_at_once(node: Nodes) -> None:
    a, b, c = node("a"), node("b"), node("c")
    for each in (a, b, c):
        await each.register()
    names = [f"doc-{i}" for i in range(30)]
    got: dict[tuple[str, str], Lease] = {}

    async def claim(owner: SQLOwnership, name: str) -> None:
        got[owner.node, name] = await owner.claim(name)

    async with anyio.create_task_group() as group:
        for name in names:
            for each in (a, b, c):
                group.start_soon(claim, each, name)
    for name in names:
        leases = {got[each.node, name] for each in (a, b, c)}
        assert len(leases) == 1, f"{name}: the nodes disagree on its owner: {leases}"
        (lease,) = leases
        assert lease.epoch == 1 and lease.node in ("a", "b", "c")
        assert await a.owner(name) == lease
    owned = {lease.document for lease in await a.leases()}
    assert owned == set(names)


async def test_claiming_what_one_holds_keeps_the_epoch(node: Nodes) -> None:
    a = node("a")
    await a.register()
    first = await a.claim("notes")
    assert await a.claim("notes") == first == Lease("notes", "a", 1)
    assert await a.held([first]) == [first]


async def test_a_paused_owner_that_wakes_after_its_document_moved_stores_nothing(
    store: SQLStore, node: Nodes
) -> None:
    """a owns the document and stores through its lease; a is paused past its ttl
    (its lease lapses) and b claims the document, at the next epoch. a wakes and
    appends with the lease it had: refused (`Deposed`), nothing of it stored, so
    nothing of it can be acknowledged; b's appends follow a's last stored one."""
    a, b = node("a"), node("b")
    await a.register()
    await b.register()
    old = await a.claim("notes")
    assert await b.claim("notes") == old, "a live owner keeps its document"
    assert await store.append([Entry("notes", b"\x00\x00", "a", old.epoch)]) == [1]

    await lapse(store, "a")
    new = await b.claim("notes")
    assert new == Lease("notes", "b", old.epoch + 1)

    with pytest.raises(Deposed, match="notes"):
        await store.append(
            [Entry("notes", b"\x00\x00", "a", old.epoch), Entry("other", b"\x00\x00", "a")]
        )
    assert await logged(store, "notes") == ["a"]
    assert await logged(store, "other") == [], "a refused call stores nothing at all"
    assert await store.append([Entry("notes", b"\x00\x00", "b", new.epoch)]) == [2]

    # Awake, a finds its lease lapsed: it claims nothing until it renewed, and then
    # finds the document b's.
    with pytest.raises(Deposed, match="lapsed"):
        await a.claim("elsewhere")
    assert await a.renew() is False
    assert await a.held([old]) == []
    assert await a.claim("notes") == new
    assert await a.renew() is True


async def test_a_released_document_moves_at_once_and_its_old_epoch_writes_nothing(
    store: SQLStore, node: Nodes
) -> None:
    a, b = node("a"), node("b")
    await a.register()
    await b.register()
    lease = await a.claim("notes")
    assert await a.release(lease) is True
    assert await a.release(lease) is False, "a lease is released once"
    with pytest.raises(Deposed):
        await store.append([Entry("notes", b"\x00\x00", "a", lease.epoch)])
    assert await a.owner("notes") is None
    moved = await b.claim("notes")
    assert moved.node == "b" and moved.epoch > lease.epoch


async def test_a_node_that_leaves_gives_up_every_document(store: SQLStore, node: Nodes) -> None:
    a, b = node("a"), node("b")
    await a.register()
    await b.register()
    leases = [await a.claim(f"doc-{i}") for i in range(5)]
    await a.deregister()
    assert [n.id for n in await b.nodes()] == ["b"]
    for lease in leases:
        assert (await b.claim(lease.document)).node == "b"
    assert await b.leases("a") == []


async def test_an_owner_appending_while_it_is_deposed_stops_at_the_claim(
    store: SQLStore, node: Nodes
) -> None:
    """a appends one update after another while b deposes it: every append of a that
    returned is stored, each before b's claim; the first after it is refused, and
    b's first update comes right after a's last."""
    a, b = node("a"), node("b")
    await a.register()
    await b.register()
    lease = await a.claim("notes")
    stored: list[int] = []
    twenty, refused = anyio.Event(), anyio.Event()

    async def write() -> None:
        while True:
            try:
                stored.extend(await store.append([Entry("notes", b"\x00\x00", "a", lease.epoch)]))
            except Deposed:
                refused.set()
                return
            if len(stored) == 20:
                twenty.set()

    async with anyio.create_task_group() as group:
        group.start_soon(write)
        await twenty.wait()
        await lapse(store, "a")
        moved = await b.claim("notes")
        await refused.wait()
    assert moved.epoch == lease.epoch + 1
    assert stored == list(range(1, len(stored) + 1))
    assert await logged(store, "notes") == ["a"] * len(stored)
    assert await store.append([Entry("notes", b"\x00\x00", "b", moved.epoch)]) == [len(stored) + 1]


def test_ownership_needs_postgresql(tmp_path: object) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(ValueError, match="PostgreSQL"):
        SQLOwnership(engine, "a", TTL)


class OwnershipModel(RuleBasedStateMachine):
    """Three nodes claim, release, lapse, renew and append to one document in any
    order; a model of the rules says what each call must do, and the database must
    agree: one owner, epochs that only grow, an append stored exactly when it
    carries the current epoch."""

    portal: BlockingPortal
    store: SQLStore

    def __init__(self) -> None:
        super().__init__()
        run = uuid.uuid4().hex[:8]
        self.document = f"model-{run}"
        self.nodes = {name: SQLOwnership(self.store.engine, f"{name}-{run}", TTL) for name in "abc"}
        for node in self.nodes.values():
            self.portal.call(node.register)
        self.alive = dict.fromkeys(self.nodes, True)
        self.owner: str | None = None
        self.epoch = 0
        self.held: dict[str, Lease | None] = dict.fromkeys(self.nodes)
        self.stored = 0

    names = st.sampled_from("abc")

    @rule(name=names)
    def lapse(self, name: str) -> None:
        self.portal.call(lapse, self.store, self.nodes[name].node)
        self.alive[name] = False

    @rule(name=names)
    def renew(self, name: str) -> None:
        assert self.portal.call(self.nodes[name].renew) is self.alive[name]
        self.alive[name] = True

    @rule(name=names)
    def claim(self, name: str) -> None:
        node = self.nodes[name]
        if not self.alive[name]:
            with pytest.raises(Deposed):
                self.portal.call(node.claim, self.document)
            return
        lease = self.portal.call(node.claim, self.document)
        if self.owner != name and (self.owner is None or not self.alive[self.owner]):
            self.owner, self.epoch = name, self.epoch + 1
        assert self.owner is not None
        assert lease == Lease(self.document, self.nodes[self.owner].node, self.epoch)
        if lease.node == node.node:
            self.held[name] = lease

    @rule(name=names)
    def release(self, name: str) -> None:
        lease = self.held[name]
        if lease is None:
            return
        current = self.owner == name and lease.epoch == self.epoch
        assert self.portal.call(self.nodes[name].release, lease) is current
        if current:
            self.owner, self.epoch = None, self.epoch + 1

    @rule(name=names)
    def append(self, name: str) -> None:
        lease = self.held[name]
        if lease is None:
            return
        entry = Entry(self.document, b"\x00\x00", name, lease.epoch)
        if lease.epoch == self.epoch and self.owner == name:
            self.stored += 1
            assert self.portal.call(self.store.append, [entry]) == [self.stored]
        else:
            with pytest.raises(Deposed):
                self.portal.call(self.store.append, [entry])

    @invariant()
    def the_table_agrees(self) -> None:
        lease = self.portal.call(self.nodes["a"].owner, self.document)
        if self.owner is None or not self.alive[self.owner]:
            assert lease is None
        else:
            assert lease == Lease(self.document, self.nodes[self.owner].node, self.epoch)


def test_ownership_follows_its_rules_in_any_order_of_events() -> None:
    need("PostgreSQL", 5432)
    with start_blocking_portal() as portal:
        schema = portal.wrap_async_context_manager(postgres_schema("model"))
        with schema as options:
            store = portal.call(partial(SQLStore.connect, POSTGRES, **options))  # type: ignore[arg-type]
            try:
                OwnershipModel.portal = portal
                OwnershipModel.store = store
                run_state_machine_as_test(
                    OwnershipModel,
                    settings=settings(
                        max_examples=20, stateful_step_count=25, deadline=None, database=None
                    ),
                )
            finally:
                portal.call(store.aclose)


async def test_a_deposed_room_acknowledges_nothing_and_closes_its_peers(
    store: SQLStore, node: Nodes
) -> None:
    """The whole way, in one process: a's room takes a client's updates through its
    journal, fenced by its lease. Once b has claimed the document (a paused), the
    next update is refused by the store: the client gets no acknowledgement for it,
    and is closed with 1012 to reconnect where the document now lives."""
    a, b = node("a"), node("b")
    await a.register()
    await b.register()
    lease = await a.claim("notes")
    journal = Journal(store)
    async with anyio.create_task_group() as group:
        await group.start(journal.run)
        room = Room(DocumentName("notes"), journal=journal)
        room.epoch = lease.epoch
        peer = Peer()
        room.join(peer)
        room.receive(peer, RequestPersisted())
        writer = Doc()
        body = writer.get("body", type=Text)

        def edit(more: str) -> Update:
            before = writer.get_state()
            body.insert(len(body), more)
            return Update(writer.get_update(before))

        room.receive(peer, SyncUpdate(edit("stored ")))
        await room.flush()
        assert peer.acked == 1

        await lapse(store, "a")
        await b.claim("notes")
        room.receive(peer, SyncUpdate(edit("refused")))
        with pytest.raises(Deposed):
            await room.flush()
        group.cancel_scope.cancel()
    assert peer.closed and isinstance(peer.error, Deposed)
    assert peer.error.close_code == 1012
    assert peer.acked == 1, "nothing the deposed node took is acknowledged"
    acks = [decode(frame) for frame in peer.drain()]
    assert Persisted(2) not in acks
    assert len(await store.log("notes", 0)) == 1


async def test_a_database_out_of_reach_holds_acknowledgements_and_fails_no_room(
    tmp_path: object,
) -> None:
    """The connection to PostgreSQL is cut under a room with a writer and a reader:
    the reader keeps getting the writer's edits, nothing is acknowledged, no room
    fails; once the database can be reached again, everything is stored and
    acknowledged."""
    need("PostgreSQL", 5432)
    async with Proxy(5432) as proxy, postgres_schema("reach") as options:
        url = POSTGRES.replace(":5432/", f":{proxy.port}/")
        store = await SQLStore.connect(url, pool_pre_ping=True, **options)  # type: ignore[arg-type]
        try:
            journal = Journal(store)
            async with anyio.create_task_group() as group:
                await group.start(journal.run)
                room = Room(DocumentName("reach"), journal=journal)
                writer, reader = Peer(), Peer()
                room.join(writer)
                room.join(reader)
                room.receive(writer, RequestPersisted())
                doc = Doc()
                body = doc.get("body", type=Text)

                def edit(more: str) -> SyncUpdate:
                    before = doc.get_state()
                    body.insert(len(body), more)
                    return SyncUpdate(Update(doc.get_update(before)))

                room.receive(writer, edit("stored. "))
                await room.flush()
                assert writer.acked == 1
                reader.drain()

                proxy.cut()
                room.receive(writer, edit("held. "))
                await eventually(lambda: journal.unavailable is not None, what="the cut seen")
                assert reader.drain(), "the reader still gets the edit"
                assert writer.acked == 1 and room.failed is None and not writer.closed

                proxy.restore()
                await room.flush()
                assert writer.acked == 2 and journal.unavailable is None
                group.cancel_scope.cancel()
            authors = [author for _, _, author in await store.log("reach", 0)]
            # (Twice "held", were the commit cut after it reached the database: harmless.)
            assert len(authors) >= 2 and set(authors) == {writer.author}
        finally:
            await store.aclose()
