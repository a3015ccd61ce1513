"""A room applies each change once, fans it out as one frame, and isolates bad peers."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from pycrdt import Doc, Map, Text

from collab_engine import protocol
from collab_engine.clock import ManualClock
from collab_engine.errors import MessageTooBig, PeerTooSlow, ProtocolError
from collab_engine.peer import Peer
from collab_engine.protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    SyncStep1,
    SyncUpdate,
)
from collab_engine.room import Room
from collab_engine.types import ClientId, DocumentName

NewPeer = Callable[..., Peer]


def messages(peer: Peer) -> list[protocol.Message]:
    return [protocol.decode(frame) for frame in peer.drain()]


def text_update(content: str) -> bytes:
    doc = Doc()
    doc["t"] = text = Text()
    text += content
    return doc.get_update()


def dependent_updates(first: str, then: str) -> list[bytes]:
    """Two updates of one client's "t": `first` typed, then `then` after it (the
    second depends on the first)."""
    source = Doc()
    source["t"] = text = Text()
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    text += first
    text += then
    return updates


def new_room(**kwargs: object) -> Room:
    return Room(DocumentName("r"), **kwargs)  # type: ignore[arg-type]


def own_state(peer: Peer, **fields: object) -> str:
    """An awareness state the presence policy leaves as it is: the peer's own identity."""
    return json.dumps({"user": {"id": peer.identity.user_id, "anonymous": True}, **fields})


def test_join_opens_with_sync_step1_then_awareness(new_peer: NewPeer) -> None:
    """A joiner first gets the room's state vector, then every present awareness state
    (none in a new room: the server's own entry is there only while it has locks to
    show)."""
    room = new_room()
    first, second = new_peer(), new_peer()
    room.join(first)
    assert messages(first) == [SyncStep1(room.doc.get_state())]
    state = AwarenessEntry(ClientId(7), 1, own_state(first))
    room.receive(first, AwarenessUpdate((state,)))
    room.join(second)
    assert messages(second) == [SyncStep1(room.doc.get_state()), AwarenessUpdate((state,))]


def test_update_is_applied_once_and_broadcast_as_one_frame(new_peer: NewPeer) -> None:
    """A client's update changes the doc and reaches every other peer, all in the very
    same bytes; not the sender, which holds exactly that update already."""
    room = new_room()
    peers = [new_peer() for _ in range(3)]
    for peer in peers:
        room.join(peer)
        peer.drain()
    room.receive(peers[0], SyncUpdate(text_update("hello")))
    assert str(room.doc.get("t", type=Text)) == "hello"
    frames = [peer.drain() for peer in peers]
    assert frames[0] == []
    assert len(frames[1]) == len(frames[2]) == 1
    # Encoded once: every peer gets the very same bytes object.
    assert frames[1][0] is frames[2][0]


def test_what_a_sender_lacks_of_its_own_updates_effect_goes_back_to_it(
    new_peer: NewPeer,
) -> None:
    """An update waiting in the document for one it depends on is integrated by the
    message that brings that one: what that message changed is more than it sent, so
    its sender gets the change too (as does everyone else), and every replica ends
    with both."""
    first, second = dependent_updates("ab", "c")
    room = new_room()
    early, late, watcher = new_peer(), new_peer(), new_peer()
    for peer in (early, late, watcher):
        room.join(peer)
        peer.drain()
    room.receive(early, SyncUpdate(second))  # pending: it depends on `first`
    assert str(room.doc.get("t", type=Text)) == ""
    room.receive(late, SyncUpdate(first))
    assert str(room.doc.get("t", type=Text)) == "abc"
    for peer, held in ((early, second), (late, first), (watcher, None)):
        replica = Doc()
        if held is not None:
            replica.apply_update(held)
        for message in messages(peer):
            assert isinstance(message, SyncUpdate)
            replica.apply_update(message.update)
        assert str(replica.get("t", type=Text)) == "abc"


def test_duplicate_update_is_not_broadcast_again(new_peer: NewPeer) -> None:
    """Re-sending an update the room already has changes nothing and sends nothing."""
    room = new_room()
    peer = new_peer()
    room.join(peer)
    update = text_update("x")
    room.receive(peer, SyncUpdate(update))
    peer.drain()
    room.receive(peer, SyncUpdate(update))
    assert peer.drain() == []


def test_sync_step1_is_answered_to_the_sender_only(new_peer: NewPeer) -> None:
    """Sync step 1 gets sync step 2 with exactly what the sender misses."""
    room = new_room()
    asker, other = new_peer(), new_peer()
    room.join(asker)
    room.join(other)
    room.apply(text_update("abc"))
    asker.drain()
    other.drain()
    room.receive(asker, SyncStep1(Doc().get_state()))
    [reply] = messages(asker)
    assert isinstance(reply, protocol.SyncStep2)
    replica = Doc()
    replica.apply_update(reply.update)
    assert str(replica.get("t", type=Text)) == "abc"
    assert other.drain() == []


def test_invalid_update_raises_and_leaves_the_doc_untouched(new_peer: NewPeer) -> None:
    """A garbage update is a ProtocolError; the document and the other peers see nothing."""
    room = new_room()
    good, bad = new_peer(), new_peer()
    room.join(good)
    room.join(bad)
    room.apply(text_update("keep"))
    good.drain()
    before = room.doc.get_update()
    with pytest.raises(ProtocolError, match="invalid Yjs update"):
        room.receive(bad, SyncUpdate(b"\x01\x02\x03garbage"))
    with pytest.raises(ProtocolError, match="invalid state vector"):
        room.receive(bad, SyncStep1(b"\xff\xff"))
    assert room.doc.get_update() == before
    assert good.drain() == []


