"""Who may do what to a document: roles, grants, and the decision. Pure.

Roles, each including the ones before it:

    viewer   read the document and its presence
    editor   also write (and take locks)
    owner    also manage grants, force-release locks, restore versions

A grant gives a role on one document to a principal: `user:<id>`, `group:<name>`,
or `*` (everyone). A token carries a role and a document pattern of its own; it may
narrow what the grants allow, never widen it:

- a document with no stored grants follows the token (the application that mints
  tokens is the authority, as with y-sweet and Liveblocks tokens);
- once grants are stored, the role is the lesser of the token's role and the best
  grant that matches the identity; no matching grant means no access;
- an admin token (what a holder of the server's secret mints for itself, as the
  command line does) is owner of every document its pattern covers, whatever the
  grants: whoever holds the secret could mint a token for any granted user anyway.

`refusal` says why a decision fell short, in words a user can act on.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from .identity import Identity
from .names import pattern_matches


class Role(enum.IntEnum):
    """A right on a document; a greater role includes the lesser ones."""

    VIEWER = 1
    EDITOR = 2
    OWNER = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        """The role named `text` (`viewer`, `editor`, `owner`).

        Raises:
            ValueError: no such role.
        """
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: use viewer, editor or owner") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Grant:
    """`role` on a document for `principal` (`user:<id>`, `group:<name>` or `*`)."""

    principal: str
    role: Role

    def __post_init__(self) -> None:
        if not valid_principal(self.principal):
            raise ValueError(f"bad principal {self.principal!r}: use user:<id>, group:<name> or *")

    def matches(self, identity: Identity) -> bool:
        """Whether this grant is for `identity`."""
        if self.principal == "*":
            return True
        kind, _, name = self.principal.partition(":")
        if kind == "user":
            return not identity.anonymous and name == identity.user_id
        return kind == "group" and name in identity.groups


def valid_principal(principal: str) -> bool:
    """Whether `principal` names a user, a group, or everyone."""
    kind, colon, name = principal.partition(":")
    return principal == "*" or (colon == ":" and kind in ("user", "group") and bool(name))


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a verified token (or the open development mode) says of a connection."""

    identity: Identity
    role: Role
    """The most the token allows."""
    documents: str = "**"
    """The documents the token is for, as a name pattern (`names.pattern_matches`):
    `notes/*` is every name directly under `notes/`, `notes/**` every name below it,
    `**` every name."""
    expires_at: float | None = None
    """Unix time after which the token is no longer good (None: never)."""
    admin: bool = False
    """Owner of every document it covers, whatever the grants."""

    def covers(self, document: str) -> bool:
        """Whether the token is for `document`: `*` and `?` stay within one
        `/`-separated segment, `**` crosses them, `[` is literal; both sides in NFC."""
        return pattern_matches(self.documents, document)


def decide(credentials: Credentials, document: str, grants: Iterable[Grant]) -> Role | None:
    """The role `credentials` have on `document` given its stored `grants`; None: none."""
    if not credentials.covers(document):
        return None
    if credentials.admin:
        return Role.OWNER
    stored = list(grants)
    if not stored:
        return credentials.role
    granted = [grant.role for grant in stored if grant.matches(credentials.identity)]
    if not granted:
        return None
    return min(credentials.role, max(granted))


_ACTIONS = {Role.VIEWER: "read", Role.EDITOR: "write", Role.OWNER: "administer"}


def refusal(
    credentials: Credentials, document: str, grants: Iterable[Grant], needed: Role = Role.VIEWER
) -> str:
    """Why `credentials` lack the `needed` role on `document` given its `grants`: who,
    what is missing, and how an owner can fix it.

    Meant for when `decide` gives None or less than `needed`. The user, the document
    and the missing grant come first, so that a reason cut short (a WebSocket close
    reason holds 123 bytes) still says them.
    """
    identity = credentials.identity
    user = identity.user_id
    refused = f"{user} may not {_ACTIONS[needed]} {document!r}"
    if not credentials.covers(document):
        return f"{refused}: the token is only for documents matching {credentials.documents!r}"
    if credentials.role < needed:
        return f"{refused}: the token gives {credentials.role}, {needed} is needed"
    principal = f"user:{user}"
    put = f"PUT /api/documents/{document}/grants/{principal}"
    matching = [grant for grant in grants if grant.matches(identity)]
    if not matching:
        groups = ", ".join(f"group:{group}" for group in identity.groups)
        theirs = f" or the token's groups ({groups})" if groups else ""
        return (
            f"{refused}: it has grants, and none for {principal}{theirs}; "
            f"an owner can add one with {put}"
        )
    best = max(matching, key=lambda grant: grant.role)
    return (
        f"{refused}: {needed} is needed, and the best grant for {user} is {best.role} "
        f"({best.principal}); an owner can give more with {put}"
    )
