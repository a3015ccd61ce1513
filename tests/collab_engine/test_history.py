"""History on a real engine over a SQLite file: versions, content at a version, diff
with authors, restore as a new change, automatic versions and their retention."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from collab_engine.clock import SYSTEM, Clock, ManualClock
from collab_engine.content import content_of
from collab_engine.engine import Engine, EngineConfig
from collab_engine.history import HistoryPolicy, VersionNotFound
from collab_engine.room import Room
from storage import SQLStore, sqlite_url
from tests.timing import advance, eventually

pytestmark = pytest.mark.anyio

MANUAL = HistoryPolicy(enabled=False)


def config(**history: Any) -> EngineConfig:
    policy = HistoryPolicy(**history) if history else MANUAL
    # No linger: tests that step a manual clock need not step the journal's too.
    return EngineConfig(unload_grace=0.1, sweep_interval=0.02, journal_linger=0, history=policy)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return sqlite_url(str(tmp_path / "history.db"))


async def open_engine(
    db: str, cfg: EngineConfig | None = None, clock: Clock = SYSTEM
) -> AsyncIterator[Engine]:
    store = await SQLStore.connect(db)
    try:
        async with Engine(cfg or config(), store, clock=clock) as engine:
            yield engine
    finally:
        await store.aclose()


def idle(engine: Engine) -> Callable[[], bool]:
    """Whether `engine`'s history has no automatic version due or being made."""
    return lambda: not engine.history.busy


def edit(room: Room, author: str, change: Callable[[Doc[Any]], None]) -> None:
    """Apply `change` as `author` would from a client: an update made on a replica."""
    replica: Doc[Any] = Doc()
    replica.apply_update(room.doc.get_update())
    before = replica.get_state()
    change(replica)
    room.apply(replica.get_update(before), author=author)


def rich_document(doc: Doc[Any]) -> None:
    doc["body"] = Text("héllo 😀 wörld")
    doc["meta"] = Map({"title": "Draft", "tags": Map({"a": 1})})
    doc["items"] = Array([1, "two", Map({"three": 3})])
    fragment = doc["prosemirror"] = XmlFragment()
    fragment.children.append(
        XmlElement("paragraph", {"align": "left"}, [XmlText("first paragraph")])
    )


def later_edits(doc: Doc[Any]) -> None:
    body = doc.get("body", type=Text)
    body.insert(len(str(body).encode()), " — more")
    body.format(0, len("héllo".encode()), {"bold": True})
    meta = doc.get("meta", type=Map)
    meta["title"] = "Final"
    del meta["tags"]
    meta["done"] = True
    items = doc.get("items", type=Array)
    items.append(4)
    del items[0]
    fragment = doc.get("prosemirror", type=XmlFragment)
    fragment.children.append(XmlElement("heading", {"level": "1"}, [XmlText("Title")]))
    del fragment.children[0]


async def test_content_at_each_version_is_what_was_there_then(db: str) -> None:
    """Text (plain, delta, non-ASCII), Map, Array and XmlFragment at each version equal
    the document at the moment the version was made, before and after a restart."""
    seen = []
    async for engine in open_engine(db):
        async with engine.room("doc") as room:
            edit(room, "user:ann", rich_document)
            first = await engine.history.create("doc", label="first", author="user:ann")
            seen.append(content_of(room.doc))
            edit(room, "user:bob", later_edits)
            second = await engine.history.create("doc", author="user:bob")
            seen.append(content_of(room.doc))
            assert (await engine.history.content("doc", None))["roots"] == seen[1]
    async for engine in open_engine(db):
        versions = await engine.history.versions("doc")
        assert [v.id for v in versions] == [first.id, second.id]
        assert versions[0].editors == ("user:ann",)
        assert versions[1].editors == ("user:bob",)
        for version, expected in zip(versions, seen, strict=True):
            content = await engine.history.content("doc", version.id)
            assert content["roots"] == expected
            assert content["seq"] == version.seq
        roots = (await engine.history.content("doc", first.id))["roots"]
        assert roots["body"] == {
            "type": "text",
            "text": "héllo 😀 wörld",
            "delta": [{"insert": "héllo 😀 wörld"}],
        }
        assert roots["meta"] == {"type": "map", "value": {"title": "Draft", "tags": {"a": 1}}}
        assert roots["items"] == {"type": "array", "value": [1, "two", {"three": 3}]}
        assert roots["prosemirror"] == {
            "type": "xml",
            "xml": '<paragraph align="left">first paragraph</paragraph>',
        }
        later = (await engine.history.content("doc", second.id))["roots"]["body"]
        assert later["delta"][0] == {"insert": "héllo", "attributes": {"bold": True}}
        with pytest.raises(VersionNotFound):
            await engine.history.content("doc", 999)


