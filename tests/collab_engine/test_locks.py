"""Session locks: leases, fencing, overlap, expiry, disconnection, enforcement on
writes, and the mirror in the server's awareness entry."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pycrdt import Doc, Map, Text

from collab_engine import protocol
from collab_engine.clock import ManualClock
from collab_engine.errors import Forbidden
from collab_engine.identity import Identity
from collab_engine.locks import (
    LockConflict,
    LockLimits,
    LockNotHeld,
    Locks,
    Shadow,
    TooManyLocks,
    overlaps,
    parse_section,
    sections_touched,
)
from collab_engine.peer import Peer
from collab_engine.permissions import Role
from collab_engine.presence import PresencePolicy
from collab_engine.protocol import (
    AwarenessUpdate,
    LockReply,
    LockRequest,
    PermissionDenied,
    SyncUpdate,
)
from collab_engine.room import Room
from collab_engine.types import DocumentName, PeerId

ANN, BOB = Identity("ann", "Ann"), Identity("bob", "Bob")


def test_overlap_is_prefix() -> None:
    assert overlaps((), ("a", "b")) and overlaps(("a",), ("a", "b"))
    assert not overlaps(("a", "b"), ("a", "c")) and not overlaps(("a",), ("b",))


def test_leases_have_one_holder_and_growing_fences() -> None:
    locks = Locks(default_ttl=30, grace=5)
    first = locks.acquire(("s", "intro"), user_id="ann", name="Ann", peer=PeerId(1), now=0)
    with pytest.raises(LockConflict, match="locked by Ann"):
        locks.acquire(("s",), user_id="bob", name="Bob", peer=PeerId(2), now=0)
    other = locks.acquire(("s", "end"), user_id="bob", name="Bob", peer=PeerId(2), now=0)
    assert other.fence > first.fence
    with pytest.raises(LockNotHeld):
        locks.renew(("s", "intro"), first.fence + 100, 1)
    assert locks.renew(("s", "intro"), first.fence, 10).expires_at == 40
    assert locks.expire(39.9) == [other]
    assert [lease.section for lease in locks.expire(40)] == [("s", "intro")]
    again = locks.acquire(("s",), user_id="bob", name="Bob", peer=PeerId(2), now=41)
    assert again.fence > other.fence


def test_a_lease_ends_a_grace_after_its_connection() -> None:
    locks = Locks(default_ttl=30, grace=5)
    locks.acquire((), user_id="ann", name="Ann", peer=PeerId(1), now=0)
    assert locks.disconnected(PeerId(1), 10)
    assert locks.expire(14.9) == [] and len(locks.expire(15)) == 1


def test_sections_touched_by_an_update() -> None:
    doc: Doc = Doc()
    sections = doc.get("sections", type=Map)
    sections["intro"] = Map({"title": "x"})
    sections["end"] = "e"
    doc.get("body", type=Text).insert(0, "hi")
    server: Doc = Doc()
    server.apply_update(doc.get_update())
    before = doc.get_state()
    with doc.transaction():
        sections["intro"]["title"] = "y"
        del sections["end"]
        doc.get("body", type=Text).insert(0, "!")
        doc.get("fresh", type=Map)["k"] = 1
    touched = sections_touched(server, doc.get_update(before))
    assert touched == {
        ("sections", "intro", "title"),
        ("sections", "end"),
        ("body",),
        ("fresh", "k"),
    }


# -- in a room ------------------------------------------------------------------------


def joined(room: Room, identity: Identity, role: Role = Role.EDITOR) -> Peer:
    peer = Peer(identity=identity, role=role)
    room.join(peer)
    peer.drain()
    return peer


def request(room: Room, peer: Peer, **body: Any) -> dict[str, Any]:
    room.receive(peer, LockRequest(json.dumps(body)))
    [reply] = [m for m in map(protocol.decode, peer.drain()) if isinstance(m, LockReply)]
    result: dict[str, Any] = json.loads(reply.body)
    return result


def server_locks(room: Room) -> list[dict[str, Any]]:
    """The leases the server's awareness entry shows the clients (none: no entry)."""
    entry = room.awareness.get(room.presence.server_client_id)
    if entry is None:
        return []
    assert entry.state is not None
    locks: list[dict[str, Any]] = json.loads(entry.state)["server"]["locks"]
    assert locks, "the server's entry is there only while it has something to say"
    return locks


