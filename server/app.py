"""The ASGI application and the way hypercorn serves it.

Routes: a WebSocket on any path is a y-websocket connection to the document named
by that path; `GET /healthz` answers 200 with a small JSON status;
`GET /api/documents/<name>/presence` lists who is connected to a document. The engine lives
in the ASGI lifespan, so it starts before the first connection and drains after
the last: every accepted update is written before the lifespan ends. The store is
opened by whoever runs the app (`run`, or a test) before it starts and closed
after it stops.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import socket
from contextlib import AsyncExitStack
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskStatus
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from hypercorn.protocol import ws_stream
from sqlalchemy.engine import make_url
from wsproto.extensions import PerMessageDeflate

from collab_engine.clock import SYSTEM, Clock
from collab_engine.cluster import Cluster, Unanswered
from collab_engine.engine import Engine
from collab_engine.errors import GoingAway, StorageError
from collab_engine.journal import describe_error
from collab_engine.ownership import Elsewhere
from collab_engine.store import Store
from storage import SQLStore
from storage.ownership import SQLOwnership
from storage.redis import RedisBus

from . import wire
from .calls import encode_request, replay, send_answer, serve_call
from .endpoints import DOCUMENTS, HTTPError, documents_api, read_body, respond
from .settings import Settings
from .types import Receive, Scope, Send
from .websocket import serve_websocket

log = logging.getLogger("server")


class App:
    """The collab-engine ASGI application.

    `app.engine` is the engine the server runs on: the embedding API of the same
    process (open a room, change its document, and connected clients see it).
    `store` is where its documents are kept (None: in memory only); the app uses it
    and does not close it. `clock` is the engine's (tests pass a manual one).
    """

    def __init__(
        self, settings: Settings | None = None, store: Store | None = None, *, clock: Clock = SYSTEM
    ) -> None:
        self.settings = settings = settings or Settings()
        self.cluster: Cluster | None = None
        """This node's relays, when it is a node of a cluster (`settings.redis_url`)."""
        self.bus: RedisBus | None = None
        if settings.redis_url is None:
            self.engine = Engine(settings.engine, store, clock=clock)
        else:
            if not isinstance(store, SQLStore) or store.engine.dialect.name != "postgresql":
                raise ValueError("a node of a cluster stores its documents in PostgreSQL")
            node = settings.node_id or default_node_id()
            ownership = SQLOwnership(store.engine, node, settings.lease_ttl)
            self.engine = Engine(settings.engine, store, clock=clock, ownership=ownership)
            self.cluster = Cluster(
                self.engine,
                max_frame_size=settings.max_frame_size,
                backlog=settings.relay_backlog,
            )
            self.bus = RedisBus(
                settings.redis_url,
                prefix=settings.cluster_prefix,
                node=node,
                listener=self.cluster,
                clock=clock,
                # Unhealthy soon enough for the lease: see `collab_engine.tenure`.
                health_timeout=min(3.0, settings.lease_ttl / 3),
                max_pending_bytes=settings.bus_queue_size,
                stream_maxlen=settings.bus_stream_length,
            )
            self.cluster.attach(self.bus)
            self.cluster.on_call = partial(serve_call, serve=self._documents_here)
            bus = self.bus
            assert self.engine.tenure is not None
            self.engine.tenure.gate = lambda: bus.healthy
            self.engine.on_grants = self.cluster.announce_grants
        self.started = anyio.Event()
        """Set once the engine runs (the ASGI lifespan has started)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await serve_websocket(self.engine, self.settings, scope, receive, send, self.cluster)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with AsyncExitStack() as stack:
            # Exited in reverse: the engine first (its peers closed, everything written,
            # its documents given up), then the relays, then the bus that carried them.
            if self.bus is not None and self.cluster is not None:
                await stack.enter_async_context(self.bus)
                await stack.enter_async_context(self.cluster)
            await stack.enter_async_context(self.engine)
            await send({"type": "lifespan.startup.complete"})
            self.started.set()
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith(DOCUMENTS):
            if self.cluster is None:
                await documents_api(self.engine, self.settings, scope, receive, send)
            else:
                await self._documents_in_cluster(self.cluster, scope, receive, send)
        elif path == "/healthz" and scope["method"] in ("GET", "HEAD"):
            rooms = self.engine.rooms
            status: dict[str, object] = {
                "status": "ok",
                "rooms": len(rooms),
                "peers": sum(len(room.peers) for room in rooms.values()),
            }
            ownership = self.engine.ownership
            if ownership is not None and self.cluster is not None:
                status["node"] = ownership.node
                status["relayed"] = len(self.cluster.remotes)
                try:
                    status["owns"] = [
                        lease.document for lease in await ownership.leases(ownership.node)
                    ]
                except StorageError as error:
                    status["status"] = "degraded"
                    status["error"] = error.reason
            await respond(send, 200, status)
        else:
            await respond(send, 404, {"error": "not found"})

    async def _documents_in_cluster(
        self, cluster: Cluster, scope: Scope, receive: Receive, send: Send
    ) -> None:
        # The body is read first: should another node own the document, the request
        # goes there whole (see `server.calls`).
        try:
            body = bytes(await read_body(receive, self.settings.max_frame_size))
        except HTTPError as error:
            await respond(send, error.status, {"error": error.reason})
            return
        try:
            await documents_api(self.engine, self.settings, scope, replay(body), send)
        except Elsewhere as elsewhere:
            try:
                answer = await cluster.call(elsewhere.lease.node, encode_request(scope, body))
            except Unanswered as error:
                await respond(send, 503, {"error": f"{error.reason}: try again"})
                return
            await send_answer(answer, send)

    async def _documents_here(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A request another node sent on: served here, or refused if the document
        # moved on meanwhile (the client tries again, and the new owner serves it).
        try:
            await documents_api(self.engine, self.settings, scope, receive, send)
        except Elsewhere as elsewhere:
            await respond(send, 503, {"error": f"{elsewhere.reason}: try again"})


async def open_store(settings: Settings) -> Store | None:
    """The store `settings.database_url` names, schema brought up to date (None: no URL).

    Raises:
        StorageError: the database cannot be opened or migrated; the reason says why.
    """
    if settings.database_url is None:
        return None
    try:
        return await SQLStore.connect(settings.database_url)
    except Exception as exc:
        raise StorageError(
            f"cannot open the database {_safe_url(settings.database_url)}: {describe_error(exc)}"
        ) from exc


def _safe_url(url: str) -> str:
    # Never print a password that came in a URL.
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as the scheme only
        return url.split(":", 1)[0] + "://..."


def default_node_id() -> str:
    """A node id unique enough for a cluster: host name, process id, a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class CannotListen(Exception):
    """The server's address cannot be listened on (in use, not this machine's, ...);
    the message says which address and why, in one line."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0 picks a free one).

    Raises:
        CannotListen: the address is in use, or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        why = (exc.strerror or str(exc)).lower()
        raise CannotListen(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


def hypercorn_config(settings: Settings, fd: int) -> Config:
    """The hypercorn configuration that serves on listening socket `fd` and enforces
    `settings` at the transport."""
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.websocket_max_message_size = settings.max_frame_size
    config.websocket_ping_interval = None if settings.wire_pings else settings.ping_interval
    config.graceful_timeout = settings.graceful_timeout
    config.accesslog = None
    # A Logger instance is used as is: hypercorn adds no handler of its own to it.
    config.errorlog = logging.getLogger("hypercorn.error")
    _offer_compression(settings.websocket_compression)
    return config


class _DeclinedDeflate(PerMessageDeflate):
    """permessage-deflate that declines every offer: frames go uncompressed."""

    def accept(self, offer: str) -> None:
        return None


def _offer_compression(enabled: bool) -> None:
    # hypercorn has no option for it: its handshake builds `PerMessageDeflate()` from
    # its module's global name, which is swapped here (process-wide, as hypercorn
    # serves one app per process).
    vars(ws_stream)["PerMessageDeflate"] = PerMessageDeflate if enabled else _DeclinedDeflate


async def serve(
    app: App,
    *,
    shutdown: anyio.Event,
    sock: socket.socket | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` with hypercorn until `shutdown` is set; report the bound port.

    Serves on `sock`, a listening socket (`bind`), which it takes over; without one,
    binds the settings' host and port. On shutdown, every peer is closed with 1001
    first, so that hypercorn's graceful wait does not wait on open WebSockets.

    Raises:
        CannotListen: without `sock`, the address cannot be listened on.
    """
    settings = app.settings
    if settings.wire:
        problem = wire.check()
        if problem is not None:
            log.warning("WebSockets are served through ASGI only: %s", problem)
            settings = app.settings = replace(settings, wire=False)
    log.info(
        "WebSocket frames are carried %s",
        "on the wire (below ASGI) where it can, through ASGI elsewhere"
        if settings.wire
        else "through ASGI",
    )
    if sock is None:
        sock = bind(settings.host, settings.port)
    port: int = sock.getsockname()[1]

    async def trigger() -> None:
        await shutdown.wait()
        app.engine.close_peers()
        if app.cluster is not None:
            app.cluster.close_remotes(GoingAway("server shutting down"))

    # hypercorn takes the file descriptor over and closes it when it stops.
    config = hypercorn_config(settings, sock.detach())
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(hypercorn_serve, app, config, shutdown_trigger=trigger))  # type: ignore[arg-type]
        # Report only once the engine runs: a caller may use `app.engine` at once.
        await app.started.wait()
        task_status.started(port)


