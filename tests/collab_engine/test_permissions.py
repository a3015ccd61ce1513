"""The permission decision: tokens narrow, grants bound, nobody widens."""

from __future__ import annotations

import pytest

from collab_engine.errors import close_reason
from collab_engine.identity import Identity
from collab_engine.permissions import Credentials, Grant, Role, decide, refusal

ALICE = Identity("alice", "Alice", ("eng",))
BOB = Identity("bob", "Bob")


def creds(identity: Identity, role: Role, documents: str = "**") -> Credentials:
    return Credentials(identity, role, documents)


def test_without_grants_the_token_decides() -> None:
    assert decide(creds(ALICE, Role.EDITOR), "notes/a", []) == Role.EDITOR
    assert decide(creds(ALICE, Role.OWNER, "notes/*"), "notes/a", []) == Role.OWNER
    assert decide(creds(ALICE, Role.OWNER, "notes/*"), "secret/a", []) is None


def test_grants_bound_the_token_and_the_token_narrows() -> None:
    grants = [Grant("user:alice", Role.EDITOR), Grant("group:eng", Role.VIEWER)]
    assert decide(creds(ALICE, Role.OWNER), "d", grants) == Role.EDITOR  # never widened
    assert decide(creds(ALICE, Role.VIEWER), "d", grants) == Role.VIEWER  # narrowed
    assert decide(creds(BOB, Role.OWNER), "d", grants) is None  # no matching grant
    assert decide(creds(BOB, Role.OWNER), "d", [*grants, Grant("*", Role.VIEWER)]) == Role.VIEWER


def test_the_best_matching_grant_counts() -> None:
    grants = [Grant("group:eng", Role.OWNER), Grant("user:alice", Role.VIEWER)]
    assert decide(creds(ALICE, Role.OWNER), "d", grants) == Role.OWNER


def test_an_admin_token_owns_every_document_it_covers_whatever_the_grants() -> None:
    grants = [Grant("user:alice", Role.VIEWER)]
    admin = Credentials(BOB, Role.VIEWER, "notes/*", admin=True)
    assert decide(admin, "notes/a", grants) == Role.OWNER
    assert decide(admin, "notes/a", []) == Role.OWNER
    assert decide(admin, "secret/a", []) is None  # its `doc` pattern still holds


def test_a_refusal_names_the_user_and_what_is_missing() -> None:
    grants = [Grant("user:bob", Role.OWNER)]
    no_grant = refusal(creds(ALICE, Role.EDITOR), "notes", grants)
    assert no_grant == (
        "alice may not read 'notes': it has grants, and none for user:alice or the "
        "token's groups (group:eng); an owner can add one with "
        "PUT /api/documents/notes/grants/user:alice"
    )
    # Cut to a close frame's 123 bytes, the user and the missing grant are still said.
    assert "alice may not read 'notes': it has grants, and none for user:alice" in close_reason(
        no_grant
    )
    assert refusal(creds(ALICE, Role.OWNER, "cli/*"), "notes", []) == (
        "alice may not read 'notes': the token is only for documents matching 'cli/*'"
    )
    assert refusal(creds(BOB, Role.VIEWER), "notes", [], Role.EDITOR) == (
        "bob may not write 'notes': the token gives viewer, editor is needed"
    )
    viewer = [Grant("group:eng", Role.VIEWER)]
    assert refusal(creds(ALICE, Role.OWNER), "notes", viewer, Role.OWNER) == (
        "alice may not administer 'notes': owner is needed, and the best grant for alice "
        "is viewer (group:eng); an owner can give more with "
        "PUT /api/documents/notes/grants/user:alice"
    )


def test_anonymous_identities_match_no_user_grant() -> None:
    anonymous = Identity.anonymous_for(1)
    grants = [Grant(f"user:{anonymous.user_id}", Role.OWNER)]
    assert decide(creds(anonymous, Role.OWNER), "d", grants) is None


@pytest.mark.parametrize("principal", ["", "alice", "user:", "team:x", "group"])
def test_bad_principals_are_refused(principal: str) -> None:
    with pytest.raises(ValueError, match="bad principal"):
        Grant(principal, Role.VIEWER)


def test_roles_parse_and_order() -> None:
    assert Role.parse("Editor") is Role.EDITOR and str(Role.OWNER) == "owner"
    assert Role.VIEWER < Role.EDITOR < Role.OWNER
    with pytest.raises(ValueError, match="unknown role"):
        Role.parse("admin")