async def test_diff_gives_ranges_in_utf16_and_keys_with_their_authors(db: str) -> None:
    """Inserted and deleted text ranges count UTF-16 units, as a Yjs client does, and
    carry who made them; map keys and array elements say what happened to them."""
    async for engine in open_engine(db):
        async with engine.room("doc") as room:
            edit(room, "user:ann", rich_document)
            start = await engine.history.create("doc")

            def ann(doc: Doc[Any]) -> None:
                body = doc.get("body", type=Text)
                body.insert(0, "¡")  # index 0
                doc.get("meta", type=Map)["title"] = "Final"
                doc.get("items", type=Array).append(4)

            def bob(doc: Doc[Any]) -> None:
                body = doc.get("body", type=Text)
                at = len("¡héllo ".encode())
                del body[at : at + len("😀".encode())]
                del doc.get("meta", type=Map)["tags"]
                del doc.get("items", type=Array)[0]

            edit(room, "user:ann", ann)
            edit(room, "user:bob", bob)
            end = await engine.history.create("doc")
        changes = await engine.history.diff("doc", start.id, end.id)
        assert changes["editors"] == ["user:ann", "user:bob"]
        body = changes["roots"]["body"]
        assert body["changes"] == [
            {"op": "insert", "index": 0, "length": 1, "text": "¡", "author": "user:ann"},
            {"op": "delete", "index": 7, "length": 2, "text": "😀", "author": "user:bob"},
        ]
        assert changes["roots"]["meta"]["changes"] == [
            {"op": "remove", "key": "tags", "before": {"a": 1}, "author": "user:bob"},
            {
                "op": "change",
                "key": "title",
                "before": "Draft",
                "after": "Final",
                "author": "user:ann",
            },
        ]
        assert changes["roots"]["items"]["changes"] == [
            {"op": "delete", "index": 0, "values": [1], "author": "user:bob"},
            {"op": "insert", "index": 2, "values": [4], "author": "user:ann"},
        ]
        assert changes["roots"]["prosemirror"]["changed"] is False
        to_now = await engine.history.diff("doc", start.id, None)
        assert to_now["roots"]["body"]["changes"] == body["changes"]
        with pytest.raises(ValueError, match="newer"):
            await engine.history.diff("doc", end.id, start.id)


async def test_restore_is_a_new_change_that_concurrent_edits_merge_with(db: str) -> None:
    """Restoring makes the content equal to the version's for every kind of root, as
    a change on top (the log grows, nothing is rewritten); an edit made concurrently
    on a replica that never saw the restore merges with it; it survives a restart."""
    async for engine in open_engine(db):
        async with engine.room("doc") as room:
            edit(room, "user:ann", rich_document)
            version = await engine.history.create("doc", label="clean")
            expected = content_of(room.doc)
            edit(room, "user:bob", later_edits)
            # A client that has everything so far, and goes on editing meanwhile.
            client: Doc[Any] = Doc()
            client.apply_update(room.doc.get_update())
            seq_before = room.stored_seq
            restored = await engine.history.restore("doc", version.id, author="user:owner")
            assert content_of(room.doc) == expected
            assert restored.label == "Restored version 1 (clean)"
            assert restored.author == "user:owner"
            assert restored.seq > seq_before
            # The concurrent edit arrives after the restore.
            before = client.get_state()
            client.get("body", type=Text).insert(0, ">> ")
            client.get("meta", type=Map)["late"] = "yes"
            room.apply(client.get_update(before), author="user:carol")
            client.apply_update(room.doc.get_update(client.get_state()))
            assert content_of(client) == content_of(room.doc)
            body = content_of(room.doc)["body"]["text"]
            assert body == ">> " + expected["body"]["text"]
            assert content_of(room.doc)["meta"]["value"] == {
                **expected["meta"]["value"],
                "late": "yes",
            }
            assert content_of(room.doc)["prosemirror"] == expected["prosemirror"]
            assert content_of(room.doc)["items"] == expected["items"]
            await room.flush()
            final = content_of(room.doc)
    async for engine in open_engine(db):
        assert (await engine.history.content("doc", None))["roots"] == final
        labels = [v.label for v in await engine.history.versions("doc")]
        assert labels == ["clean", "Restored version 1 (clean)"]


