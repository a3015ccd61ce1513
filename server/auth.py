"""Signed tokens (JWT, HS256): minting them and reading them at the edge.

Claims:

    sub     the user's id                      (required)
    name    display name                       (default: the id)
    groups  list of group names                (default: none)
    role    viewer | editor | owner            (default: editor)
    doc     pattern of the documents it is for (default: **, every document;
            see `collab_engine.names`: `*` stays within one `/` segment)
    admin   true: owner of every document its  (default: false)
            `doc` covers, whatever the grants
    exp     expiry, Unix time                  (required)

A token arrives as `?token=` on the WebSocket URL (what y-websocket's `params`
sends) or as `Authorization: Bearer <token>` over HTTP. With no secret configured,
the server runs in the open development mode: no token is asked for, every
connection is anonymous and owner of every document.

An admin token is what a holder of the secret mints for itself (the command line's
`--secret` does, with `doc` `*`): it could mint a token for any granted user anyway.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from math import isfinite
from urllib.parse import parse_qs

import jwt

from collab_engine.errors import Unauthenticated
from collab_engine.identity import Identity
from collab_engine.permissions import Credentials, Role

from .types import Scope

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
"""HS256 keys shorter than the hash are refused (RFC 7518, section 3.2)."""


def mint(
    secret: str,
    *,
    user: str,
    name: str | None = None,
    groups: Sequence[str] = (),
    role: Role = Role.EDITOR,
    documents: str = "**",
    ttl: float = 3600.0,
    now: float | None = None,
    admin: bool = False,
) -> str:
    """A token for `user`, good for `ttl` seconds; with `admin`, owner of every
    document `documents` covers, whatever its grants."""
    issued = time.time() if now is None else now
    claims = {
        "sub": user,
        "name": name or user,
        "groups": list(groups),
        "role": str(role),
        "doc": documents,
        "iat": int(issued),
        "exp": int(issued + ttl),
    }
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str, now: float | None = None) -> Credentials:
    """The credentials `token` carries, if it has not expired at Unix time `now` (by
    default the real time; the server passes its engine's clock, which also closes
    connections whose token expires).

    Raises:
        Unauthenticated: the token is malformed, not signed with `secret`, expired,
            or lacks a claim; the reason says which.
    """
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            # Expiry is checked below, against `now`: one clock for admission and
            # for closing expired connections.
            options={"require": ["sub", "exp"], "verify_exp": False},
        )
    except jwt.InvalidTokenError as exc:
        raise Unauthenticated(f"invalid token: {exc}") from None
    expires = claims["exp"]
    if isinstance(expires, bool) or not isinstance(expires, int | float) or not isfinite(expires):
        raise Unauthenticated("invalid token: exp is not a time")
    if expires <= (time.time() if now is None else now):
        raise Unauthenticated("token expired")
    try:
        user = claims["sub"]
        name = claims.get("name", user)
        groups = claims.get("groups", [])
        documents = claims.get("doc", "**")
        admin = claims.get("admin", False)
        if not (
            isinstance(user, str)
            and isinstance(admin, bool)
            and isinstance(name, str)
            and isinstance(documents, str)
            and isinstance(groups, list)
            and all(isinstance(group, str) for group in groups)
        ):
            raise ValueError("claims of the wrong type")
        role = Role.parse(str(claims.get("role", "editor")))
    except (ValueError, TypeError) as exc:
        raise Unauthenticated(f"invalid token: {exc}") from None
    return Credentials(Identity(user, name, tuple(groups)), role, documents, float(expires), admin)


def token_of(scope: Scope) -> str | None:
    """The token a request carries: `?token=` first, then `Authorization: Bearer`."""
    raw: bytes = scope.get("query_string", b"")
    query = parse_qs(raw.decode("latin-1"))
    if query.get("token"):
        return query["token"][-1]
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for key, value in headers:
        if key.lower() == b"authorization":
            kind, _, credential = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and credential.strip():
                return credential.strip()
    return None


def credentials_for(secret: str | None, scope: Scope, now: float) -> Credentials | None:
    """Who a request is from at Unix time `now`; None in the open development mode
    (no secret).

    Raises:
        Unauthenticated: a secret is configured and the request has no good token.
    """
    if secret is None:
        return None
    token = token_of(scope)
    if token is None:
        raise Unauthenticated("no token: pass ?token= or Authorization: Bearer")
    return verify(secret, token, now)
