"""The presence policy, on its own: identity, ownership, rate and coalescing, typing,
idle, read-only, the server's entry, and cursors resolved in UTF-16 code units."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, StickyIndex, Text

from collab_engine.awareness import Awareness
from collab_engine.identity import Identity
from collab_engine.presence import Presence, PresencePolicy, resolve_position
from collab_engine.protocol import AwarenessEntry
from collab_engine.types import ClientId, PeerId

A, B = PeerId(1), PeerId(2)
ALICE = Identity("u-alice", "Alice")
ANON_A = Identity.anonymous_for(1)
ANON_B = Identity.anonymous_for(2)


def presence(**policy: Any) -> Presence:
    # The server's entry is renewed at a random time: tests that do not look at it
    # keep it out of the way.
    policy.setdefault("server_renew", 1000.0)
    return Presence(
        Awareness(max_state_size=10_000), PresencePolicy(**policy), server_state={}, now=0.0
    )


def entry(client: int, clock: int, state: dict[str, Any] | None) -> AwarenessEntry:
    return AwarenessEntry(ClientId(client), clock, None if state is None else json.dumps(state))


def states(entries: list[AwarenessEntry]) -> list[tuple[int, int, dict[str, Any] | None]]:
    return [
        (e.client_id, e.clock, None if e.state is None else json.loads(e.state)) for e in entries
    ]


def own(identity: Identity, **fields: Any) -> dict[str, Any]:
    """A state the policy leaves alone for `identity`."""
    user: dict[str, Any] = {"id": identity.user_id}
    if identity.anonymous:
        user["anonymous"] = True
    else:
        user["name"] = identity.name
    return {"user": user, **fields}


# -- identity and ownership ------------------------------------------------------------


def test_a_conforming_state_is_forwarded_as_sent() -> None:
    p = presence()
    p.connect(A, ANON_A, False, 0.0)
    sent = entry(7, 1, own(ANON_A, cursor=None))
    out = p.receive(A, (sent,), 0.0)
    assert (out.to_others, out.to_all, out.refused) == ([sent], [], [])


def test_an_anonymous_connection_gets_its_id_stamped_and_keeps_its_name() -> None:
    """The id is the connection's own; the display name is the client's choice; the
    corrected state goes to everyone, the owner included, one clock ahead."""
    p = presence()
    p.connect(A, ANON_A, False, 0.0)
    out = p.receive(
        A, (entry(7, 3, {"user": {"id": "u-alice", "name": "Alice", "color": "#f00"}}),), 0.0
    )
    assert out.to_others == []
    assert states(out.to_all) == [
        (7, 4, {"user": {"id": "anonymous:1", "name": "Alice", "color": "#f00", "anonymous": True}})
    ]


def test_an_authenticated_identity_is_stamped_whole() -> None:
    """Someone authenticated as Alice is shown as Alice whatever the state says."""
    p = presence()
    p.connect(A, ALICE, False, 0.0)
    out = p.receive(
        A, (entry(7, 1, {"user": {"id": "u-bob", "name": "Bob", "anonymous": True}}),), 0.0
    )
    assert states(out.to_all) == [(7, 2, {"user": {"id": "u-alice", "name": "Alice"}})]
    # The client adopts it; its next states carry the right identity and pass as sent.
    again = entry(7, 3, {"user": {"id": "u-alice", "name": "Alice"}, "cursor": 1})
    assert p.receive(A, (again,), 0.0).to_others == [again]


def test_another_connections_client_id_is_refused() -> None:
    """Nobody else sees a spoofed state; the spoofer is told which ids it may not use."""
    p = presence()
    p.connect(A, ANON_A, False, 0.0)
    p.connect(B, ANON_B, False, 0.0)
    p.receive(A, (entry(7, 1, own(ANON_A)),), 0.0)
    out = p.receive(B, (entry(7, 9, own(ANON_B, evil=True)), entry(7, 10, None)), 0.0)
    assert (out.refused, out.to_others, out.to_all) == ([7, 7], [], [])
    assert states([e for e in p.visible_entries() if e.client_id == 7]) == [(7, 1, own(ANON_A))]
    # The server's own id is no one's to take either.
    server = p.server_client_id
    assert p.receive(B, (entry(server, 99, {}),), 0.0).refused == [server]


def test_the_same_authenticated_user_may_take_its_id_over() -> None:
    """A user reconnecting before its old connection is noticed gone keeps its id."""
    p = presence()
    p.connect(A, ALICE, False, 0.0)
    p.connect(B, ALICE, False, 0.0)
    p.receive(A, (entry(7, 1, own(ALICE)),), 0.0)
    out = p.receive(B, (entry(7, 2, own(ALICE, cursor=2)),), 0.0)
    assert out.refused == [] and states(out.to_others) == [(7, 2, own(ALICE, cursor=2))]
    assert p.disconnect(A) == []  # it no longer holds 7
    assert states(p.disconnect(B)) == [(7, 2, None)]


# -- rate and coalescing ---------------------------------------------------------------


def test_over_the_rate_the_latest_state_goes_out_at_the_next_flush() -> None:
    p = presence(rate=10.0, burst=2)
    p.connect(A, ANON_A, False, 0.0)
    sent = [p.receive(A, (entry(7, i, own(ANON_A, cursor=i)),), 0.0) for i in range(1, 6)]
    assert [len(out.to_others) for out in sent] == [1, 1, 0, 0, 0]
    assert p.tick(0.05) == []  # half a token: not yet
    assert states(p.tick(0.1)) == [(7, 5, own(ANON_A, cursor=5))]  # only the latest
    assert p.tick(0.2) == []


def test_a_state_sent_directly_is_not_flushed_again() -> None:
    """Held back, then overtaken by a newer state that went out at once: the flush
    has nothing left to send."""
    p = presence(rate=20.0, burst=1)
    p.connect(A, ANON_A, False, 0.0)
    assert p.receive(A, (entry(7, 1, own(ANON_A, cursor=1)),), 0.0).to_others != []
    assert p.receive(A, (entry(7, 2, own(ANON_A, cursor=2)),), 0.01).to_others == []
    assert p.receive(A, (entry(7, 3, own(ANON_A, cursor=3)),), 0.05).to_others != []
    assert p.tick(0.10) == []


def test_coalescing_keeps_removals() -> None:
    """A removal held back by the rate still goes out (as a removal)."""
    p = presence(rate=10.0, burst=1)
    p.connect(A, ANON_A, False, 0.0)
    p.receive(A, (entry(7, 1, own(ANON_A)),), 0.0)
    assert p.receive(A, (entry(7, 1, None),), 0.0).to_others == []
    assert states(p.tick(0.1)) == [(7, 1, None)]


# -- typing and idle --------------------------------------------------------------------


def test_typing_is_cleared_after_the_timeout_without_activity() -> None:
    p = presence(typing_timeout=5.0, server_renew=1000.0)
    p.connect(A, ANON_A, False, 0.0)
    p.receive(A, (entry(7, 1, own(ANON_A, typing=True)),), 0.0)
    assert p.tick(4.0) == []
    assert p.activity(A, 4.0) == []  # an edit: still typing
    assert p.tick(8.9) == []
    assert states(p.tick(9.0)) == [(7, 2, own(ANON_A, typing=False))]
    assert p.tick(20.0) == []


def test_an_idle_connection_is_shown_away_and_comes_back() -> None:
    """Silent past the idle timeout: `away` (one clock ahead, for everyone). The owner
    renewing the state it adopted is not activity; a real change restores its status."""
    p = presence(idle_timeout=10.0, typing_timeout=1000.0)
    p.connect(A, ANON_A, False, 0.0)
    p.receive(A, (entry(7, 1, own(ANON_A, cursor=1)),), 0.0)
    assert p.tick(9.0) == []
    assert states(p.tick(10.0)) == [(7, 2, own(ANON_A, cursor=1, status="away"))]
    renewal = entry(7, 3, own(ANON_A, cursor=1, status="away"))
    assert p.receive(A, (renewal,), 25.0).to_others == [renewal]
    moved = entry(7, 4, own(ANON_A, cursor=2, status="away"))  # our `away`, echoed
    assert states(p.receive(A, (moved,), 26.0).to_all) == [(7, 5, own(ANON_A, cursor=2))]
    [info] = p.describe(Doc(), 26.0)
    assert (info.status, info.idle) == ("online", False)


def test_an_edit_ends_idleness_and_a_chosen_status_is_kept() -> None:
    p = presence(idle_timeout=10.0)
    p.connect(A, ANON_A, False, 0.0)
    p.connect(B, ANON_B, False, 0.0)
    p.receive(A, (entry(7, 1, own(ANON_A, status="online")),), 0.0)
    p.receive(B, (entry(8, 1, own(ANON_B, status="busy", statusText="call")),), 0.0)
    # B chose `busy`: idleness does not turn it away.
    assert states(p.tick(10.0)) == [(7, 2, own(ANON_A, status="away"))]
    assert states(p.activity(A, 11.0)) == [(7, 3, own(ANON_A, status="online"))]
    infos = {info.client_id: info for info in p.describe(Doc(), 11.0)}
    assert (infos[8].status, infos[8].status_text, infos[8].idle) == ("busy", "call", True)


def test_invalid_presence_fields_are_dropped() -> None:
    p = presence()
    p.connect(A, ANON_A, False, 0.0)
    out = p.receive(
        A, (entry(7, 1, own(ANON_A, status="sleeping", typing="yes", statusText=3)),), 0.0
    )
    assert states(out.to_all) == [(7, 2, own(ANON_A))]


# -- read-only, leaving, the server's entry -----------------------------------------------


def test_read_only_presence_can_be_hidden() -> None:
    p = presence(show_read_only=False)
    p.connect(A, ANON_A, True, 0.0)
    out = p.receive(A, (entry(7, 1, {}),), 0.0)
    assert (out.to_others, out.to_all) == ([], [])
    assert p.visible_entries() == []
    assert [info.read_only for info in p.describe(Doc(), 0.0)] == [True]
    assert p.disconnect(A) == []  # the others never saw it: nothing to remove


def test_read_only_presence_is_shown_by_default() -> None:
    p = presence()
    p.connect(A, ANON_A, True, 0.0)
    assert p.receive(A, (entry(7, 1, own(ANON_A)),), 0.0).to_others != []


def test_the_server_entry_exists_only_while_it_has_something_to_say() -> None:
    """Frontends count `awareness.getStates()` as who is online: no server entry
    until there is something to say, and a removal for everyone once there is not."""
    p = presence(server_renew=15.0)
    assert p.visible_entries() == [] and p.tick(100.0) == []
    assert p.server_says({"locks": []}, 1.0) == []  # an empty field says nothing
    lock = {"section": ["body"], "holder": {"id": "ann", "name": "Ann"}}
    [shown] = p.server_says({"locks": [lock]}, 1.0)
    assert json.loads(shown.state or "null") == {"server": {"locks": [lock]}}
    assert p.visible_entries() == [shown]
    assert p.server_says({"locks": [lock]}, 2.0) == []  # unchanged: nothing to send
    # Renewed before clients would time it out; never expired by the server itself.
    assert p.tick(15.9) == []
    [renewed] = p.tick(16.0)
    assert (renewed.client_id, renewed.clock, renewed.state) == (
        shown.client_id,
        shown.clock + 1,
        shown.state,
    )
    assert p.expire(1000.0) == []
    [removed] = p.server_says({"locks": []}, 1000.0)
    assert (removed.client_id, removed.clock, removed.state) == (
        shown.client_id,
        shown.clock + 2,
        None,
    )
    assert p.visible_entries() == [] and p.tick(2000.0) == []
    # The id stays the server's: no client may take it while it is absent.
    p.connect(B, ANON_B, False, 0.0)
    assert p.receive(B, (entry(shown.client_id, 99, {}),), 2000.0).refused == [shown.client_id]


def test_the_server_entry_changes_at_most_once_an_interval() -> None:
    """However often the locks change, the clients get the entry at most once per
    `server_interval`: changes within it wait, and the latest goes out at `tick`."""
    p = presence(server_interval=1.0)
    locks = [{"section": [str(n)], "holder": {"id": "ann", "name": "Ann"}} for n in range(5)]
    assert len(p.server_says({"locks": locks[:1]}, 10.0)) == 1
    for n in range(2, 6):
        assert p.server_says({"locks": locks[:n]}, 10.0 + n / 10) == []
    assert p.holding and p.tick(10.9) == []
    [latest] = p.tick(11.0)
    assert json.loads(latest.state or "null") == {"server": {"locks": locks}}
    assert not p.holding
    # A removal waits its turn too.
    assert p.server_says({}, 11.5) == [] and p.holding
    [removed] = p.tick(12.0)
    assert removed.state is None and p.visible_entries() == []


def test_connections_without_a_state_are_listed() -> None:
    """A program connected without awareness still shows as present."""
    p = presence()
    p.connect(A, ALICE, False, 0.0)
    [info] = p.describe(Doc(), 2.0)
    assert (info.client_id, info.user_id, info.name, info.status) == (
        None,
        "u-alice",
        "Alice",
        "online",
    )
    assert info.inactive_for == 2.0


# -- cursors ------------------------------------------------------------------------------


def yjs_position(text: Text, index: int, assoc: int = 0) -> dict[str, Any]:
    """A relative position as the Yjs JSON shape (`type`, `tname`, `item`, `assoc`)."""
    sticky = StickyIndex.new(text, index, assoc)  # type: ignore[arg-type]
    return {"type": None, "tname": "t", "item": sticky.to_json()["item"], "assoc": assoc}


def utf16(text: str) -> list[str]:
    """The UTF-16 code units of `text`, one string each (surrogates kept apart)."""
    data = text.encode("utf-16-le", "surrogatepass")
    return [data[i : i + 2].decode("utf-16-le", "surrogatepass") for i in range(0, len(data), 2)]


def test_a_cursor_follows_its_character_through_concurrent_inserts() -> None:
    """Set on the `w` after an emoji, the cursor still points at that `w` after inserts
    before it by other replicas, counted in UTF-16 code units as Yjs does."""
    doc: Doc = Doc()
    text = doc.get("t", type=Text)
    text += "h😀 world"
    start = utf16(str(text)).index("w")
    position = yjs_position(text, start)
    assert resolve_position(doc, position) == start == 4
    other: Doc = Doc()
    other.apply_update(doc.get_update())
    other.get("t", type=Text).insert(0, "é🎉 ")  # bytes index 0: before everything
    doc.apply_update(other.get_update())
    index = resolve_position(doc, position)
    assert index is not None and utf16(str(text))[index] == "w"
    assert index == start + 4  # é (1) + 🎉 (2) + space (1)


def test_positions_that_cannot_be_resolved_are_none() -> None:
    doc: Doc = Doc()
    text = doc.get("t", type=Text)
    text += "abc"
    assert resolve_position(doc, {"item": {"client": 1, "clock": 0}, "assoc": 0}) is None
    missing_clock = {"item": {"client": doc.client_id, "clock": 99}, "assoc": 0}
    assert resolve_position(doc, missing_clock) is None
    assert resolve_position(doc, {"item": "nonsense"}) is None
    # No item: the start or the end of the named root, as Yjs reads it.
    assert resolve_position(doc, {"type": None, "tname": "t", "item": None, "assoc": 0}) == 3
    assert resolve_position(doc, {"tname": "t", "assoc": -1}) == 0


@pytest.mark.parametrize("shape", ["object", "json"])
def test_describe_resolves_cursors(shape: str) -> None:
    """Both shapes the bindings write (the RelativePosition object stringified, or
    `relativePositionToJSON`, which leaves out null fields) resolve alike."""
    doc: Doc = Doc()
    text = doc.get("t", type=Text)
    text += "aé😀bc"
    anchor, head = yjs_position(text, 1), yjs_position(text, 4)
    if shape == "json":
        anchor = {k: v for k, v in anchor.items() if v is not None}
        head = {k: v for k, v in head.items() if v is not None}
    p = presence()
    p.connect(A, ANON_A, False, 0.0)
    p.receive(A, (entry(7, 1, own(ANON_A, cursor={"anchor": anchor, "head": head})),), 0.0)
    [info] = p.describe(doc, 0.0)
    assert info.cursor is not None and (info.cursor.anchor, info.cursor.head) == (1, 4)
    assert info.to_json()["cursor"] == {"anchor": 1, "head": 4, "type": "t"}


# Where the characters come from: one, two, three UTF-8 bytes, and two UTF-16 units.
BLOCKS = [0x41, 0xC0, 0x4E00, 0x1F600]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_positions_follow_their_characters_under_concurrent_edits(data: st.DataObject) -> None:
    """Two replicas type and delete non-ASCII and astral characters concurrently; a
    position made from a character's id resolves to that very character afterwards,
    counted in UTF-16 units, while it lives."""
    replicas = [Doc(), Doc()]
    ids: dict[str, tuple[int, int]] = {}  # character -> its item id
    clocks = [0, 0]
    used = [0] * len(BLOCKS)
    for _ in range(data.draw(st.integers(4, 25))):
        who = data.draw(st.integers(0, 1))
        doc = replicas[who]
        text = doc.get("t", type=Text)
        current = str(text)
        if current and data.draw(st.booleans()) and data.draw(st.booleans()):
            at = data.draw(st.integers(0, len(current) - 1))
            start = len(current[:at].encode())
            del text[start : start + len(current[at].encode())]
        else:
            block = data.draw(st.integers(0, len(BLOCKS) - 1))
            char = chr(BLOCKS[block] + used[block])  # never the same character twice
            used[block] += 1
            at = data.draw(st.integers(0, len(current)))
            text.insert(len(current[:at].encode()), char)
            ids[char] = (doc.client_id, clocks[who])
            clocks[who] += _units(char)
        if data.draw(st.booleans()):  # sometimes the replicas sync
            replicas[0].apply_update(replicas[1].get_update())
            replicas[1].apply_update(replicas[0].get_update())
    replicas[0].apply_update(replicas[1].get_update())
    final = str(replicas[0].get("t", type=Text))
    units = utf16(final)
    for char, (client, clock) in ids.items():
        position = {
            "type": None,
            "tname": "t",
            "item": {"client": client, "clock": clock},
            "assoc": 0,
        }
        index = resolve_position(replicas[0], position)
        assert index is not None and 0 <= index <= len(units)
        if char in final:
            at = final.encode("utf-16-le")[2 * index : 2 * (index + _units(char))]
            assert at == char.encode("utf-16-le")
            # Associated to the left, the position is just after that clock (Yjs's rule).
            after = resolve_position(replicas[0], {**position, "assoc": -1})
            assert after == index + 1


def _units(value: str) -> int:
    return len(value.encode("utf-16-le")) // 2
