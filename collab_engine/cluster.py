"""A node of a cluster: its clients of documents other nodes own are relayed there,
and the clients other nodes relay to it are served by its rooms.

Each document has one owner (`ownership`): the node whose room holds it and decides
what every message does. A client may connect to any node. When the engine says
another node owns the document (`Elsewhere`), the node the client is on (the edge)
becomes a relay: a `Remote` in place of the client's `Connection`, which sends the
client's frames to the owner over the bus and hands the owner's frames to the
client's outbox. On the owner, a relayed client is one more `Connection` of the
room, with a peer like any other: the one dispatch seam sees it as it sees a local
client, and every rule (permissions, locks, rollback of denied writes, awareness
stamping and limits, acknowledgements) holds for it unchanged.

    client ── edge ── bus (relay messages: `relay`) ── owner: Connection ── Room

Where a message can be lost (the bus reset a link: Redis restarted, a queue overflowed,
a stream was trimmed) or a node is gone (its lease lapsed), the clients relayed
through it are closed (1012) rather than left with a gap: they reconnect, to any node,
and resync by state vector. Acknowledged updates are stored; the others are resent
by their authors.

Requests other than a client's frames (the HTTP API, on a node that does not own the
document) go to the owner as calls (`call`, answered by `on_call` there).

Tasks: one per relayed client on the owner (it joins the room and waits for what a
frame must wait for: `Later`), and one per call it serves, owned by the cluster's task
group; none per message.
A frame is handed to the room as it arrives, unless the client's earlier frames are
still waiting: then it queues behind them, at most `backlog` frames (more closes
the client with 1013: it resyncs on reconnect).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from .bus import Bus
from .connection import Connection, Later
from .engine import Engine
from .errors import (
    CollabError,
    Forbidden,
    GoingAway,
    MessageTooBig,
    PeerTooSlow,
    ProtocolError,
    StorageError,
)
from .names import normalized
from .ownership import Deposed, Elsewhere, Lease
from .peer import Peer
from .permissions import Credentials, Role, refusal
from .relay import Answer, Call, Deliver, Frame, Leave, Open, Relayed, Shut, decode, encode

log = logging.getLogger("collab_engine.cluster")


class Closed(CollabError):
    """The owner closed a relayed client: its code and reason, passed on by the edge."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = code  # type: ignore[misc]  # (the owner's, whatever it was)


class Unanswered(StorageError):
    """A call to another node got no answer: the link to it was lost, or it took
    longer than the call's timeout."""


@dataclass(eq=False)
class _Waiting:
    """A call this node made, until its answer comes."""

    node: str
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: bytes | None = None
    error: StorageError | None = None


@dataclass(eq=False)
class _Served:
    """On the owner: a client relayed from `edge`, known there as `conn`."""

    edge: str
    conn: int
    peer: Peer | None = None
    connection: Connection | None = None
    backlog: deque[bytes] = field(default_factory=deque)
    waiting: Later | None = None
    left: bool = False
    wake: anyio.Event = field(default_factory=anyio.Event)


class Remote:
    """On the edge: a client whose document another node owns. Carried by a transport
    as a `Connection` is (`peer`, `receive`, `catch_up`)."""

    def __init__(
        self,
        cluster: Cluster,
        lease: Lease,
        peer: Peer,
        max_frame_size: int,
    ) -> None:
        self.cluster = cluster
        self.owner = lease.node
        self.document = lease.document
        self.peer = peer
        self.conn = int(peer.id)
        self.max_frame_size = max_frame_size

    def join(self) -> None:
        """Tell the owner the client is here: it answers with the opening of the sync."""
        peer = self.peer
        self.cluster.remotes[self.owner, self.conn] = self
        self.cluster.send(self.owner, Open(self.conn, self.document, peer.credentials, peer.label))

    def receive(self, data: bytes) -> Later | None:
        """Send one frame of the client to the owner (which decodes and decides)."""
        if self.peer.closed:
            return None
        if len(data) > self.max_frame_size:
            self.peer.close(
                MessageTooBig(f"frame of {len(data)} bytes is over {self.max_frame_size}")
            )
            return None
        self.cluster.send(self.owner, Frame(self.conn, data))
        return None

    async def catch_up(self, later: Later) -> None:
        """(Never needed: `receive` returns nothing to wait for; the owner waits.)"""
        await later.run()

    def leave(self) -> None:
        """The client is gone: the owner removes it from the room."""
        if self.cluster.remotes.pop((self.owner, self.conn), None) is self:
            self.cluster.send(self.owner, Leave(self.conn))


