"""Refusing a write: no change, not yet integrable, or merged with its undo."""

from __future__ import annotations

from pycrdt import Doc, Map, Text

from collab_engine.rollback import rollback


def test_a_write_and_its_undo_merged_leave_every_replica_as_it_was() -> None:
    room: Doc = Doc()
    room.get("t", type=Text).insert(0, "hello world")
    room.get("m", type=Map)["k"] = "v"
    author: Doc = Doc()
    author.apply_update(room.get_update())
    before = author.get_state()
    with author.transaction():
        del author.get("t", type=Text)[0:6]
        author.get("t", type=Text).insert(0, "X")
        author.get("m", type=Map)["k"] = "w"
        author.get("new", type=Map)["n"] = 1  # a root the room does not have
    refusal = rollback(room, author.get_update(before))
    assert refusal.changed and refusal.merged is not None
    for replica in (room, author):
        replica.apply_update(refusal.merged)
        assert str(replica.get("t", type=Text)) == "hello world"
        assert replica.get("m", type=Map).to_py() == {"k": "v"}
        assert replica.get("new", type=Map).to_py() == {}


def test_a_write_that_changes_nothing_is_no_write() -> None:
    room: Doc = Doc()
    room.get("t", type=Text).insert(0, "known")
    refusal = rollback(room, room.get_update())
    assert (refusal.changed, refusal.merged) == (False, None)


def test_a_write_that_cannot_be_integrated_is_kept_out() -> None:
    author: Doc = Doc()
    text = author.get("t", type=Text)
    text.insert(0, "a")
    first = author.get_update()
    text.insert(1, "b")
    second = author.get_update(_state_after(first))
    refusal = rollback(Doc(), second)  # depends on `first`, which the room lacks
    assert (refusal.changed, refusal.merged) == (True, None)


def _state_after(update: bytes) -> bytes:
    doc: Doc = Doc()
    doc.apply_update(update)
    return doc.get_state()