def _drop_cancelled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # At shutdown hypercorn cancels the tasks of recently closed WebSockets (their ping
    # loop sleeps a full interval), and asyncio reports each as an error with a
    # traceback. A cancellation is not an error: report everything else as usual.
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


GC_THRESHOLD = (10_000, 10, 1)
"""The collector's thresholds while serving (Python's default: 700, 10, 10)."""


def _tune_collector() -> None:
    # A full collection scans every tracked object: with hundreds of clients each
    # pause makes an edit late for everyone, and was the fan-out benchmark's p99. The
    # startup heap (modules, SQLAlchemy, hypercorn: a large share of the objects)
    # lives as long as the process: freeze it out of every scan. Most of what a
    # message allocates dies by reference counting, not collection: collect the young
    # generation less often, and so promote (and later scan) fewer objects.
    #
    # Each closed connection still leaves hypercorn's objects for it (its TCPServer
    # and protocol hold each other) in a cycle. A full pass is considered at every
    # middle-generation pass (threshold 1: about Python's default rhythm, given the
    # larger young generation) and runs only once a quarter of the old generation is
    # new since the last (Python's own rule): so closed connections are freed once
    # they are a quarter of the heap, not left to grow it, and a steady room set is
    # not scanned again and again. (The measurements behind these settings are in
    # benchmarks/results/notes/2026-12-07-code-comments.md.)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