def test_client_auth_message_is_refused(new_peer: NewPeer) -> None:
    """Auth messages only flow from server to client."""
    room = new_room()
    peer = new_peer()
    room.join(peer)
    with pytest.raises(ProtocolError, match="sent by the server"):
        room.receive(peer, protocol.PermissionDenied("x"))


def test_full_outbox_evicts_that_peer_only(new_peer: NewPeer) -> None:
    """A peer whose outbox is full is closed with 1013; the others keep receiving."""
    room = new_room()
    slow, fast = new_peer(outbox_size=2), new_peer(outbox_size=100)
    room.join(slow)
    room.join(fast)
    for i in range(3):
        room.apply(text_update(f"u{i}"))
    assert slow.closed
    assert isinstance(slow.error, PeerTooSlow)
    assert slow.error.close_code == 1013
    assert not fast.closed
    assert len(fast.drain()) == 4  # step 1, three updates


def test_awareness_is_forwarded_to_others_and_removed_on_leave(new_peer: NewPeer) -> None:
    """Awareness goes to the other peers; a leaving peer's states are removed for all."""
    room = new_room()
    a, b = new_peer(), new_peer()
    room.join(a)
    room.join(b)
    a.drain()
    b.drain()
    state = AwarenessEntry(ClientId(5), 1, own_state(a, cursor=1))
    room.receive(a, AwarenessUpdate((state,)))
    assert a.drain() == []
    assert messages(b) == [AwarenessUpdate((state,))]
    room.leave(a)
    assert messages(b) == [AwarenessUpdate((AwarenessEntry(ClientId(5), 1, None),))]
    room.receive(b, protocol.QueryAwareness())
    [reply] = messages(b)
    assert isinstance(reply, AwarenessUpdate)
    assert reply.entries == ()  # nobody present: not even the server, which has no locks


def test_oversized_awareness_state_is_refused(new_peer: NewPeer) -> None:
    """An awareness state over the room's limit raises MessageTooBig (close 1009)."""
    room = new_room(max_awareness_state_size=16)
    peer = new_peer()
    room.join(peer)
    big = AwarenessEntry(ClientId(1), 1, '{"x":"' + "y" * 20 + '"}')
    with pytest.raises(MessageTooBig) as caught:
        room.receive(peer, AwarenessUpdate((big,)))
    assert caught.value.close_code == 1009
    assert room.awareness.get(ClientId(1)) is None


def test_awareness_expires_after_the_timeout(new_peer: NewPeer) -> None:
    """States not renewed within the timeout are removed for everyone at the next sweep."""
    clock = ManualClock(start=0.0)
    room = new_room(awareness_timeout=30.0, clock=clock)
    a, b = new_peer(), new_peer()
    room.join(a)
    room.join(b)
    room.receive(a, AwarenessUpdate((AwarenessEntry(ClientId(5), 1, own_state(a)),)))
    b.drain()
    clock.advance(29.0)
    assert room.sweep() == []
    clock.advance(1.0)
    assert room.sweep() == [AwarenessEntry(ClientId(5), 1, None)]
    assert messages(b) == [AwarenessUpdate((AwarenessEntry(ClientId(5), 1, None),))]


def test_server_side_edits_are_broadcast_even_without_explicit_transaction(
    new_peer: NewPeer,
) -> None:
    """Edits made directly on room.doc (implicit pycrdt transactions) reach the peers."""
    room = new_room()
    peer = new_peer()
    room.join(peer)
    peer.drain()
    room.doc["m"] = settings = Map()
    settings["theme"] = "dark"
    replica = Doc()
    for message in messages(peer):
        assert isinstance(message, SyncUpdate)
        replica.apply_update(message.update)
    assert replica.get("m", type=Map).to_py() == {"theme": "dark"}


def test_update_with_missing_dependencies_is_held_then_broadcast(new_peer: NewPeer) -> None:
    """An update whose causal past is missing is kept pending, and goes out once complete."""
    updates = dependent_updates("ab", "cd")
    room = new_room()
    peer = new_peer()
    room.join(peer)
    peer.drain()
    room.apply(updates[1])
    assert str(room.doc.get("t", type=Text)) == ""
    room.apply(updates[0])
    assert str(room.doc.get("t", type=Text)) == "abcd"
    replica = Doc()
    for message in messages(peer):
        assert isinstance(message, SyncUpdate)
        replica.apply_update(message.update)
    assert str(replica.get("t", type=Text)) == "abcd"


def test_a_chain_of_evictions_is_handled_without_recursion() -> None:
    """Each peer's leaving broadcasts its awareness removal, which fills the next
    peer's outbox: 1,500 evictions in a chain from one broadcast, handled in a loop,
    not a recursion as deep as the chain (Python's limit is 1,000 frames)."""
    room = Room(DocumentName("crowd"))
    peers = [Peer(outbox_size=1_000_000) for _ in range(1_500)]
    for i, peer in enumerate(peers):
        room.join(peer)
        state = json.dumps({"user": {"name": f"u{i}"}})
        room.receive(peer, AwarenessUpdate((AwarenessEntry(ClientId(i + 1), 1, state),)))
        if i % 100 == 99:
            for joined in peers[: i + 1]:
                joined.drain()
    for i, peer in enumerate(peers):
        peer.drain()
        peer.outbox_size = i  # peer i is full after i more frames
    room.doc.get("t", type=Text).insert(0, "x")
    assert room.peers == {}
    assert all(isinstance(peer.error, PeerTooSlow) for peer in peers)
