"""A TCP proxy the tests can cut: a network failure between one process and a service
(PostgreSQL, Redis), on 127.0.0.1, without touching the service itself.

    async with Proxy(5432) as proxy:        # listens on proxy.port, forwards to 5432
        ... connect through proxy.port ...
        proxy.hold()                          # what goes through waits in the proxy
        proxy.release()                       # ... and goes on
        proxy.cut()                           # every connection dropped, new ones refused
        proxy.restore()                       # new connections forwarded again
"""

from __future__ import annotations

import contextlib
import socket
from types import TracebackType

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup


class Proxy:
    """Forwards connections to 127.0.0.1:`target` from a port of its own."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.up = True
        self.flowing = anyio.Event()
        self.flowing.set()
        self.held: list[bytes] = []
        """What waits in the proxy, while it holds."""
        self._streams: set[SocketStream] = set()
        self._group: TaskGroup | None = None

    async def __aenter__(self) -> Proxy:
        self._listener = listener = await anyio.create_tcp_listener(
            local_host="127.0.0.1", local_port=0
        )
        self.port = listener.extra(SocketAttribute.local_port)
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(listener.serve, self._forward)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._group is not None
        self._group.cancel_scope.cancel()
        try:
            return await self._group.__aexit__(exc_type, exc, tb)
        finally:
            await self._listener.aclose()

    def hold(self) -> None:
        """Hold back what goes through, both ways, until `release`."""
        self.flowing = anyio.Event()

    def release(self) -> None:
        """Let what was held, and what comes, go on."""
        self.flowing.set()
        self.held.clear()

    def cut(self) -> None:
        """Drop every connection now and refuse new ones (they are closed at once)."""
        self.up = False
        for stream in list(self._streams):
            with contextlib.suppress(OSError):  # an abrupt cut, not a goodbye
                stream.extra(SocketAttribute.raw_socket).shutdown(socket.SHUT_RDWR)
        self._streams.clear()
        self.release()  # what was held went with its connection

    def restore(self) -> None:
        """Forward new connections again."""
        self.up = True

    async def _forward(self, client: SocketStream) -> None:
        async with client:
            if not self.up:
                return
            try:
                server = await anyio.connect_tcp("127.0.0.1", self.target)
            except OSError:
                return
            async with server:
                self._streams |= {client, server}
                try:
                    async with anyio.create_task_group() as group:
                        group.start_soon(self._pipe, client, server, group)
                        group.start_soon(self._pipe, server, client, group)
                finally:
                    self._streams -= {client, server}

    async def _pipe(self, source: SocketStream, sink: SocketStream, group: TaskGroup) -> None:
        try:
            async for chunk in source:
                if not self.flowing.is_set():
                    self.held.append(chunk)
                    await self.flowing.wait()
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            group.cancel_scope.cancel()