def test_two_racing_clients_exactly_one_wins_and_the_others_see_it() -> None:
    room = Room(DocumentName("r"))
    ann, bob, watcher = joined(room, ANN), joined(room, BOB), joined(room, Identity("w", "W"))
    won = request(room, ann, id=1, op="acquire", section=["sections", "intro"])
    lost = request(room, bob, id=2, op="acquire", section=["sections"])
    assert won["ok"] and won["id"] == 1 and won["lock"]["holder"] == {"id": "ann", "name": "Ann"}
    assert not lost["ok"] and "locked by Ann" in lost["error"]
    assert [lock["section"] for lock in server_locks(room)] == [["sections", "intro"]]
    mirrored = [m for m in map(protocol.decode, watcher.drain()) if isinstance(m, AwarenessUpdate)]
    assert mirrored, "the lock did not reach the other clients' awareness"


def test_a_write_into_a_section_locked_by_someone_else_is_rolled_back() -> None:
    room = Room(DocumentName("r"))
    ann, bob = joined(room, ANN), joined(room, BOB)
    room.doc.get("sections", type=Map)["intro"] = "original"
    bob.drain()
    assert request(room, ann, id=1, op="acquire", section=["sections", "intro"])["ok"]
    replica: Doc = Doc()
    replica.apply_update(room.doc.get_update())
    before = replica.get_state()
    replica.get("sections", type=Map)["intro"] = "bob was here"
    room.receive(bob, SyncUpdate(replica.get_update(before)))
    denied = [m for m in map(protocol.decode, bob.drain()) if isinstance(m, PermissionDenied)]
    assert denied == [PermissionDenied("['sections', 'intro'] is locked by Ann")]
    assert room.doc.get("sections", type=Map).to_py() == {"intro": "original"}
    # Ann, the holder, may write; Bob may write elsewhere.
    before = replica.get_state()
    replica.get("sections", type=Map)["other"] = "fine"
    room.receive(bob, SyncUpdate(replica.get_update(before)))
    assert room.doc.get("sections", type=Map).to_py()["other"] == "fine"


def test_release_force_and_rights() -> None:
    clock = ManualClock(start=0.0)
    room = Room(DocumentName("r"), clock=clock)
    ann, viewer = joined(room, ANN), joined(room, Identity("v", "V"), Role.VIEWER)
    bob_owner = joined(room, BOB, Role.OWNER)
    assert not request(room, viewer, op="acquire", section=[])["ok"]
    lease = request(room, ann, op="acquire", section=["body"], ttl=10)["lock"]
    assert not request(room, bob_owner, op="release", section=["body"], fence=lease["fence"])["ok"]
    assert request(room, bob_owner, op="forceRelease", section=["body"])["ok"]
    clock.advance(1.0)  # the mirror's interval (its changes go out at most that often)
    room.tick()
    assert server_locks(room) == []
    again = request(room, ann, op="acquire", section=["body"])["lock"]
    assert request(room, ann, op="renew", section=["body"], fence=again["fence"], ttl=60)["ok"]
    assert request(room, ann, op="release", section=["body"], fence=again["fence"])["ok"]
    assert not request(room, ann, op="release", section=["body"], fence=again["fence"])["ok"]
    bad = request(room, ann, op="acquire", section=[str(i) for i in range(9)])
    assert not bad["ok"] and "a section is" in bad["error"]
    with pytest.raises(Forbidden):
        room.lock("forceRelease", ("body",), identity=ANN, role=Role.EDITOR)


def test_the_shadow_follows_the_room_and_agrees_with_a_full_copy() -> None:
    """The shadow (kept while a room has leases) reports what a full copy reports,
    for updates that follow one another, new roots included."""
    doc: Doc = Doc()
    sections = doc.get("sections", type=Map)
    sections["intro"] = "x"
    room: Doc = Doc()
    room.apply_update(doc.get_update())
    shadow = Shadow(room)
    for edit in range(6):
        before = doc.get_state()
        with doc.transaction():
            if edit % 3 == 0:
                sections["intro"] = f"v{edit}"
            elif edit % 3 == 1:
                doc.get("body", type=Text).insert(0, "t")
            else:
                doc.get(f"new{edit}", type=Map)["k"] = edit
        update = doc.get_update(before)
        expected = sections_touched(room, update)
        assert shadow.check(update) == expected and expected
        room.apply_update(update)
        shadow.follow(update)  # what the room's observer does: a no-op here