async def test_compaction_after_many_versions_keeps_every_version_whole(db: str) -> None:
    """Thirty versions, snapshots written between them: each version's content is
    the same after compaction as before."""
    cfg = EngineConfig(
        unload_grace=0.1,
        sweep_interval=0.02,
        compact_after_updates=7,
        history=MANUAL,
    )
    async for engine in open_engine(db, cfg):
        async with engine.room("doc") as room:
            text = room.doc.get("t", type=Text)
            items = room.doc.get("a", type=Array)
            for round_ in range(30):
                for i in range(5):
                    text.insert(len(str(text).encode()) if i % 2 else 0, f"{round_}.{i}ü ")
                    items.append(round_ * 10 + i)
                if round_ % 3 == 2:
                    del text[0:3]
                await engine.history.create("doc", label=f"v{round_}")
        versions = await engine.history.versions("doc")
        before = [await engine.history.content("doc", v.id) for v in versions]
        await engine.compact("doc")
    store = await SQLStore.connect(db)
    try:
        stored = await store.load("doc")
        assert stored.snapshot_seq == stored.last_seq > 0  # compacted to the end
    finally:
        await store.aclose()
    async for engine in open_engine(db, cfg):
        after = [await engine.history.content("doc", v.id) for v in versions]
    assert after == before
    assert len({str(c["roots"]) for c in after}) == 30


async def test_automatic_versions_follow_quiet_periods_and_retention(db: str) -> None:
    """After `quiet` seconds without edits a version is made (one per burst of edits,
    none without new edits); past `keep` the oldest automatic versions go, named
    ones stay."""
    cfg = config(quiet=0.15, min_interval=0.0, keep=2, keep_days=None)
    clock = ManualClock()
    async for engine in open_engine(db, cfg, clock):
        async with engine.room("doc") as room:
            text = room.doc.get("t", type=Text)
            text.insert(0, "first;")
            await room.flush()
            await engine.history.create("doc", label="named")
            made = []
            for burst in range(4):
                text.insert(0, f"burst {burst};")
                await room.flush()
                await advance(clock, 0.1)
                assert not engine.history.busy  # not quiet for long enough yet
                await advance(clock, 0.1)
                await eventually(idle(engine), what="the version made")
                newest = (await engine.history.versions("doc"))[-1]
                assert newest.automatic and newest.seq == room.stored_seq
                made.append(newest.id)
            await advance(clock, 1.0)  # quiet, but nothing new: no more versions
            await eventually(idle(engine), what="history idle")
            versions = await engine.history.versions("doc")
    assert [v.label for v in versions if not v.automatic] == ["named"]
    assert [v.id for v in versions if v.automatic] == made[-2:]  # retention: newest two
    assert versions[-1].seq == room.stored_seq


async def test_an_automatic_version_waits_for_the_minimum_interval(db: str) -> None:
    """A second burst within `min_interval` of the last automatic version gets its
    version only once the interval has passed."""
    cfg = config(quiet=0.05, min_interval=1.0, keep=10, keep_days=None)
    clock = ManualClock()
    async for engine in open_engine(db, cfg, clock):
        async with engine.room("doc") as room:
            text = room.doc.get("t", type=Text)
            text.insert(0, "one")
            await room.flush()
            await advance(clock, 0.1)
            await eventually(idle(engine), what="the first version")
            [first] = await engine.history.versions("doc")
            text.insert(0, "two")
            await room.flush()
            await advance(clock, 0.5)
            await eventually(idle(engine), what="history idle")
            assert len(await engine.history.versions("doc")) == 1  # too soon
            await advance(clock, 0.5)
            await eventually(idle(engine), what="the second version")
            second = (await engine.history.versions("doc"))[1]
    assert 1.0 <= second.created_at - first.created_at <= 1.1
    assert second.automatic and second.seq == 2


