"""Replicas converge through a room whatever the delivery order and duplication.

Each replica is a pycrdt Doc with a peer in one room. Hypothesis interleaves local
edits on Text, Map and Array with deliveries in both directions and duplicates.
Two regimes:

- FIFO per connection (what a WebSocket gives): each direction of each connection
  delivers in order, connections interleave arbitrarily. Once everything in flight
  is delivered, every replica and the room hold the same state.
- Any order within a connection (updates before their causal past). Yrs 0.28 can
  then keep an update pending even after its dependencies arrived (reproduced:
  one client's updates applied in the order 3, 2, 0, 4, 1 leave the last insert
  out), so convergence is restored by the reconnect handshake, sync step 1/2 in
  both directions, which the test runs at the end, as a reconnecting client does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, TransactionEvent

from collab_engine import protocol
from collab_engine.peer import Peer
from collab_engine.protocol import SyncStep1, SyncStep2, SyncUpdate
from collab_engine.room import Room
from collab_engine.types import DocumentName


class Replica:
    def __init__(self, room: Room, peer: Peer, client_id: int) -> None:
        # Fixed client ids keep the run deterministic, which Hypothesis needs to shrink.
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.peer = peer
        self.outgoing: list[bytes] = []  # updates on their way to the room
        self.incoming: list[bytes] = []  # frames on their way from the room
        self.delivered: list[bytes] = []  # every update it sent, for duplicates
        self.received: list[bytes] = []  # every frame it got, for duplicates
        self._remote = False
        self.doc.observe(self._capture)
        room.join(peer)

    def _capture(self, event: TransactionEvent) -> None:
        if not self._remote:
            self.outgoing.append(event.update)

    def receive(self, frame: bytes) -> None:
        self.received.append(frame)
        message = protocol.decode(frame)
        self._remote = True
        try:
            match message:
                case SyncUpdate(update) | SyncStep2(update):
                    self.doc.apply_update(update)
                case SyncStep1():
                    pass  # the room's state vector: the test delivers everything anyway
        finally:
            self._remote = False

    def content(self) -> dict[str, Any]:
        return content(self.doc)


def content(doc: Doc[Any]) -> dict[str, Any]:
    return {
        "text": str(doc.get("text", type=Text)),
        "map": doc.get("map", type=Map).to_py(),
        "array": doc.get("array", type=Array).to_py(),
    }


def edit(doc: Doc[Any], draw: Callable[[Any], Any]) -> None:
    text = doc.get("text", type=Text)
    map_ = doc.get("map", type=Map)
    array = doc.get("array", type=Array)
    kind = draw(st.sampled_from(["insert", "delete", "set", "unset", "push", "remove"]))
    with doc.transaction():
        if kind == "insert":
            text.insert(
                draw(st.integers(0, len(text))), draw(st.text("abcxyz", min_size=1, max_size=4))
            )
        elif kind == "delete" and len(text):
            start = draw(st.integers(0, len(text) - 1))
            del text[start : min(len(text), start + draw(st.integers(1, 3)))]
        elif kind == "set":
            map_[draw(st.sampled_from("klmn"))] = draw(st.integers(0, 99))
        elif kind == "unset":
            key = draw(st.sampled_from("klmn"))
            if key in map_:
                del map_[key]
        elif kind == "push":
            array.insert(draw(st.integers(0, len(array))), draw(st.integers(0, 99)))
        elif kind == "remove" and len(array):
            del array[draw(st.integers(0, len(array) - 1))]


def pick(draw: Callable[[Any], Any], queue: list[bytes], fifo: bool) -> int:
    """The index of the next item to deliver: the oldest under FIFO, any otherwise."""
    return 0 if fifo else draw(st.integers(0, len(queue) - 1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_replicas_converge_under_any_delivery_order(data: st.DataObject) -> None:
    """N replicas with random edits and random, duplicated delivery end identical."""
    draw = data.draw
    fifo = draw(st.booleans(), label="fifo")
    room = Room(DocumentName("convergence"))
    replicas = [
        Replica(room, Peer(outbox_size=100_000), client_id=i + 1)
        for i in range(draw(st.integers(2, 4)))
    ]
    try:
        for _ in range(draw(st.integers(1, 60))):
            replica = draw(st.sampled_from(replicas))
            replica.incoming += replica.peer.drain()
            action = draw(st.sampled_from(["edit", "edit", "up", "down", "dup-up", "dup-down"]))
            if action == "edit":
                edit(replica.doc, draw)
            elif action == "up" and replica.outgoing:
                update = replica.outgoing.pop(pick(draw, replica.outgoing, fifo))
                replica.delivered.append(update)
                room.receive(replica.peer, SyncUpdate(update))
            elif action == "down" and replica.incoming:
                replica.receive(replica.incoming.pop(pick(draw, replica.incoming, fifo)))
            elif action == "dup-up" and replica.delivered:
                room.receive(replica.peer, SyncUpdate(draw(st.sampled_from(replica.delivered))))
            elif action == "dup-down" and replica.received:
                replica.receive(draw(st.sampled_from(replica.received)))

        # Deliver everything still in flight.
        for replica in draw(st.permutations(replicas)):
            while replica.outgoing:
                room.receive(
                    replica.peer,
                    SyncUpdate(replica.outgoing.pop(pick(draw, replica.outgoing, fifo))),
                )
        for replica in replicas:
            replica.incoming += replica.peer.drain()
            while replica.incoming:
                replica.receive(replica.incoming.pop(pick(draw, replica.incoming, fifo)))
        if not fifo:
            # The reconnect handshake: each side sends what the other's state vector lacks.
            for replica in replicas:
                room.receive(replica.peer, SyncStep2(replica.doc.get_update(room.doc.get_state())))
            for replica in replicas:
                room.receive(replica.peer, SyncStep1(replica.doc.get_state()))
                for frame in replica.peer.drain():
                    replica.receive(frame)

        expected = content(room.doc)
        for replica in replicas:
            assert replica.content() == expected
            assert replica.doc.get_state() == room.doc.get_state()
    finally:
        for replica in replicas:
            replica.peer.close()
        room.close()