def test_a_peer_denied_too_often_is_closed() -> None:
    """Every rollback copies the document: past 30 denials in 10 s, the peer is closed
    with 4403 rather than served."""
    room = Room(DocumentName("r"))
    viewer = joined(room, Identity("v", "V"), Role.VIEWER)
    replica: Doc = Doc()
    for i in range(31):
        before = replica.get_state()
        replica.get("t", type=Text).insert(0, str(i))
        room.receive(viewer, SyncUpdate(replica.get_update(before)))
        assert not viewer.closed or i == 30
    assert viewer.closed and viewer.error is not None and viewer.error.close_code == 4403
    assert viewer.id not in room.peers


def test_denials_older_than_the_window_no_longer_count() -> None:
    """The limit is a rate: 30 denials, 10 s of quiet, 30 more, and the peer is still
    served; the 31st within 10 s of the last 30 closes it."""
    clock = ManualClock(start=0.0)
    room = Room(DocumentName("r"), clock=clock)
    viewer = joined(room, Identity("v", "V"), Role.VIEWER)
    replica: Doc = Doc()

    def deny() -> None:
        before = replica.get_state()
        replica.get("t", type=Text).insert(0, "x")
        room.receive(viewer, SyncUpdate(replica.get_update(before)))

    for _ in range(30):
        deny()
        clock.advance(0.01)
    clock.advance(10.0)
    for _ in range(30):
        deny()
        clock.advance(0.01)
    assert not viewer.closed and len(viewer.denials) == 30
    deny()
    assert viewer.closed and viewer.error is not None and viewer.error.close_code == 4403


def test_a_lock_deep_in_nested_maps_blocks_only_that_key() -> None:
    """A key path into nested maps is a section too: writes under it are denied,
    writes beside it pass."""
    room = Room(DocumentName("r"))
    ann, bob = joined(room, ANN), joined(room, BOB)
    replica: Doc = Doc()
    replica.get("sections", type=Map)["intro"] = Map({"title": "t", "body": "b"})
    room.receive(ann, SyncUpdate(replica.get_update()))
    assert request(room, ann, op="acquire", section=["sections", "intro", "title"])["ok"]
    bob.drain()
    intro = replica.get("sections", type=Map)["intro"]
    before = replica.get_state()
    intro["body"] = "bob's body"
    room.receive(bob, SyncUpdate(replica.get_update(before)))
    before = replica.get_state()
    intro["title"] = "bob's title"
    room.receive(bob, SyncUpdate(replica.get_update(before)))
    denied = [m for m in map(protocol.decode, bob.drain()) if isinstance(m, PermissionDenied)]
    assert denied == [PermissionDenied("['sections', 'intro', 'title'] is locked by Ann")]
    assert room.doc.get("sections", type=Map).to_py() == {
        "intro": {"title": "t", "body": "bob's body"}
    }


# -- limits: what a lock may be, how many, and what the others are sent -----------------


def test_sections_over_the_key_limits_are_refused() -> None:
    limits = LockLimits(max_key_length=8, max_section_length=12)
    assert parse_section(["a" * 8, "é" * 2], limits) == ("a" * 8, "éé")
    with pytest.raises(ValueError, match="key is at most 8 bytes"):
        parse_section(["é" * 5], limits)  # 5 characters, 10 UTF-8 bytes
    with pytest.raises(ValueError, match="at most 12 bytes in all"):
        parse_section(["a" * 8, "b" * 5], limits)
    room = Room(DocumentName("r"), locks=Locks(limits=limits))
    ann, watcher = joined(room, ANN), joined(room, BOB)
    refused = request(room, ann, id=3, op="acquire", section=["x" * 1_000_000])
    assert refused == {"id": 3, "ok": False, "error": "a section's key is at most 8 bytes"}
    assert room.locks.leases == [] and watcher.drain() == []


