"""Tokens: minted, verified, and every way a token is refused (4401)."""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
import pytest

from collab_engine.errors import Unauthenticated
from collab_engine.permissions import Role
from server.auth import credentials_for, mint, token_of, verify

SECRET = "s" * 32


def test_a_minted_token_verifies_to_its_claims() -> None:
    token = mint(
        SECRET, user="alice", name="Alice", groups=["eng"], role=Role.VIEWER, documents="n/*"
    )
    credentials = verify(SECRET, token)
    assert credentials.identity.user_id == "alice" and credentials.identity.name == "Alice"
    assert credentials.identity.groups == ("eng",) and not credentials.identity.anonymous
    assert credentials.role is Role.VIEWER and credentials.documents == "n/*"
    assert credentials.expires_at is not None and credentials.expires_at > time.time()


# Tokens are made when the test runs, not when it is collected: a long suite would
# otherwise hand the "valid but for one claim" tokens over already expired.
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda: mint(SECRET, user="a", ttl=-10), "token expired", id="expired"),
        pytest.param(
            lambda: mint("x" * 32, user="a"), "Signature verification failed", id="other-secret"
        ),
        pytest.param(lambda: "not.a.token", "invalid token", id="garbage"),
        pytest.param(
            lambda: jwt.encode({"sub": "a"}, SECRET, algorithm="HS256"), "exp", id="no-expiry"
        ),
        pytest.param(
            lambda: jwt.encode(
                {"sub": "a", "exp": time.time() + 60, "role": "god"}, SECRET, algorithm="HS256"
            ),
            "unknown role",
            id="bad-role",
        ),
        pytest.param(
            lambda: jwt.encode({"sub": 5, "exp": time.time() + 60}, SECRET, algorithm="HS256"),
            "invalid token",
            id="sub-not-string",
        ),
        pytest.param(
            lambda: jwt.encode({"sub": "a", "exp": time.time() + 60}, SECRET, algorithm="HS512"),
            "invalid token",
            id="other-algorithm",
        ),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(make: Callable[[], str], reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason) as caught:
        verify(SECRET, make())
    assert caught.value.close_code == 4401


def test_the_token_comes_from_the_query_or_the_bearer_header() -> None:
    assert token_of({"query_string": b"a=1&token=abc"}) == "abc"
    assert token_of({"headers": [(b"authorization", b"Bearer xyz")]}) == "xyz"
    assert token_of({"headers": [(b"authorization", b"Basic xyz")]}) is None
    assert credentials_for(None, {}, time.time()) is None  # open development mode
    with pytest.raises(Unauthenticated, match="no token"):
        credentials_for(SECRET, {}, time.time())


def test_expiry_is_judged_at_the_time_given() -> None:
    """The server passes its engine's clock: a token is good until its `exp` on
    that clock, whatever the real time."""
    token = mint(SECRET, user="a", ttl=60, now=1_000_000.0)
    assert verify(SECRET, token, now=1_000_059.0).identity.user_id == "a"
    with pytest.raises(Unauthenticated, match="token expired"):
        verify(SECRET, token, now=1_000_060.0)


@pytest.mark.parametrize("exp", ["soon", True, float("inf"), float("nan")])
def test_an_expiry_that_is_no_time_is_refused(exp: object) -> None:
    token = jwt.encode({"sub": "a", "exp": exp}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="exp is not a time"):
        verify(SECRET, token)