async def run(settings: Settings) -> None:
    """Open the store, serve until SIGINT or SIGTERM, write everything accepted, and
    close the store; print the address once listening.

    Raises:
        CannotListen: the address cannot be listened on; nothing was opened.
        StorageError: the database cannot be opened.
    """
    asyncio.get_running_loop().set_exception_handler(_drop_cancelled)
    # The socket first: a port in use must not leave a new, empty database behind.
    sock = bind(settings.host, settings.port)
    try:
        store = await open_store(settings)
    except BaseException:
        sock.close()
        raise
    if settings.secret is None:
        log.warning(
            "OPEN DEVELOPMENT MODE: no secret is configured (--secret or COLLAB_SECRET), "
            "so nobody is authenticated and every client may read, write and administer "
            "every document. Listening on %s: do not expose this server.",
            settings.host,
        )
    if settings.database_url is not None:
        log.info("documents are stored in %s", _safe_url(settings.database_url))
    else:
        log.warning("no database: documents are kept in memory only and lost at exit")
    try:
        app = App(settings, store)
        shutdown = anyio.Event()
        async with anyio.create_task_group() as tg:
            port = await tg.start(partial(serve, app, shutdown=shutdown, sock=sock))
            _tune_collector()
            print(f"collab-engine listening on ws://{settings.host}:{port}", flush=True)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    shutdown.set()
                    break
    finally:
        if store is not None:
            await store.aclose()
