"""Property tests of the lock table (an injected clock) and of the role decision."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from collab_engine.identity import Identity
from collab_engine.locks import Lease, LockConflict, LockNotHeld, Locks, overlaps
from collab_engine.permissions import Credentials, Grant, Role, decide
from collab_engine.types import PeerId

SECTIONS = st.sampled_from([(), ("a",), ("b",), ("a", "x"), ("a", "y"), ("b", "x")])
USERS = st.sampled_from(["ann", "bob", "cat"])
OPS = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "renew", "release", "force", "leave", "wait"]),
        USERS,
        SECTIONS,
        st.floats(min_value=0.0, max_value=20.0),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_the_lock_table_never_has_two_holders_of_overlapping_sections(
    ops: list[tuple[str, str, tuple[str, ...], float]],
) -> None:
    """Whatever the sequence of acquisitions, renewals, releases, forced releases,
    disconnections and waits: no two live leases overlap, fences only grow, a lease
    is never live past its expiry, and a refused acquisition changes nothing."""
    locks = Locks(default_ttl=10.0, grace=2.0)
    now = 0.0
    last_fence = 0
    peer_of = {"ann": PeerId(1), "bob": PeerId(2), "cat": PeerId(3)}
    mine: dict[tuple[str, tuple[str, ...]], Lease] = {}
    for op, user, section, amount in ops:
        if op == "wait":
            now += amount
            locks.expire(now)
        elif op == "acquire":
            before = list(locks.leases)
            try:
                lease = locks.acquire(section, user_id=user, name=user, peer=peer_of[user], now=now)
            except LockConflict:
                assert locks.leases == before
            else:
                assert lease.fence > last_fence
                last_fence = lease.fence
                mine[(user, section)] = lease
        elif op in ("renew", "release") and (user, section) in mine:
            lease = mine[(user, section)]
            try:
                if op == "renew":
                    mine[(user, section)] = locks.renew(section, lease.fence, now)
                else:
                    locks.release(section, lease.fence)
                    del mine[(user, section)]
            except LockNotHeld:
                assert all(held.fence != lease.fence for held in locks.leases)
        elif op == "force":
            locks.force_release(section)
        elif op == "leave":
            locks.disconnected(peer_of[user], now)
        live = locks.leases
        for i, one in enumerate(live):
            assert one.expires_at > now or op != "wait"
            for other in live[i + 1 :]:
                assert not overlaps(one.section, other.section), (one, other)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(Role)),
    st.sampled_from(["d", "notes/a", "notes/b/c"]),
    st.sampled_from(["*", "notes/*", "d", "other"]),
    st.lists(
        st.builds(
            Grant,
            st.sampled_from(["*", "user:ann", "user:bob", "group:eng", "group:ops"]),
            st.sampled_from(list(Role)),
        ),
        max_size=4,
    ),
    st.booleans(),
)
def test_a_token_never_widens_a_role(
    token_role: Role, document: str, pattern: str, grants: list[Grant], in_eng: bool
) -> None:
    """The decision never exceeds the token's role, nor (once grants exist) the best
    matching grant; it is None exactly when the token is for another document or,
    with grants, when none matches."""
    identity = Identity("ann", "Ann", ("eng",) if in_eng else ())
    credentials = Credentials(identity, token_role, pattern)
    role = decide(credentials, document, grants)
    if not credentials.covers(document):
        assert role is None
        return
    matching = [grant.role for grant in grants if grant.matches(identity)]
    if not grants:
        assert role == token_role
    elif not matching:
        assert role is None
    else:
        assert role == min(token_role, max(matching))
        assert role is not None and role <= token_role and role <= max(matching)
