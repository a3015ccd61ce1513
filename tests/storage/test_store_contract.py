"""One contract, every Store: memory, SQLite in a temp dir, PostgreSQL at 127.0.0.1:5432."""

from __future__ import annotations

import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from pycrdt import Doc, Text
from sqlalchemy.pool import NullPool

from collab_engine.permissions import Grant, Role
from collab_engine.store import Entry, Store
from storage import MemoryStore, SQLStore, sqlite_url

pytestmark = pytest.mark.anyio

POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

Opener = Callable[[], Awaitable[Store]]


def postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["memory", "sqlite", "sqlite-unpooled", "postgresql"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """A function that opens the backend under test; each call reopens the same data.

    "sqlite" appends in one call on aiosqlite's thread; "sqlite-unpooled" (no pool
    to hold a connection from) appends through SQLAlchemy's statements, as
    PostgreSQL does: both must keep the same contract."""
    opened: list[Store] = []
    if request.param == "memory":
        memory = MemoryStore()

        async def opener() -> Store:
            return memory

    elif request.param.startswith("sqlite"):
        options = {"poolclass": NullPool} if request.param == "sqlite-unpooled" else {}

        async def opener() -> Store:
            store = await SQLStore.connect(sqlite_url(str(tmp_path / "collab.db")), **options)
            opened.append(store)
            return store

    else:
        if not postgres_answers():
            pytest.skip("no PostgreSQL answers at 127.0.0.1:5432 (see shared/services.md)")
        schema = f"contract_{uuid.uuid4().hex[:12]}"
        admin = await SQLStore.connect(POSTGRES)
        async with admin.engine.begin() as connection:
            await connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')

        async def opener() -> Store:
            store = await SQLStore.connect(
                POSTGRES, connect_args={"server_settings": {"search_path": schema}}
            )
            opened.append(store)
            return store

    yield opener
    for store in opened:
        await store.aclose()
    if request.param == "postgresql":
        async with admin.engine.begin() as connection:
            await connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.aclose()


def rebuild(stored_snapshot: bytes | None, updates: list[tuple[int, bytes]]) -> str:
    doc: Doc = Doc()
    if stored_snapshot is not None:
        doc.apply_update(stored_snapshot)
    for _, update in updates:
        doc.apply_update(update)
    return str(doc.get("t", type=Text))


async def test_append_numbers_each_documents_log_from_one(open_store: Opener) -> None:
    """Seqs start at 1 per document and follow the order of the batch."""
    store = await open_store()
    assert await store.append([Entry("a", b"1"), Entry("b", b"x"), Entry("a", b"2")]) == [1, 1, 2]
    assert await store.append([Entry("a", b"3", author="alice")]) == [3]
    loaded = await store.load("a")
    assert loaded.updates == [(1, b"1"), (2, b"2"), (3, b"3")]
    assert loaded.snapshot is None and loaded.last_seq == 3
    assert await store.documents() == ["a", "b"]


async def test_one_batch_across_more_documents_than_one_statement_takes(
    open_store: Opener,
) -> None:
    """A batch over 1,201 documents (SQLite moves their seqs on 500 per statement),
    some new and some already logged, interleaved: each document's seqs follow on
    from its log, in batch order."""
    store = await open_store()
    names = [f"doc-{i:04d}" for i in range(1201)]
    await store.append([Entry(name, b"old") for name in names[::3]])
    order = list(range(1201)) * 2
    random.Random(7).shuffle(order)
    seqs = await store.append([Entry(names[i], f"{i}".encode()) for i in order])
    expected: dict[str, int] = {
        name: (1 if index % 3 == 0 else 0) for index, name in enumerate(names)
    }
    wanted = []
    for i in order:
        expected[names[i]] += 1
        wanted.append(expected[names[i]])
    assert seqs == wanted
    loaded = await store.load(names[3])
    assert [seq for seq, _ in loaded.updates] == [1, 2, 3]
    assert await store.documents() == names


async def test_concurrent_writers_never_share_a_seq(open_store: Opener) -> None:
    """Two stores on one database (two server processes) appending to the same
    documents at once: every entry is kept, and each log is numbered 1..N, no gap."""
    first, second = await open_store(), await open_store()

    async def writer(store: Store, tag: str) -> None:
        for i in range(20):
            await store.append([Entry("shared", f"{tag}{i}".encode()), Entry(f"own-{tag}", b"x")])

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer, first, "a")
        tg.start_soon(writer, second, "b")
    loaded = await first.load("shared")
    assert [seq for seq, _ in loaded.updates] == list(range(1, 41))
    data = [update for _, update in loaded.updates]
    assert sorted(data) == sorted([f"{t}{i}".encode() for t in "ab" for i in range(20)])
    # Each writer's own entries keep their order.
    for tag in "ab":
        mine = [d for d in data if d.startswith(tag.encode())]
        assert mine == [f"{tag}{i}".encode() for i in range(20)]
    assert [seq for seq, _ in (await second.load("own-b")).updates] == list(range(1, 21))


