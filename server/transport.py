"""What carries one accepted WebSocket's frames: the interface of the two paths.

    ASGITransport (server.asgi)   portable: frames through ASGI's receive and send
    WireTransport (server.wire)   fast: frames read from and written to the socket,
                                  below ASGI, where hypercorn serves it over HTTP/1.1

`serve_websocket` picks the wire where it can serve the connection and ASGI
elsewhere; everything else about a connection (admission, the room, errors, the
close frame) is the same on both. A new transport, or a client relayed from another
node, is one more implementation of this.
"""

from __future__ import annotations

from typing import Protocol

from collab_engine.connection import Carried


class Transport(Protocol):
    """Carries one connection's frames both ways."""

    name: str
    """`wire` or `asgi`: which path serves (for logs and tests)."""

    async def carry(self, connection: Carried) -> None:
        """Hand every binary frame the client sends to `connection.receive` (awaiting
        what it returns before reading on) and send the peer's outbox, in order, until
        the peer is closed: by the client leaving, a bad frame, the room or the engine.
        Return then, with nothing of it left running."""
        ...

    def release(self) -> None:
        """Give the socket back to the ASGI server, for the closing handshake (or a
        refusal before anything was carried)."""
        ...

    async def finish(self, left: bool) -> None:
        """The connection is over; `left` says whether the client ended it. Return
        once the ASGI server knows as much as the transport does."""
        ...