def test_leases_per_user_and_per_document_are_bounded() -> None:
    room = Room(DocumentName("r"), locks=Locks(limits=LockLimits(per_user=2, per_document=3)))
    ann, bob = joined(room, ANN), joined(room, BOB)
    first = request(room, ann, op="acquire", section=["a"])["lock"]
    assert request(room, ann, op="acquire", section=["b"])["ok"]
    # Taking again a lease one holds is a renewal, not one more.
    assert request(room, ann, op="acquire", section=["a"])["ok"]
    over = request(room, ann, op="acquire", section=["c"])
    assert not over["ok"] and over["error"] == (
        "ann holds 2 locks on the document, the most one user may hold"
    )
    assert request(room, bob, op="acquire", section=["c"])["ok"]
    full = request(room, bob, op="acquire", section=["d"])
    assert not full["ok"] and full["error"] == "the document has 3 locks, the most it may have"
    with pytest.raises(TooManyLocks):
        room.lock("acquire", ("e",), identity=Identity("carol", "Carol"), role=Role.EDITOR)
    # A released lease frees its place.
    held = next(lease for lease in room.locks.leases if lease.section == ("a",))
    assert held.fence > first["fence"]  # the renewal by acquire took a new fence
    assert request(room, ann, op="release", section=["a"], fence=held.fence)["ok"]
    assert request(room, ann, op="acquire", section=["c2"])["ok"]


def test_the_summary_shows_sections_and_holders_within_its_size() -> None:
    """What the clients are sent: no fences or timings (a renewal changes nothing),
    names cut to 64 characters, at most `summary_size` bytes, the rest counted."""
    locks = Locks(limits=LockLimits(summary_size=300))
    assert locks.summary() == {}
    long_name = "N" * 500
    for n in range(10):
        locks.acquire((f"s{n}",), user_id=f"u{n}", name=long_name, peer=None, now=0)
    summary = locks.summary()
    assert len(json.dumps(summary, separators=(",", ":"))) <= 300
    shown = summary["locks"]
    assert shown and summary["more"] == 10 - len(shown)
    assert shown[0] == {"section": ["s0"], "holder": {"id": "u0", "name": "N" * 63 + "\u2026"}}
    lease = locks.leases[0]
    locks.renew(lease.section, lease.fence, 10, ttl=100)
    assert locks.summary() == summary


def test_a_flood_of_lock_requests_reaches_the_others_once_an_interval() -> None:
    """However many locks one user takes and releases, each other client receives
    the server's entry at most once per `server_interval` (the latest, at `tick`),
    and renewals send nothing at all."""
    clock = ManualClock(start=100.0)
    room = Room(
        DocumentName("r"),
        clock=clock,
        presence=PresencePolicy(server_interval=0.25, server_renew=1000.0),
    )
    mallory, reader = joined(room, Identity("m", "Mallory")), joined(room, BOB)
    sent = 0
    for n in range(200):
        body = json.dumps({"op": "acquire", "section": [f"k{n % 10}"]})
        sent += len(body)
        room.receive(mallory, LockRequest(body))
        for reply in map(protocol.decode, mallory.drain()):
            if isinstance(reply, LockReply) and json.loads(reply.body)["ok"]:
                fence = json.loads(reply.body)["lock"]["fence"]
                body = json.dumps({"op": "release", "section": [f"k{n % 10}"], "fence": fence})
                sent += len(body)
                room.receive(mallory, LockRequest(body))
        mallory.drain()
        clock.advance(0.001)
    frames = reader.drain()
    assert len(frames) == 1, "only the first change goes out within the interval"
    assert room.presence.holding
    clock.advance(0.25)
    room.tick()
    [latest] = map(protocol.decode, reader.drain())
    assert isinstance(latest, AwarenessUpdate)
    [entry] = latest.entries
    assert entry.state is None, "every lock was released: the server's entry is removed"
    received = sum(len(frame) for frame in frames) + 20
    assert received * 20 < sent
    # Renewing a lease changes nothing the others are shown: nothing is sent.
    lease = request(room, mallory, op="acquire", section=["kept"])["lock"]
    clock.advance(1.0)
    room.tick()
    assert len(reader.drain()) == 1
    for _ in range(5):
        assert request(room, mallory, op="renew", section=["kept"], fence=lease["fence"])["ok"]
        clock.advance(1.0)
        room.tick()
    assert reader.drain() == []