async def test_sqlite_appends_through_one_held_connection(tmp_path: Path) -> None:
    """With a pool, a SQLite store's appends go through one connection it holds, and
    its reads and versions through another (the one-call paths); without, through
    SQLAlchemy. Both give the same results."""
    for options, held in (({}, True), ({"poolclass": NullPool}, False)):
        store = await SQLStore.connect(sqlite_url(str(tmp_path / f"{held}.db")), **options)
        try:
            seqs = await store.append([Entry("a", b"1"), Entry("b", b"2"), Entry("a", b"3")])
            assert seqs == [1, 1, 2]
            assert sorted(store._held) == (["append"] if held else [])
            assert (await store.load("a")).updates == [(1, b"1"), (2, b"3")]
            version = await store.add_version("a", None, label="v")
            assert (version.seq, version.label) == (2, "v")
            assert await store.versions("a") == [version]
            assert sorted(store._held) == (["append", "other"] if held else [])
            # A refusal is the caller's: the held connection stays, and serves on.
            with pytest.raises(ValueError, match="no update 3"):
                await store.snapshot("a", b"state", 3)
            assert sorted(store._held) == (["append", "other"] if held else [])
            assert await store.last_seq("a") == 2
        finally:
            await store.aclose()
        assert store._held == {}


async def test_unknown_document_loads_empty(open_store: Opener) -> None:
    """A document never written loads as nothing at all."""
    store = await open_store()
    loaded = await store.load("nobody")
    assert (loaded.snapshot, loaded.snapshot_seq, loaded.updates, loaded.last_seq) == (
        None,
        0,
        [],
        0,
    )


async def test_live_document_equals_reloaded_one(open_store: Opener) -> None:
    """Every update appended, reopened and replayed, rebuilds the live document."""
    rng = random.Random(7)
    live: Doc = Doc()
    text = live.get("t", type=Text)
    captured: list[bytes] = []
    live.observe(lambda event: captured.append(event.update))
    for _ in range(200):
        if len(text) and rng.random() < 0.3:
            start = rng.randrange(len(text))
            del text[start : start + 1]
        else:
            text.insert(rng.randint(0, len(text)), rng.choice("abcdef"))
    store = await open_store()
    for i in range(0, len(captured), 37):
        await store.append([Entry("doc", u) for u in captured[i : i + 37]])
    reopened = await open_store()
    loaded = await reopened.load("doc")
    assert len(loaded.updates) == len(captured)
    assert rebuild(loaded.snapshot, loaded.updates) == str(text)


async def test_snapshot_replaces_the_prefix_and_keeps_the_log(open_store: Opener) -> None:
    """After a snapshot at seq N, load gives it plus the updates after N; nothing is lost."""
    store = await open_store()
    doc: Doc = Doc()
    text = doc.get("t", type=Text)
    updates = []
    doc.observe(lambda event: updates.append(event.update))
    for word in ["one ", "two ", "three "]:
        text += word
    await store.append([Entry("d", u) for u in updates])
    await store.snapshot("d", doc.get_update(), 3)
    text += "four"
    await store.append([Entry("d", updates[-1])])
    loaded = await (await open_store()).load("d")
    assert loaded.snapshot_seq == 3
    assert loaded.updates == [(4, updates[-1])]
    assert rebuild(loaded.snapshot, loaded.updates) == "one two three four"


async def test_older_snapshot_never_replaces_a_newer_one(open_store: Opener) -> None:
    """Stored data is never overwritten with less: an older snapshot is ignored."""
    store = await open_store()
    await store.append([Entry("d", b"u1"), Entry("d", b"u2")])
    await store.snapshot("d", b"state@2", 2)
    await store.snapshot("d", b"state@1", 1)
    loaded = await store.load("d")
    assert (loaded.snapshot, loaded.snapshot_seq) == (b"state@2", 2)


@pytest.mark.parametrize("seq", [0, 3])
async def test_snapshot_outside_the_log_is_refused(open_store: Opener, seq: int) -> None:
    """A snapshot must name an update the log has."""
    store = await open_store()
    await store.append([Entry("d", b"u1"), Entry("d", b"u2")])
    with pytest.raises(ValueError, match=f"no update {seq}"):
        await store.snapshot("d", b"state", seq)
    with pytest.raises(ValueError, match="no update 1"):
        await store.snapshot("missing", b"state", 1)


