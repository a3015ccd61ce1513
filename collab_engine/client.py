"""The client: a pycrdt document kept in sync with any y-websocket server, across
bad networks.

    async with connect("ws://127.0.0.1:1234", "notes/today", token=token) as session:
        await session.synced()
        with session.doc.transaction():
            session.doc.get("body", type=Text).insert(0, "Hello")
        await session.flushed()        # the server has stored it (ours acknowledges)

It speaks the y-websocket protocol, so it works against our server, the Node
y-websocket server and pycrdt's; our own messages (persisted acknowledgements,
locks, versions) are used when the server offers them.

**Connection.** One task owns the connection. When it breaks, the session goes
`offline` and reconnects by itself after an exponential backoff with jitter
(`Backoff`); a refusal that retrying cannot cure (4400, 4401, 4403, 1002, 1003,
1007, 1008, 1009) ends the session instead, `closed` with `Refused`. The state is
`session.state`: connecting, synced, offline or closed.

**Edits.** Every transaction on `session.doc` is sent as one update while the
connection is up. Offline, edits stay in the document; on reconnect the handshake
sends the server exactly what its state vector lacks (sync step 2 in answer to its
step 1), and updates queued before that are dropped, being in that step 2: nothing is
sent twice needlessly. The queue of updates waiting for the connection holds at most
`max_pending` updates; past that they are merged into one (memory stays bounded,
nothing is lost).

**Durability.** `flushed()` returns once the server has acknowledged as stored every
update this client has made: our server answers `request persisted` (sent at each
connection) with `persisted(n)`, the count of this connection's update messages
stored, and the handshake's step 2 covers whatever was sent on earlier connections.
A server that does not answer within `ack_timeout` seconds does not acknowledge:
`flushed()` then raises `NotSupported` rather than wait forever.

**Awareness.** `set_awareness(state)` sets this client's state (presence, cursor);
it is sent at each connection and renewed every 15 s (awareness states expire after
30 s). `session.awareness` holds everyone's states by client id, ours included.

Remote updates are applied to `session.doc` in a transaction of origin `REMOTE`:
observers see them as pycrdt events, like local ones.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode

import anyio
from anyio.abc import TaskGroup
from pycrdt import Doc, TransactionEvent, merge_updates
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from . import protocol
from .errors import ProtocolError
from .protocol import AwarenessEntry
from .types import ClientId

log = logging.getLogger("collab_engine.client")

REMOTE = "collab-engine:remote"
"""The origin of the transactions in which remote updates are applied."""

FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 4400, 4401, 4403})
"""Close codes after which reconnecting cannot help: the session ends with `Refused`."""

AWARENESS_RENEWAL = 15.0
"""Seconds between two renewals of our awareness state (it expires after 30 s)."""


class State(StrEnum):
    """Where a session's connection stands."""

    CONNECTING = "connecting"
    """Opening a connection, or connected and not yet synced."""
    SYNCED = "synced"
    """Connected, and the server's document has been received."""
    OFFLINE = "offline"
    """The connection broke; another is tried after the backoff delay."""
    CLOSED = "closed"
    """The session ended: closed by us, refused by the server, or given up."""


class ClientError(Exception):
    """Base of the client's errors."""


