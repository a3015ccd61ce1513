"""The room's awareness table follows the y-protocols rules and knows who owns what."""

from __future__ import annotations

import pytest

from collab_engine.awareness import Awareness
from collab_engine.errors import MessageTooBig
from collab_engine.protocol import AwarenessEntry
from collab_engine.types import ClientId, PeerId

A, B = PeerId(1), PeerId(2)
C1, C2 = ClientId(11), ClientId(12)


def entry(client: int, clock: int, state: str | None) -> AwarenessEntry:
    return AwarenessEntry(ClientId(client), clock, state)


def test_newer_clock_wins_and_stale_entries_are_not_forwarded() -> None:
    """Only entries with a newer clock are accepted; older or equal ones are dropped."""
    table = Awareness(max_state_size=100)
    assert table.apply((entry(11, 2, '{"x":1}'),), A, 0.0).accepted == [entry(11, 2, '{"x":1}')]
    assert table.apply((entry(11, 1, '{"x":0}'),), A, 0.0).accepted == []
    assert table.apply((entry(11, 2, '{"x":9}'),), A, 0.0).accepted == []
    assert table.apply((entry(11, 3, '{"x":1}'),), A, 0.0).accepted == [entry(11, 3, '{"x":1}')]
    assert table.entries() == [entry(11, 3, '{"x":1}')]


def test_removal_at_same_clock_is_accepted_and_blocks_older_copies() -> None:
    """A null state at the current clock removes; an older copy cannot come back."""
    table = Awareness(max_state_size=100)
    table.apply((entry(11, 5, "{}"),), A, 0.0)
    assert table.apply((entry(11, 5, None),), A, 0.0).accepted == [entry(11, 5, None)]
    assert table.apply((entry(11, 4, '{"old":1}'),), A, 0.0).accepted == []
    assert table.entries() == []


def test_removing_an_unknown_client_forwards_nothing() -> None:
    """A removal for a client nobody knows is remembered but not forwarded."""
    table = Awareness(max_state_size=100)
    assert table.apply((entry(11, 1, None),), A, 0.0).accepted == []
    assert table.apply((entry(11, 1, "{}"),), A, 0.0).accepted == []


def test_remove_owner_removes_only_that_peers_states() -> None:
    """A departing peer's states are removed at their own clock; others stay."""
    table = Awareness(max_state_size=100)
    table.apply((entry(11, 1, '{"a":1}'), entry(13, 7, "{}")), A, 0.0)
    table.apply((entry(12, 1, '{"b":1}'),), B, 0.0)
    assert sorted(table.owned_by(A)) == [11, 13]
    removed = table.remove_owner(A)
    assert sorted(removed, key=lambda e: e.client_id) == [entry(11, 1, None), entry(13, 7, None)]
    assert table.entries() == [entry(12, 1, '{"b":1}')]
    assert table.remove_owner(A) == []


def test_another_connections_id_is_refused_until_it_is_free() -> None:
    """A connection cannot set or remove a client id another connection holds; once
    the holder leaves, the id is free (a reconnecting client uses it again)."""
    table = Awareness(max_state_size=100)
    table.apply((entry(11, 1, "{}"),), A, 0.0)
    spoof = table.apply((entry(11, 2, '{"evil":1}'), entry(12, 1, "{}")), B, 0.0)
    assert spoof.refused == [entry(11, 2, '{"evil":1}')]
    assert spoof.accepted == [entry(12, 1, "{}")]
    assert table.apply((entry(11, 3, None),), B, 0.0).refused == [entry(11, 3, None)]
    assert table.get(C1) == entry(11, 1, "{}")
    table.remove_owner(A)
    assert table.apply((entry(11, 2, "{}"),), B, 0.0).accepted == [entry(11, 2, "{}")]
    assert table.owned_by(B) == [C1, ClientId(12)]


def test_take_over_when_allowed() -> None:
    """`may_take_over` lets a connection have an id another one holds (the same user
    reconnecting before the server noticed the old connection died)."""
    table = Awareness(max_state_size=100)
    table.apply((entry(11, 1, "{}"),), A, 0.0)
    taken = table.apply((entry(11, 2, "{}"),), B, 0.0, may_take_over=lambda holder: holder == A)
    assert taken.accepted == [entry(11, 2, "{}")]
    assert table.remove_owner(A) == []
    assert table.owned_by(B) == [C1]