async def test_grants_are_stored_per_document_and_principal(open_store: Opener) -> None:
    """A grant replaces the principal's previous one; revoking says whether there was one;
    grants survive reopening."""
    store = await open_store()
    assert await store.grants("doc") == []
    await store.grant("doc", Grant("user:alice", Role.OWNER))
    await store.grant("doc", Grant("group:eng", Role.VIEWER))
    await store.grant("doc", Grant("group:eng", Role.EDITOR))
    await store.grant("other", Grant("*", Role.VIEWER))
    reopened = await open_store()
    assert await reopened.grants("doc") == [
        Grant("group:eng", Role.EDITOR),
        Grant("user:alice", Role.OWNER),
    ]
    assert await reopened.revoke("doc", "group:eng") is True
    assert await reopened.revoke("doc", "group:eng") is False
    assert await reopened.grants("doc") == [Grant("user:alice", Role.OWNER)]
    assert await reopened.grants("other") == [Grant("*", Role.VIEWER)]


async def test_versions_name_points_of_the_log(open_store: Opener) -> None:
    """A version records a seq of the log, with its label, author and kind; versions
    list oldest first, survive reopening and compaction, and must name a real seq."""
    store = await open_store()
    await store.append([Entry("doc", b"u1"), Entry("doc", b"u2"), Entry("other", b"x")])
    first = await store.add_version("doc", 1, label="draft", author="alice")
    second = await store.add_version("doc", 2, automatic=True)
    await store.add_version("other", 0)
    for seq in (3, -1):
        with pytest.raises(ValueError, match=f"no update {seq}"):
            await store.add_version("doc", seq)
    with pytest.raises(ValueError):
        await store.add_version("nobody", 0)
    await store.snapshot("doc", b"state", 2)  # compaction keeps what versions need
    reopened = await open_store()
    listed = await reopened.versions("doc")
    assert listed == [first, second]
    assert (first.seq, first.label, first.author, first.automatic) == (1, "draft", "alice", False)
    assert (second.seq, second.label, second.automatic) == (2, None, True)
    assert second.id > first.id
    assert [seq for seq, _ in (await reopened.load("doc")).updates] == []
    assert [v.seq for v in await reopened.versions("other")] == [0]


async def test_load_as_of_a_seq_uses_the_snapshots_at_or_before_it(open_store: Opener) -> None:
    """`load(upto=n)` is the document as of update n: the latest snapshot not past
    n, then the updates up to n; `log` gives entries with their authors."""
    store = await open_store()
    await store.append([Entry("doc", f"u{i}".encode(), f"user:{i % 2}") for i in range(1, 7)])
    await store.snapshot("doc", b"at2", 2)
    await store.snapshot("doc", b"at4", 4)
    reopened = await open_store()
    cases = {1: (None, 0, [1]), 3: (b"at2", 2, [3]), 5: (b"at4", 4, [5]), None: (b"at4", 4, [5, 6])}
    for upto, (snapshot, snapshot_seq, seqs) in cases.items():
        stored = await reopened.load("doc", upto=upto)
        assert (stored.snapshot, stored.snapshot_seq) == (snapshot, snapshot_seq), upto
        assert [seq for seq, _ in stored.updates] == seqs, upto
    assert await reopened.log("doc", 2, 4) == [(3, b"u3", "user:1"), (4, b"u4", "user:0")]
    assert [seq for seq, _, _ in await reopened.log("doc", 4)] == [5, 6]
    assert await reopened.log("nobody", 0) == []


async def test_versions_record_who_edited_since_the_one_before(open_store: Opener) -> None:
    """A version's editors are the authors after the version before it (by first
    appearance); removing a version hands its editors to the next one."""
    store = await open_store()
    authors = ["alice", "bob", None, "alice", "carol", "dave"]
    await store.append([Entry("doc", b"u", author) for author in authors])
    first = await store.add_version("doc", 2)
    second = await store.add_version("doc", 5, label="named")
    third = await store.add_version("doc", 6)
    assert first.editors == ("alice", "bob")
    assert second.editors == ("alice", "carol")  # seq 3 has no author
    assert third.editors == ("dave",)
    reopened = await open_store()
    assert await reopened.remove_version("doc", second.id) is True
    assert await reopened.remove_version("doc", second.id) is False
    listed = await reopened.versions("doc")
    assert [v.id for v in listed] == [first.id, third.id]
    assert listed[1].editors == ("alice", "carol", "dave")
    assert listed[0].editors == ("alice", "bob")