class Refused(ClientError):
    """The server closed the connection with a code that retrying cannot cure."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"refused by the server: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class GaveUp(ClientError):
    """`Backoff.attempts` connections failed in a row."""


class Closed(ClientError):
    """The session is closed."""


class NotSupported(ClientError):
    """The server does not offer this (acknowledgements, locks, versions)."""


class RequestFailed(ClientError):
    """The server answered a lock or version request with an error."""


class ServerError(ClientError):
    """The server sent what is not valid Yjs (an update that does not decode): the
    session ends rather than apply part of it or ask again forever."""


class ConnectionLost(ClientError):
    """The connection broke before the server answered a request."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before reconnecting: `initial` seconds, times `factor` per
    failed attempt, at most `maximum`; each delay is randomised down by up to
    `jitter` of itself (so that many clients do not reconnect at once)."""

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5
    attempts: int | None = None
    """Failed connections in a row after which the session gives up (None: never)."""

    def delay(self, attempt: int) -> float:
        """The delay before attempt number `attempt` (1 for the first retry)."""
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        return base * (1 - self.jitter * random.random())


@dataclass(slots=True)
class _Connection:
    """What one connection knows."""

    ws: ClientConnection
    handshaken: bool = False
    """Our step 2 (in answer to the server's step 1) is sent."""
    synced: bool = False
    """The server's step 2 (in answer to ours) is received."""
    sent: int = 0
    """Update messages (step 2 and update) sent on this connection."""
    acked: int = -1
    """The server's latest persisted count (-1: none yet)."""
    acknowledges: bool | None = None
    """Whether the server acknowledges (None: not known yet)."""
    wakeup: anyio.Event = field(default_factory=anyio.Event)


class Session:
    """One document synced with a server. Make one with `connect`."""

    def __init__(
        self,
        url: str,
        *,
        doc: Doc[Any],
        backoff: Backoff,
        ack_timeout: float,
        max_pending: int,
        websocket_options: dict[str, Any],
    ) -> None:
        self.url = url
        self.doc = doc
        self.backoff = backoff
        self.ack_timeout = ack_timeout
        self.max_pending = max_pending
        self.websocket_options = websocket_options
        self.state = State.CONNECTING
        self.error: ClientError | None = None
        """Why the session closed, when it was not closed by us."""
        self.awareness: dict[ClientId, dict[str, Any]] = {}
        """Everyone's awareness state by client id (ours under `doc.client_id`)."""
        self.denials: list[str] = []
        """The reasons of the server's "permission denied" messages, oldest first."""
        self.connections = 0
        """Connections opened so far (1 + reconnections)."""
        self.updates_sent = 0
        """Update messages (sync step 2 and update) sent so far, on every connection."""
        self._clocks: dict[ClientId, int] = {}
        self._local: dict[str, Any] | None = None
        self._pending: list[bytes] = []
        self._outbox: list[bytes] = []
        """The connection's frames other than updates: step 2 and requests (each
        awaited by its caller, so few)."""
        self._awareness_due = False
        self._closing = False
        self._fatal: ServerError | None = None
        self._acknowledges: bool | None = None
        """Whether the server acknowledges storage, as its latest connection told."""
        self._applying = False
        self._connection: _Connection | None = None
        self._changed = anyio.Event()
        self._replies: dict[int, Any] = {}
        self._next_id = 0
        self._task_group: TaskGroup | None = None
        self._subscription = doc.observe(self._on_transaction)

    @property
    def client_id(self) -> ClientId:
        """This client's id in the document and in awareness."""
        return ClientId(self.doc.client_id)

    # -- waiting -----------------------------------------------------------------------

    async def synced(self, timeout: float | None = None) -> None:
        """Wait until the session is synced with the server.

        Raises:
            Refused, GaveUp, Closed: the session ended.
            TimeoutError: not synced within `timeout` seconds.
        """
        await self._wait(lambda: self.state is State.SYNCED, timeout)

    async def flushed(self, timeout: float | None = None) -> None:
        """Wait until the server has stored every update made in `doc` so far (across
        reconnections).

        Raises:
            NotSupported: the server does not acknowledge storage (as its latest
                connection showed; offline, that is remembered).
            Refused, GaveUp, Closed: the session ended first.
            TimeoutError: not within `timeout` seconds.
        """

        def done() -> bool:
            if self._acknowledges is False:
                raise NotSupported(
                    f"the server sent no persisted acknowledgement within {self.ack_timeout} s"
                )
            connection = self._connection
            if connection is None or not connection.handshaken or self._pending:
                return False
            return connection.acked >= connection.sent

        await self._wait(done, timeout)

    async def _wait(self, condition: Callable[[], bool], timeout: float | None) -> None:
        with anyio.fail_after(timeout):
            while not condition():
                if self.state is State.CLOSED:
                    raise self.error or Closed("the session is closed")
                changed = self._changed
                await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _set_state(self, state: State) -> None:
        if self.state is not State.CLOSED:
            self.state = state
            log.debug("%s: %s", self.url, state)
        self._notify()

    # -- local edits -------------------------------------------------------------------

    def _on_transaction(self, event: TransactionEvent) -> None:
        # Runs inside pycrdt's commit: no raising, no awaiting.
        update = event.update
        if self._applying or update == b"\x00\x00" or self.state is State.CLOSED:
            return
        self._pending.append(update)
        if len(self._pending) > self.max_pending:
            self._pending = [merge_updates(*self._pending)]
        connection = self._connection
        if connection is not None:
            connection.wakeup.set()
        self._notify()

    # -- awareness ---------------------------------------------------------------------

    def set_awareness(self, state: dict[str, Any] | None) -> None:
        """Set this client's awareness state (None removes it), and send it."""
        self._local = None if state is None else dict(state)
        clock = self._clocks.get(self.client_id, 0) + 1
        self._clocks[self.client_id] = clock
        if state is None:
            self.awareness.pop(self.client_id, None)
        else:
            self.awareness[self.client_id] = dict(state)
        self._send_awareness()

    def update_awareness(self, **fields: Any) -> None:
        """Change some fields of this client's awareness state."""
        self.set_awareness({**(self._local or {}), **fields})

    def _send_awareness(self) -> None:
        # Only the latest state is sent: a burst of changes is one frame, however
        # slow the connection.
        self._awareness_due = True
        if self._connection is not None:
            self._connection.wakeup.set()

    def _awareness_frame(self) -> bytes:
        text = None if self._local is None else json.dumps(self._local)
        entry = AwarenessEntry(self.client_id, self._clocks.get(self.client_id, 0), text)
        return protocol.encode_awareness([entry])

    def _send_soon(self, connection: _Connection, frame: bytes) -> None:
        # Requests (locks, versions) go in order with the edits made before them: a
        # version holds every edit made before it was asked for.
        self._take_pending(connection)
        self._outbox.append(frame)
        connection.wakeup.set()

    def _take_pending(self, connection: _Connection) -> None:
        """Move the queued updates, merged, to the outbox (once the handshake is done:
        before, they are part of it)."""
        if connection.handshaken and self._pending:
            pending, self._pending = self._pending, []
            update = pending[0] if len(pending) == 1 else merge_updates(*pending)
            self._outbox.append(protocol.encode_sync_update(update))
            connection.sent += 1
            self.updates_sent += 1

    # -- locks and versions ------------------------------------------------------------

    async def lock(
        self,
        op: str,
        section: list[str | int],
        *,
        fence: int | None = None,
        ttl: float | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any] | None:
        """Acquire, renew, release or force-release (`op`) a lock on `section` (our
        server's locks); return the lease as the server describes it.

        Raises:
            RequestFailed: the server said no (held by someone else, no right, ...).
            NotSupported: no answer within `timeout` seconds.
            ConnectionLost: the connection broke first.
        """
        body: dict[str, Any] = {"op": op, "section": section}
        if fence is not None:
            body["fence"] = fence
        if ttl is not None:
            body["ttl"] = ttl
        reply = await self._request(protocol.encode_lock_request, body, timeout)
        lease: dict[str, Any] | None = reply.get("lock")
        return lease

    async def create_version(
        self, label: str | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Name a version holding every update this client has sent; return it."""
        reply = await self._request(
            protocol.encode_version_request, {"op": "create", "label": label}, timeout
        )
        version: dict[str, Any] = reply["version"]
        return version

    async def versions(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The document's versions, oldest first."""
        reply = await self._request(protocol.encode_version_request, {"op": "list"}, timeout)
        versions: list[dict[str, Any]] = reply["versions"]
        return versions

    async def restore(self, version: int, timeout: float = 60.0) -> dict[str, Any]:
        """Restore `version` (owner only); return the version the restore records."""
        reply = await self._request(
            protocol.encode_version_request, {"op": "restore", "version": version}, timeout
        )
        restored: dict[str, Any] = reply["version"]
        return restored

    async def _request(
        self, encode: Callable[[str], bytes], body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            await self.synced()
        connection = self._connection
        assert connection is not None
        self._next_id += 1
        request_id = self._next_id
        done = anyio.Event()
        self._replies[request_id] = done
        self._send_soon(connection, encode(json.dumps({"id": request_id, **body})))
        try:
            with anyio.move_on_after(timeout) as scope:
                while self._replies.get(request_id) is done:
                    if self._connection is not connection:
                        raise ConnectionLost("the connection broke before the answer")
                    changed = self._changed
                    await changed.wait()
            if scope.cancelled_caught:
                raise NotSupported(f"no answer within {timeout} s: does the server offer this?")
            reply: dict[str, Any] = self._replies[request_id]
        finally:
            self._replies.pop(request_id, None)
        if not reply.get("ok"):
            raise RequestFailed(str(reply.get("error")))
        return reply

    # -- the connection ----------------------------------------------------------------

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        failures = 0
        while True:
            self._set_state(State.CONNECTING)
            code, reason = 1006, ""
            try:
                async with websocket_connect(self.url, **self.websocket_options) as ws:
                    failures = 0
                    self.connections += 1
                    try:
                        await self._serve(ws)
                    except ConnectionClosed:
                        pass  # the close code says why
                    if self._fatal is not None:
                        await ws.close(1007, "invalid update")
                        self._end(self._fatal)
                        return
                code, reason = ws.close_code or 1006, ws.close_reason or ""
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            finally:
                self._connection = None
                for client_id in [c for c in self.awareness if c != self.client_id]:
                    del self.awareness[client_id]  # theirs are stale once we are gone
            if code in FATAL_CLOSE_CODES:
                self._end(Refused(code, reason))
                return
            failures += 1
            if self.backoff.attempts is not None and failures > self.backoff.attempts:
                self._end(GaveUp(f"{failures} connections failed in a row, last: {code} {reason}"))
                return
            self._set_state(State.OFFLINE)
            delay = self.backoff.delay(failures)
            log.info(
                "%s: connection ended (%s %s); retrying in %.2f s", self.url, code, reason, delay
            )
            await anyio.sleep(delay)

    def _end(self, error: ClientError) -> None:
        log.warning("%s: %s", self.url, error)
        self.error = error
        self.state = State.CLOSED
        self._notify()

    async def _serve(self, ws: ClientConnection) -> None:
        connection = _Connection(ws)
        self._outbox = []
        self._connection = connection
        await ws.send(protocol.encode_sync_step1(self.doc.get_state()))
        await ws.send(protocol.encode_request_persisted())
        if self._local is not None:
            self._clocks[self.client_id] = self._clocks.get(self.client_id, 0) + 1
            self._send_awareness()
        # The children end quietly when the connection closes (they catch it); the
        # reader's end ends them all.
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write, connection)
            tg.start_soon(self._renew, connection)
            tg.start_soon(self._expect_acks, connection)
            try:
                await self._read(connection)
            finally:
                tg.cancel_scope.cancel()

    async def _read(self, connection: _Connection) -> None:
        try:
            async for frame in connection.ws:
                if isinstance(frame, str):
                    continue
                try:
                    message = protocol.decode(frame)
                except ProtocolError as error:
                    log.warning("%s: ignoring a frame: %s", self.url, error.reason)
                    continue
                try:
                    self._receive(connection, message)
                except ServerError as error:
                    self._fatal = error  # ends this connection, and the session
                    return
                self._notify()
        except ConnectionClosed:
            pass

    def _receive(self, connection: _Connection, message: protocol.Message) -> None:
        match message:
            case protocol.SyncStep1(state_vector):
                # The handshake: what the server lacks, which includes every update
                # queued so far: those are not sent again.
                self._pending.clear()
                self._outbox.append(protocol.encode_sync_step2(self.doc.get_update(state_vector)))
                connection.sent += 1
                self.updates_sent += 1
                connection.handshaken = True
                connection.wakeup.set()
            case protocol.SyncStep2(update) | protocol.SyncUpdate(update):
                self._applying = True
                try:
                    with self.doc.transaction(origin=REMOTE):
                        self.doc.apply_update(update)
                except ValueError as exc:
                    raise ServerError(f"the server sent an invalid update: {exc}") from None
                finally:
                    self._applying = False
                if isinstance(message, protocol.SyncStep2):
                    connection.synced = True
                    self._set_state(State.SYNCED)
            case protocol.AwarenessUpdate(entries):
                for entry in entries:
                    if entry.client_id == self.client_id:
                        continue  # ours: we know it better (the server may echo it)
                    if entry.clock < self._clocks.get(entry.client_id, 0):
                        continue
                    self._clocks[entry.client_id] = entry.clock
                    if entry.state is None:
                        self.awareness.pop(entry.client_id, None)
                    else:
                        self.awareness[entry.client_id] = json.loads(entry.state)
            case protocol.QueryAwareness():
                self._send_awareness()
            case protocol.Persisted(count):
                connection.acked = count
                connection.acknowledges = self._acknowledges = True
            case protocol.LockReply(body) | protocol.VersionReply(body):
                reply = json.loads(body)
                if reply.get("id") in self._replies:
                    self._replies[reply["id"]] = reply
            case protocol.PermissionDenied(reason):
                log.warning("%s: permission denied: %s", self.url, reason)
                self.denials.append(reason)

    async def _write(self, connection: _Connection) -> None:
        try:
            while True:
                await connection.wakeup.wait()
                connection.wakeup = anyio.Event()
                self._take_pending(connection)
                while self._outbox:
                    await connection.ws.send(self._outbox.pop(0))
                if self._awareness_due:
                    self._awareness_due = False
                    await connection.ws.send(self._awareness_frame())
                self._notify()
        except ConnectionClosed:
            pass

    async def _renew(self, connection: _Connection) -> None:
        while True:
            await anyio.sleep(AWARENESS_RENEWAL)
            if self._local is not None:
                self._clocks[self.client_id] = self._clocks.get(self.client_id, 0) + 1
                self._send_awareness()

    async def _expect_acks(self, connection: _Connection) -> None:
        with anyio.move_on_after(self.ack_timeout):
            while connection.acknowledges is None:
                changed = self._changed
                await changed.wait()
            return
        connection.acknowledges = self._acknowledges = False
        self._notify()

    # -- lifecycle ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the session: remove our awareness state for the others, close the
        connection (1000), stop reconnecting. Unsent edits stay in `doc`. Closing
        twice is closing once."""
        if self._closing:
            return
        self._closing = True
        connection = self._connection
        if connection is not None and self._local is not None:
            self._local = None
            self._clocks[self.client_id] = self._clocks.get(self.client_id, 0) + 1
            with anyio.move_on_after(1):
                try:
                    await connection.ws.send(self._awareness_frame())
                except ConnectionClosed:
                    pass
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.error = None
        if connection is not None:
            with anyio.move_on_after(2):
                await connection.ws.close()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        self._notify()
        self.doc.unobserve(self._subscription)


@asynccontextmanager
async def connect(
    url: str,
    name: str,
    *,
    token: str | None = None,
    doc: Doc[Any] | None = None,
    backoff: Backoff = Backoff(),
    ack_timeout: float = 5.0,
    max_pending: int = 256,
    open_timeout: float = 10.0,
    ping_interval: float | None = 10.0,
    ping_timeout: float | None = 10.0,
    params: dict[str, str] | None = None,
) -> AsyncIterator[Session]:
    """A session syncing `doc` (a new one by default) with document `name` at the
    y-websocket server `url` (`ws://host:port`, or with a path prefix).

    `token` goes as the `?token=` parameter (what y-websocket's `params` sends);
    `params` adds others. Pings every `ping_interval` seconds tell a dead network
    from a quiet one within `ping_timeout` seconds more. The session starts
    connecting at once; `await session.synced()` waits for the document.

    Raises:
        ValueError: `url` is not a ws:// or wss:// URL.
    """
    query = {**(params or {}), **({"token": token} if token is not None else {})}
    # As y-websocket writes the room into the path: raw, but for what a path cannot
    # hold (servers that name rooms by the raw path must see the same name).
    path = quote(name, safe="/:@!$&'()*+,;=")
    full = f"{url.rstrip('/')}/{path}" + (f"?{urlencode(query)}" if query else "")
    if not full.startswith(("ws://", "wss://")):
        raise ValueError(f"not a WebSocket URL: {url!r}")
    session = Session(
        full,
        doc=doc if doc is not None else Doc(),
        backoff=backoff,
        ack_timeout=ack_timeout,
        max_pending=max_pending,
        websocket_options={
            "open_timeout": open_timeout,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "max_size": None,
        },
    )
    try:
        async with anyio.create_task_group() as tg:
            session._task_group = tg
            await tg.start(session._run)
            try:
                yield session
            finally:
                await session.aclose()
    except InvalidURI as exc:
        raise ValueError(str(exc)) from None
