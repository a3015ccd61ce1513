"""The ASGI vocabulary the server is written in, and how a request's path is read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

from collab_engine.names import url_path

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]


def path_of(scope: Scope) -> str:
    """The request's path as text: `raw_path` percent-decoded as strict UTF-8 where the
    server gives it (hypercorn's `path` replaces bad bytes with U+FFFD, which would make
    `%FF` and `%EF%BF%BD` one name), else `path`.

    Raises:
        InvalidDocumentName: the path is not UTF-8 once percent-decoded (4400, or 400).
    """
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        path: str = scope["path"]
        return path
    return url_path(raw.partition(b"?")[0])  # (raw_path has no query, in ASGI's words)
