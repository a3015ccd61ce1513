"""The HTTP API of documents, under `/api/documents/<name>/...`.

    GET    /api/documents/<name>/presence             viewer   who is connected
    GET    /api/documents/<name>/locks                viewer   the current leases
    POST   /api/documents/<name>/locks                editor   body {"op": "acquire" | "renew"
                                                               | "release" | "forceRelease",
                                                               "section": [...], "fence", "ttl"}
    GET    /api/documents/<name>/grants               owner    the stored grants
    PUT    /api/documents/<name>/grants/<principal>   owner    body {"role": "editor"}
    DELETE /api/documents/<name>/grants/<principal>   owner    remove that grant
    GET    /api/documents/<name>/versions             viewer   the versions, oldest first
    POST   /api/documents/<name>/versions             editor   body {"label": "..."}: name
                                                               the document as it is now
    GET    /api/documents/<name>/versions/<id>        viewer   content at a version ("now":
                                                               the current content)
    GET    /api/documents/<name>/versions/<a>/diff/<b> viewer  what changed from a to b
                                                               (b may be "now"), with authors
    POST   /api/documents/<name>/versions/<id>/restore owner   make the document equal to
                                                               the version, as a new change
    GET    /api/documents/<name>/update               viewer   the document as one binary
                                                               Yjs update (export)
    POST   /api/documents/<name>/update               editor   body: a binary Yjs update,
                                                               merged in as a change (import)
    PUT    /api/documents/<name>/content              editor   body {"roots": {...}} as the
                                                               content JSON: those roots
                                                               replaced, as a change (import)

Imports are applied like any edit (broadcast, stored before the answer) and are
refused with 409 while the document has locks. An imported body is at most the
WebSocket frame limit (413 beyond); other JSON bodies at most `MAX_BODY`.

Credentials come as `Authorization: Bearer <token>` (or `?token=`); without a
secret configured (open development mode) every request is owner. Answers are
JSON; errors are `{"error": reason}` with 400 (a section over the lock limits too),
401, 403, 404, 405, 409 (lock held by someone else), 429 (the user or the document
holds as many locks as allowed) or 500 (storage failed; or a bug, logged with its
traceback, as `{"error": "internal error"}`). A document name in a path is read as
`collab_engine.names` says (strict UTF-8, NFC, no control characters: else 400);
JSON bodies are read by `collab_engine.json_text` (nested at most 100 deep: else
400). Locks taken over HTTP belong to no connection: they end
when they expire or are released. A grant
changed here takes effect on open connections at once.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from collab_engine import json_text
from collab_engine.content import fill
from collab_engine.engine import Engine
from collab_engine.errors import Forbidden, ProtocolError, StorageError, Unauthenticated
from collab_engine.history import NEEDED, VersionNotFound
from collab_engine.identity import Identity
from collab_engine.locks import LockConflict, LockNotHeld, TooManyLocks, parse_section
from collab_engine.names import document_name
from collab_engine.ownership import Elsewhere
from collab_engine.permissions import Grant, Role, refusal
from collab_engine.types import DocumentName

from .auth import credentials_for
from .settings import Settings
from .types import Receive, Scope, Send, path_of

log = logging.getLogger("server.endpoints")

DOCUMENTS = "/api/documents/"
OPEN_MODE = Identity("anonymous:http", "Anonymous (HTTP)", anonymous=True)
"""Who an HTTP request is from in the open development mode."""
MAX_BODY = 64 * 1024
"""The largest request body read, in bytes."""


class HTTPError(Exception):
    """An answer other than 200, with its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def documents_api(
    engine: Engine, settings: Settings, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve one request under `/api/documents/`.

    Raises:
        Elsewhere: another node of the cluster owns the document (nothing was sent):
            the app has that node serve the request.
    """
    try:
        status, body = await _route(engine, settings, scope, receive)
    except Binary as answer:
        await _respond_binary(send, answer.data)
        return
    except HTTPError as error:
        status, body = error.status, {"error": error.reason}
    except ProtocolError as error:  # a bad path or name, a body that is not JSON
        status, body = 400, {"error": error.reason}
    except Elsewhere:
        raise  # another node of the cluster owns the document: the app calls it
    except StorageError as error:
        status, body = 500, {"error": error.reason}
    except Exception:
        # A bug: report it (the traceback) and answer, rather than let the server
        # send an empty 500.
        log.exception("%s %s failed", scope.get("method"), scope.get("path"))
        status, body = 500, {"error": "internal error"}
    await respond(send, status, body)


_VERSIONS = re.compile(
    r"^(?P<name>.+)/versions(?:/(?P<id>\d+|now)(?:/(?P<action>restore|diff/(?P<to>\d+|now)))?)?$",
    re.DOTALL,  # a name with a control character reaches the name check, and a 400
)


async def _route(
    engine: Engine, settings: Settings, scope: Scope, receive: Receive
) -> tuple[int, dict[str, Any]]:
    rest = path_of(scope)[len(DOCUMENTS) :]
    method = "GET" if scope["method"] == "HEAD" else scope["method"]
    versions = _VERSIONS.match(rest)
    if versions is not None:
        return await _versions(engine, settings, scope, receive, method, versions)
    if rest.endswith(("/update", "/content")):
        return await _transfer(engine, settings, scope, receive, method, rest)
    allowed: tuple[str, ...]
    principal: str | None
    if rest.endswith("/presence"):
        name, needed, allowed = rest[: -len("/presence")], Role.VIEWER, ("GET",)
        principal = None
    elif rest.endswith("/locks"):
        name, principal = rest[: -len("/locks")], None
        needed = Role.VIEWER if method == "GET" else Role.EDITOR
        allowed = ("GET", "POST")
    elif rest.endswith("/grants"):
        name, needed, allowed = rest[: -len("/grants")], Role.OWNER, ("GET",)
        principal = None
    elif "/grants/" in rest:
        name, principal = rest.rsplit("/grants/", 1)
        needed, allowed = Role.OWNER, ("PUT", "DELETE")
    else:
        raise HTTPError(404, "not found")
    if method not in allowed:
        raise HTTPError(405, f"method not allowed: use {' or '.join(allowed)}")
    name = document_name(name, settings.max_name_length)
    identity, role = await _authorize(engine, settings, scope, name, needed)
    if rest.endswith("/locks"):
        async with engine.room(name) as room:
            if method == "GET":
                now, wall = room.clock(), room.wall()
                leases = [lease.to_json(now, wall) for lease in room.locks.leases]
                return 200, {"document": name, "locks": leases}
            body = await _read_json(receive)
            ttl = body.get("ttl")
            try:
                if ttl is not None and not isinstance(ttl, int | float):
                    raise ValueError("ttl must be a number of seconds")
                lease = room.lock(
                    str(body.get("op")),
                    parse_section(body.get("section", []), room.locks.limits),
                    identity=identity,
                    role=role,
                    fence=body.get("fence"),
                    ttl=ttl,
                )
            except ValueError as exc:
                raise HTTPError(400, str(exc)) from None
            except Forbidden as error:
                raise HTTPError(403, error.reason) from None
            except (LockConflict, LockNotHeld) as error:
                raise HTTPError(409, error.reason) from None
            except TooManyLocks as error:
                raise HTTPError(429, error.reason) from None
            if room.save_locks is not None:
                await room.save_locks()  # (a node of a cluster: kept before the answer)
            lock = None if lease is None else lease.to_json(room.clock(), room.wall())
            return 200, {"document": name, "lock": lock}
    if rest.endswith("/presence"):
        # A document nobody has open has nobody present: don't load it to say so.
        open_room = engine.rooms.get(DocumentName(name))
        if open_room is None and engine.ownership is not None:
            owner = await engine.ownership.owner(name)
            if owner is not None and owner.node != engine.ownership.node:
                raise Elsewhere(owner)
        people = [] if open_room is None else [info.to_json() for info in open_room.who()]
        return 200, {"document": name, "presence": people}
    if principal is None:
        grants = await engine.grants(name)
        return 200, {"document": name, "grants": [_grant_json(g) for g in grants]}
    if method == "DELETE":
        if not await engine.revoke(name, principal):
            raise HTTPError(404, f"{principal} has no grant on {name!r}")
        return 200, {"document": name, "revoked": principal}
    body = await _read_json(receive)
    try:
        grant = Grant(principal, Role.parse(str(body.get("role", ""))))
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None
    await engine.grant(name, grant)
    return 200, {"document": name, "grant": _grant_json(grant)}


async def _versions(
    engine: Engine,
    settings: Settings,
    scope: Scope,
    receive: Receive,
    method: str,
    match: re.Match[str],
) -> tuple[int, dict[str, Any]]:
    name, at, action, to = match["name"], match["id"], match["action"], match["to"]
    allowed: tuple[str, ...]
    if at is None:
        op, allowed = ("list" if method == "GET" else "create"), ("GET", "POST")
    elif action is None:
        op, allowed = "content", ("GET",)
    elif action == "restore":
        op, allowed = "restore", ("POST",)
    else:
        op, allowed = "diff", ("GET",)
    if method not in allowed:
        raise HTTPError(405, f"method not allowed: use {' or '.join(allowed)}")
    name = document_name(name, settings.max_name_length)
    if engine.store is None:
        raise HTTPError(404, "this server keeps no history (it has no store)")
    identity, _ = await _authorize(engine, settings, scope, name, NEEDED[op])
    history = engine.history
    version_id = None if at in (None, "now") else int(at)
    try:
        if op == "list":
            listed = await history.versions(name)
            return 200, {"document": name, "versions": [v.to_json() for v in listed]}
        if op == "create":
            label = (await _read_json(receive)).get("label")
            if label is not None and not isinstance(label, str):
                raise HTTPError(400, "label must be a string")
            version = await history.create(name, label=label, author=identity.user_id)
            return 200, {"document": name, "version": version.to_json()}
        if op == "content":
            return 200, await history.content(name, version_id)
        if version_id is None:
            raise HTTPError(400, f"{op} needs a version id, not 'now'")
        if op == "diff":
            return 200, await history.diff(name, version_id, None if to == "now" else int(to))
        version = await history.restore(name, version_id, author=identity.user_id)
        return 200, {"document": name, "version": version.to_json()}
    except VersionNotFound as error:
        raise HTTPError(404, str(error)) from None
    except ValueError as error:
        raise HTTPError(400, str(error)) from None


async def _transfer(
    engine: Engine, settings: Settings, scope: Scope, receive: Receive, method: str, rest: str
) -> tuple[int, dict[str, Any]]:
    name, what = rest.rsplit("/", 1)
    allowed = ("GET", "POST") if what == "update" else ("PUT",)
    if method not in allowed:
        raise HTTPError(405, f"method not allowed: use {' or '.join(allowed)}")
    name = document_name(name, settings.max_name_length)
    needed = Role.VIEWER if method == "GET" else Role.EDITOR
    identity, _ = await _authorize(engine, settings, scope, name, needed)
    if method == "GET":
        async with engine.room(name) as room:
            raise Binary(room.doc.get_update())
    update, roots = b"", dict[str, Any]()
    if what == "update":
        update = bytes(await read_body(receive, settings.max_frame_size))
    else:
        given = (await _read_json(receive, settings.max_frame_size)).get("roots")
        if not isinstance(given, dict):
            raise HTTPError(400, 'body must be {"roots": {...}}')
        roots = given
    async with engine.room(name) as room:
        if room.locks.leases:
            raise HTTPError(409, f"{name!r} has locks: release them before importing")
        try:
            if what == "update":
                room.apply(update, origin="collab-engine:import", author=identity.user_id)
            else:
                room.author = identity.user_id
                try:
                    fill(room.doc, roots)
                finally:
                    room.author = None
        except (ProtocolError, ValueError) as error:
            raise HTTPError(400, str(error)) from None
        await room.flush()
        return 200, {"document": name, "seq": room.stored_seq}


class Binary(Exception):
    """An answer of raw bytes (application/octet-stream) rather than JSON."""

    def __init__(self, data: bytes) -> None:
        super().__init__("binary answer")
        self.data = data


async def _authorize(
    engine: Engine, settings: Settings, scope: Scope, name: str, needed: Role
) -> tuple[Identity, Role]:
    try:
        credentials = credentials_for(settings.secret, scope, engine.clock.wall())
    except Unauthenticated as error:
        raise HTTPError(401, error.reason) from None
    if credentials is None:
        return OPEN_MODE, Role.OWNER
    role = await engine.role(name, credentials)
    if role is None or role < needed:
        raise HTTPError(403, refusal(credentials, name, await engine.grants(name), needed))
    return credentials.identity, role


def _grant_json(grant: Grant) -> dict[str, str]:
    return {"principal": grant.principal, "role": str(grant.role)}


async def read_body(receive: Receive, limit: int) -> bytearray:
    """The request's whole body.

    Raises:
        HTTPError: 413 over `limit` bytes; 400 the request ended early.
    """
    data = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise HTTPError(400, "request ended early")
        data += message.get("body", b"")
        if len(data) > limit:
            raise HTTPError(413, f"body over {limit} bytes")
        if not message.get("more_body", False):
            return data


async def _read_json(receive: Receive, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's body as a JSON object (none: `{}`).

    Raises:
        HTTPError: 413 over `limit` bytes; 400 not a JSON object, or nested deeper
            than `json_text.MAX_DEPTH`.
    """
    data = await read_body(receive, limit)
    try:
        value = json_text.parse(bytes(data) or b"{}")
    except ProtocolError as error:
        raise HTTPError(400, f"body is not JSON: {error.reason}") from None
    if not isinstance(value, dict):
        raise HTTPError(400, "body must be a JSON object")
    return value


async def _respond_binary(send: Send, data: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def respond(send: Send, status: int, body: dict[str, Any]) -> None:
    """Send `body` as a JSON response."""
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