def test_server_put_is_one_clock_ahead_and_the_owner_wins_a_tie() -> None:
    """`put` issues the server's version at clock + 1; an owner's entry at that same
    clock (sent before it saw ours) is accepted; a stranger's is not."""
    table = Awareness(max_state_size=100)
    table.apply((entry(11, 4, '{"a":1}'),), A, 0.0)
    assert table.put(C1, '{"a":2}', 1.0) == entry(11, 5, '{"a":2}')
    assert table.apply((entry(11, 5, '{"a":3}'),), A, 2.0).accepted == [entry(11, 5, '{"a":3}')]
    # Now the owner's own entry holds clock 5: another equal clock is stale again.
    assert table.apply((entry(11, 5, '{"a":4}'),), A, 2.0).accepted == []
    assert table.owner_of(C1) == A and table.clock_of(C1) == 5


def test_states_over_the_limit_are_refused_whole() -> None:
    """A state over the size limit raises MessageTooBig and nothing of the batch applies."""
    table = Awareness(max_state_size=10)
    with pytest.raises(MessageTooBig, match="over 10 bytes"):
        table.apply((entry(11, 1, "{}"), entry(12, 1, '{"x":"0123456789"}')), A, 0.0)
    assert table.entries() == []
    # Exactly at the limit is accepted.
    assert table.apply((entry(11, 1, '{"x":"01"}'),), A, 0.0).accepted != []


def test_expire_removes_states_not_renewed_in_time() -> None:
    """States older than the timeout are removed; renewed ones stay; old removals are forgotten."""
    table = Awareness(max_state_size=100, outdated_timeout=30.0)
    table.apply((entry(11, 1, "{}"),), A, 0.0)
    table.apply((entry(12, 1, "{}"),), B, 0.0)
    table.apply((entry(12, 2, "{}"),), B, 20.0)
    assert table.expire(29.0) == []
    assert table.expire(30.0) == [entry(11, 1, None)]
    assert table.entries() == [entry(12, 2, "{}")]
    table.expire(61.0)
    # Client 11's clock is forgotten after a further timeout: the table stays bounded.
    assert table.apply((entry(11, 1, "{}"),), A, 61.0).accepted == [entry(11, 1, "{}")]


def test_expire_looks_again_only_when_a_state_can_be_due_and_misses_none() -> None:
    """`expire` skips its scan until the soonest a state can time out, and a state
    added or renewed after a scan is still removed on time."""
    table = Awareness(max_state_size=100, outdated_timeout=30.0)
    table.apply((entry(11, 1, "{}"),), A, 0.0)
    assert table.expire(10.0) == []
    table.apply((entry(12, 1, "{}"),), B, 20.0)
    table.apply((entry(11, 2, "{}"),), A, 25.0)  # renewed: due at 55, not 30
    assert table.expire(30.0) == []
    assert table.expire(49.9) == []
    assert table.expire(50.0) == [entry(12, 1, None)]
    assert table.expire(54.9) == []
    assert table.expire(55.0) == [entry(11, 2, None)]
    table.apply((entry(13, 1, "{}"),), A, 56.0)  # into an empty table
    assert table.expire(85.9) == []
    assert table.expire(86.0) == [entry(13, 1, None)]


def test_client_is_heard_again_at_its_next_clock_after_a_server_removal() -> None:
    """After its connection dropped, a returning client's next change is accepted.

    Regression: removals used to be sent at clock + 1, so the client's next change,
    at clock + 1 from its own point of view, looked stale and was dropped.
    """
    table = Awareness(max_state_size=100)
    table.apply((entry(11, 4, '{"v":1}'),), A, 0.0)
    assert table.remove_owner(A) == [entry(11, 4, None)]
    # y-websocket re-announces at the same clock on reconnect: stale, as in y-protocols.
    assert table.apply((entry(11, 4, '{"v":1}'),), B, 0.0).accepted == []
    assert table.apply((entry(11, 5, '{"v":2}'),), B, 0.0).accepted == [entry(11, 5, '{"v":2}')]


def test_echoes_of_other_clients_states_are_ignored_not_refused() -> None:
    """y-websocket sends back every update it applies: another client's state at its
    known clock is stale, so it is ignored, and nobody is told off for it."""
    table = Awareness(max_state_size=100)
    table.apply((entry(11, 3, "{}"),), A, 0.0)
    echo = table.apply((entry(11, 3, "{}"), entry(11, 2, None)), B, 0.0)
    assert (echo.accepted, echo.refused) == ([], [])
