"""An HTTP request of the documents API, served by the node that owns the document.

On a node of a cluster, a request about a document another node owns (a lock taken
over HTTP, an import, a version made or restored, who is present) cannot be served
from a room of this node. It goes to the owner as a call over the bus
(`Cluster.call`), which serves it as if it had come to it, and the response comes
back as the answer: the client sees one node answer for the whole cluster.

    request  := varBytes(JSON {method, path, query, authorization}) body
    response := varUint(status) varString(content type) body

The app reads the body whole before the request is served (`endpoints.read_body`:
at most the frame limit, 413 beyond), so that it can still be sent on once the owner
is known.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from collab_engine.protocol import Decoder, encode_var_string, encode_var_uint

from .types import Receive, Scope, Send

Serve = Callable[[Scope, Receive, Send], Awaitable[None]]


def replay(body: bytes) -> Receive:
    """An ASGI `receive` that gives `body` once, then a disconnect."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def encode_request(scope: Scope, body: bytes) -> bytes:
    """The call for the request of `scope` with `body`."""
    headers = dict(scope.get("headers", []))
    head = {
        "method": scope["method"],
        "path": scope.get("raw_path", scope["path"].encode()).decode("latin-1"),
        "query": scope.get("query_string", b"").decode("latin-1"),
        "authorization": headers.get(b"authorization", b"").decode("latin-1"),
    }
    return encode_var_string(json.dumps(head)) + body


async def serve_call(request: bytes, serve: Serve) -> bytes:
    """Serve the call `request` with `serve` (the app's documents API) here; its
    response, as an answer."""
    decoder = Decoder(request)
    head = json.loads(decoder.var_string())
    body = request[decoder.pos :]
    raw_path = head["path"].encode("latin-1")
    headers = [(b"authorization", head["authorization"].encode("latin-1"))]
    scope: Scope = {
        "type": "http",
        "method": head["method"],
        "path": raw_path.decode("utf-8", errors="replace"),
        "raw_path": raw_path,
        "query_string": head["query"].encode("latin-1"),
        "headers": [h for h in headers if h[1]],
    }
    status, content_type, parts = 500, "application/json", []

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status, content_type
        if message["type"] == "http.response.start":
            status = message["status"]
            for name, value in message.get("headers", []):
                if name == b"content-type":
                    content_type = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await serve(scope, replay(body), send)
    return encode_var_uint(status) + encode_var_string(content_type) + b"".join(parts)


async def send_answer(answer: bytes, send: Send) -> None:
    """Send the owner's response `answer` to the client, as it is."""
    decoder = Decoder(answer)
    status = decoder.var_uint()
    content_type = decoder.var_string()
    body = answer[decoder.pos :]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