class Cluster:
    """This node's relays, both ways. Use as `async with Cluster(engine, ...)`, with
    the bus attached (`attach`) before it is entered; it is the bus's listener.

    Args:
        engine: this node's engine, with its ownership table.
        max_frame_size: the largest frame taken from a relayed client.
        backlog: frames of one relayed client that may wait behind one that must
            wait (more closes it with 1013).
        check_interval: seconds between two looks at the ownership table for nodes
            whose lease lapsed (their relayed clients are closed).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_frame_size: int = 16 * 1024 * 1024,
        backlog: int = 1024,
        check_interval: float | None = None,
    ) -> None:
        if engine.ownership is None:
            raise ValueError("a node of a cluster needs an engine with an ownership table")
        self.engine = engine
        self.ownership = engine.ownership
        self.node = self.ownership.node
        self.max_frame_size = max_frame_size
        self.backlog = backlog
        self.check_interval = check_interval or self.ownership.ttl / 3
        self.bus: Bus | None = None
        self.remotes: dict[tuple[str, int], Remote] = {}
        """On the edge: the clients relayed to other nodes, by (owner, conn)."""
        self._served: dict[tuple[str, int], _Served] = {}
        """On the owner: the clients other nodes relay here, by (edge, conn)."""
        self._ready: dict[str, dict[int, Peer]] = {}
        """Owner: per edge, the relayed peers with frames to send, flushed once a turn."""
        self._flushing = False
        self._task_group: TaskGroup | None = None
        self.on_call: Callable[[bytes], Awaitable[bytes]] | None = None
        """Serves a call from another node (the server's: an HTTP request of the API);
        None answers every call with an empty response."""
        self._calls: dict[int, _Waiting] = {}
        self._call_ids = itertools.count(1)

    def attach(self, bus: Bus) -> None:
        """The bus to the other nodes (built with this cluster as its listener)."""
        self.bus = bus

    async def __aenter__(self) -> Cluster:
        if self.bus is None:
            raise RuntimeError("attach the bus before entering the cluster")
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._watch_nodes)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        # Leaving: the other nodes drop what they relay to this one now, rather than
        # when they next look at the ownership table (a third of a lease's ttl).
        if self.bus is not None:
            self.bus.notify(json.dumps({"left": self.node}).encode())
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._task_group = None

    def close_remotes(self, error: CollabError) -> None:
        """Close every client this node relays to another (the server is stopping)."""
        for remote in list(self.remotes.values()):
            remote.peer.close(error)

    def send(self, node: str, message: Relayed) -> None:
        """Queue `message` for `node` on the bus."""
        assert self.bus is not None
        self.bus.send(node, encode(message))

    async def call(self, node: str, request: bytes, timeout: float = 30.0) -> bytes:
        """Have `node` serve `request` (see `on_call`) and return its response.

        Raises:
            Unanswered: the link to `node` was lost, or no answer came in `timeout`.
        """
        call_id = next(self._call_ids)
        waiting = self._calls[call_id] = _Waiting(node)
        try:
            self.send(node, Call(call_id, request))
            with anyio.move_on_after(timeout):
                await waiting.done.wait()
        finally:
            del self._calls[call_id]
        if waiting.answer is not None:
            return waiting.answer
        raise waiting.error or Unanswered(f"node {node!r} did not answer in {timeout:g} s")

    async def _answer(self, sender: str, call_id: int, request: bytes) -> None:
        response = b"" if self.on_call is None else await self.on_call(request)
        self.send(sender, Answer(call_id, response))

    def remote(self, elsewhere: Elsewhere, peer: Peer) -> Remote:
        """The relay of `peer`'s connection to the owner `elsewhere` names."""
        return Remote(self, elsewhere.lease, peer, self.max_frame_size)

    # -- the bus's listener ------------------------------------------------------------

    def received(self, sender: str, bodies: Sequence[bytes]) -> None:
        for body in bodies:
            try:
                message = decode(body)
            except ProtocolError as error:
                # Another node of the cluster sent it: a bug or a version skew, not a
                # client's doing. What it was about is lost: reset the link.
                log.error("node %r sent an undecodable relay message: %s", sender, error)
                self.reset(sender)
                return
            self._dispatch(sender, message)

    def reset(self, node: str) -> None:
        gone = Deposed(f"the link to node {node!r} was lost: reconnect")
        for (owner, _), remote in list(self.remotes.items()):
            if owner == node:
                remote.peer.close(gone)
        for (edge, _), served in list(self._served.items()):
            if edge == node:
                self._drop(served)
        for waiting in self._calls.values():
            if waiting.node == node and not waiting.done.is_set():
                waiting.error = Unanswered(f"the link to node {node!r} was lost")
                waiting.done.set()

    def noticed(self, sender: str, bodies: Sequence[bytes]) -> None:
        # {"grants": document}: its grants changed; {"left": node}: that node stopped.
        for body in bodies:
            try:
                notice = json.loads(body)
                if "left" in notice:
                    if str(notice["left"]) != self.node:
                        self.reset(str(notice["left"]))
                    continue
                name = str(notice["grants"])
            except (ValueError, KeyError, TypeError):
                log.error("node %r sent an unreadable notice: %r", sender, body[:100])
                continue
            self.engine.grants_changed(name)

    def notices_lost(self) -> None:
        self.engine.grants_changed(None)

    def announce_grants(self, name: str) -> None:
        """Tell every node (this one too) that the grants of `name` changed."""
        assert self.bus is not None
        self.bus.notify(json.dumps({"grants": normalized(name)}).encode())

    def _dispatch(self, sender: str, message: Relayed) -> None:
        match message:
            case Frame(conn, data):
                served = self._served.get((sender, conn))
                if served is not None:
                    self._take(served, data)
            case Deliver(conns, frames):
                for conn in conns:
                    remote = self.remotes.get((sender, conn))
                    if remote is not None:
                        for frame in frames:
                            remote.peer.send(frame)
            case Open(conn, document, credentials, label):
                self._open(sender, conn, document, credentials, label)
            case Leave(conn):
                served = self._served.get((sender, conn))
                if served is not None:
                    served.left = True
                    self._drop(served)
            case Shut(conn, code, reason):
                remote = self.remotes.get((sender, conn))
                if remote is not None:
                    remote.peer.close(Closed(code, reason))
            case Call(call_id, request):
                if self._task_group is not None:
                    self._task_group.start_soon(self._answer, sender, call_id, request)
            case Answer(call_id, response):
                waiting = self._calls.get(call_id)
                if waiting is not None and waiting.node == sender:
                    waiting.answer = response
                    waiting.done.set()

    # -- the owner's side --------------------------------------------------------------

    def _open(
        self, edge: str, conn: int, document: str, credentials: Credentials | None, label: str
    ) -> None:
        key = (edge, conn)
        if key in self._served:
            return
        if self._task_group is None or not self.engine.running:
            self.send(edge, Shut(conn, GoingAway.close_code, "server shutting down"))
            return
        served = self._served[key] = _Served(edge, conn)
        self._task_group.start_soon(self._serve, served, document, credentials, label)

    async def _serve(
        self, served: _Served, document: str, credentials: Credentials | None, label: str
    ) -> None:
        """One relayed client, from its opening to its end."""
        engine = self.engine
        config = engine.config
        label = f"{label} via {served.edge}"
        try:
            if credentials is None:
                peer = Peer(outbox_size=config.outbox_size, label=label)
            else:
                role: Role | None = await engine.role(document, credentials)
                if role is None:
                    raise Forbidden(refusal(credentials, document, await engine.grants(document)))
                peer = Peer(
                    outbox_size=config.outbox_size,
                    label=label,
                    identity=credentials.identity,
                    role=role,
                    expires_at=credentials.expires_at,
                    credentials=credentials,
                )
            async with engine.room(document) as room:
                served.peer = peer
                peer.on_close = served.wake.set
                connection = Connection(room, peer, self.max_frame_size)
                peer.deliver_to(lambda: self._queue(served))
                connection.join()
                served.connection = connection
                try:
                    await self._run(served, connection)
                finally:
                    connection.leave()
                    served.connection = None
        except CollabError as error:
            if served.peer is not None and served.peer.error is None:
                served.peer.close(error)
            if served.peer is None:
                self._shut(served, error)
        finally:
            self._served.pop((served.edge, served.conn), None)
            ended = served.peer
            if ended is not None and ended.error is not None and not served.left:
                self._shut(served, ended.error)

    async def _run(self, served: _Served, connection: Connection) -> None:
        peer = connection.peer
        while not peer.closed and not served.left:
            if served.waiting is not None:
                later, served.waiting = served.waiting, None
                await connection.catch_up(later)
            while served.backlog and served.waiting is None and not peer.closed:
                served.waiting = connection.receive(served.backlog.popleft())
                if served.waiting is not None:
                    break
            if served.waiting is None and not peer.closed and not served.left:
                await served.wake.wait()
                served.wake = anyio.Event()
                peer.on_close = served.wake.set

    def _take(self, served: _Served, data: bytes) -> None:
        connection = served.connection
        if connection is not None and served.waiting is None and not served.backlog:
            # The common case: straight to the room, as the wire does.
            served.waiting = connection.receive(data)
            if served.waiting is not None:
                served.wake.set()
            return
        if len(served.backlog) >= self.backlog:
            error = PeerTooSlow(f"more than {self.backlog} relayed frames waiting")
            if served.peer is not None:
                served.peer.close(error)
            return
        served.backlog.append(data)
        served.wake.set()

    def _drop(self, served: _Served) -> None:
        # The client is gone, or its edge is: leave the room now (its awareness
        # removed for everyone, its locks kept for their grace).
        served.left = True
        if served.peer is not None:
            served.peer.close()
        served.wake.set()

    def _shut(self, served: _Served, error: CollabError) -> None:
        self.send(served.edge, Shut(served.conn, error.close_code, error.reason))

    def _queue(self, served: _Served) -> None:
        # A relayed peer's outbox stopped being empty: its frames go to its edge at
        # the end of this turn, in one message per run of frames shared by clients.
        peer = served.peer
        if peer is None:
            return
        self._ready.setdefault(served.edge, {})[served.conn] = peer
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        ready, self._ready = self._ready, {}
        for edge, peers in ready.items():
            runs: dict[tuple[bytes, ...], list[int]] = {}
            for conn, peer in peers.items():
                if not peer.closed:
                    runs.setdefault(tuple(peer.take()), []).append(conn)
            for frames, conns in runs.items():
                if frames:
                    self.send(edge, Deliver(tuple(conns), frames))

    # -- liveness ----------------------------------------------------------------------

    async def _watch_nodes(self) -> None:
        # A node whose lease lapsed is gone (or cut off): the clients it relayed here
        # leave their rooms, and the clients relayed to it from here are closed to
        # reconnect, so that the documents it owned can move.
        while True:
            await self.engine.clock.sleep(self.check_interval)
            if not self.remotes and not self._served:
                continue
            try:
                alive = {node.id for node in await self.ownership.nodes() if node.alive}
            except CollabError as error:
                log.warning("cannot read the cluster's nodes: %s", error.reason)
                continue
            for node in {owner for owner, _ in self.remotes} | {e for e, _ in self._served}:
                if node not in alive:
                    log.warning("node %r is gone: closing what was relayed through it", node)
                    self.reset(node)