async def test_leaving_a_room_versions_the_session(db: str) -> None:
    """When everybody leaves and the room unloads, the session's edits get an
    automatic version recording who made them."""
    cfg = config(quiet=3600.0, min_interval=0.0)
    clock = ManualClock()
    async for engine in open_engine(db, cfg, clock):
        async with engine.room("doc") as room:
            room.apply(_text_update("hello"), author="user:ann")
            await room.flush()
        await advance(clock, 0.12)  # the unload grace
        assert "doc" not in engine.rooms
        await eventually(idle(engine), what="the session's version")
        (version,) = await engine.history.versions("doc")
    assert version.automatic and version.editors == ("user:ann",) and version.seq == 1


async def test_retention_by_age_removes_old_automatic_versions_only(db: str) -> None:
    """Automatic versions older than `keep_days` go at the next prune; named stay."""
    async for engine in open_engine(db, config(keep=100, keep_days=0.0)):
        async with engine.room("doc") as room:
            room.apply(_text_update("x"))
            await room.flush()
        old = await engine.history.create("doc", automatic=True)
        named = await engine.history.create("doc", label="keep me")
        removed = await engine.history.prune("doc")
        assert removed == [old.id]
        assert [v.id for v in await engine.history.versions("doc")] == [named.id]


def _text_update(text: str) -> bytes:
    doc: Doc[Any] = Doc()
    doc.get("t", type=Text).insert(0, text)
    return doc.get_update()


async def test_a_root_empty_at_a_version_gets_its_kind_from_now(db: str) -> None:
    """A root whose every item is deleted at a version has no type left to read
    there; the current document tells it."""
    async for engine in open_engine(db):
        async with engine.room("doc") as room:
            text = room.doc.get("t", type=Text)
            text.insert(0, "abc")
            del text[0:3]
            empty = await engine.history.create("doc")
            text.insert(0, "later")
            content = await engine.history.content("doc", empty.id)
            assert content["roots"]["t"] == {"type": "text", "text": "", "delta": []}
        # Not loaded: nothing tells, and it says so rather than guess.
        await eventually(lambda e=engine: "doc" not in e.rooms, what="the room unloaded")
        unknown = await engine.history.content("doc", empty.id)
        assert unknown["roots"]["t"] == {"type": None}


async def test_a_diff_shows_roots_made_in_its_range_and_not_after(db: str) -> None:
    """A root created between the two versions is a change (all of it inserted);
    one created after the second version is not in that diff."""
    async for engine in open_engine(db):
        async with engine.room("doc") as room:
            edit(room, "user:ann", lambda doc: doc.get("first", type=Text).insert(0, "a"))
            start = await engine.history.create("doc")
            edit(room, "user:bob", lambda doc: doc.get("list", type=Array).extend([1, 2]))
            end = await engine.history.create("doc")
            edit(room, "user:eve", lambda doc: doc.get("late", type=Map).update({"k": 1}))
        changes = await engine.history.diff("doc", start.id, end.id)
        assert set(changes["roots"]) == {"first", "list"}
        assert changes["roots"]["list"]["changes"] == [
            {"op": "insert", "index": 0, "values": [1, 2], "author": "user:bob"}
        ]
        assert changes["roots"]["first"] == {"type": "text", "changes": [], "authors": []}
        to_now = await engine.history.diff("doc", start.id, None)
        assert to_now["roots"]["late"]["changes"] == [
            {"op": "add", "key": "k", "after": 1, "author": "user:eve"}
        ]


async def test_a_long_session_without_a_pause_gets_a_version_per_interval(db: str) -> None:
    """Edits that never pause for `quiet` seconds still get an automatic version once
    `min_interval` has passed, and not more often."""
    cfg = config(quiet=60.0, min_interval=0.5, keep=10, keep_days=None)
    clock = ManualClock()
    async for engine in open_engine(db, cfg, clock):
        async with engine.room("doc") as room:
            text = room.doc.get("t", type=Text)
            for _ in range(60):  # 1.8 s of edits 30 ms apart
                text.insert(0, "x")
                await room.flush()
                await advance(clock, 0.03)
                await eventually(idle(engine), what="history idle")
            versions = await engine.history.versions("doc")
    assert len(versions) == 3, versions  # at 0.5, 1.0 and 1.5 s
    assert all(v.automatic for v in versions)
    gaps = [b.created_at - a.created_at for a, b in zip(versions, versions[1:], strict=False)]
    assert all(gap >= 0.5 for gap in gaps), gaps
