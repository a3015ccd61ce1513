"""The server's settings: one frozen value, built once from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field

from collab_engine.engine import EngineConfig

MAX_BUFFERED = 8 * 1024 * 1024
"""The default of `Settings.max_buffered`."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the server listens and the limits it enforces at the edge."""

    host: str = "127.0.0.1"
    port: int = 1234
    max_frame_size: int = 16 * 1024 * 1024
    """Largest WebSocket message accepted, in bytes; larger closes with 1009."""
    max_name_length: int = 512
    """Longest document name accepted, in UTF-8 bytes; longer closes with 4400."""
    ping_interval: float | None = 20.0
    """Seconds between WebSocket pings that keep idle connections (and proxies) alive."""
    graceful_timeout: float = 1.0
    """Seconds hypercorn gives connections to finish on shutdown. Peers are closed
    with 1001 before it starts; what may remain is hypercorn's ping task of a recently
    closed WebSocket (ASGI path), which sleeps a full ping interval: no need to wait."""
    websocket_compression: bool = False
    """Accept permessage-deflate when a client offers it (browsers always do). Off by
    default, as in Node's `ws`: compressing costs CPU for every frame and every
    receiver (hypercorn compresses per connection), and y-websocket frames are small."""
    wire: bool = True
    """Read and write frames at each connection's socket (`server.wire`) where
    hypercorn serves it over HTTP/1.1 without compression; False reads and sends every
    frame through ASGI, as any ASGI server takes it."""
    max_buffered: int = MAX_BUFFERED
    """Bytes sent to a connection and not yet read by its client above which the
    connection is closed with 1013 when more frames come (the wire's slow-reader
    limit; the ASGI path bounds the outbox in frames instead)."""
    secret: str | None = None
    """The HS256 key tokens are signed with; None runs the open development mode
    (no authentication: every connection is anonymous and owner)."""
    database_url: str | None = None
    """Where documents are stored, as a SQLAlchemy async URL (`sqlite+aiosqlite:///PATH`,
    `postgresql+asyncpg://...`); None keeps them in memory only. The command line
    defaults to the SQLite file `./collab.db`."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    redis_url: str | None = None
    """Make this process a node of a cluster whose nodes share this Redis (and the
    PostgreSQL database of `database_url`); None: one process alone."""
    node_id: str | None = None
    """This node's id in the cluster, unique among its nodes (None: made up from the
    host name, the process id and a random part)."""
    cluster_prefix: str = "collab"
    """The prefix of every Redis key of the cluster: two clusters on one Redis differ."""
    lease_ttl: float = 5.0
    """Seconds a node's lease lasts without renewal: how long the documents of a node
    that died wait before another node may claim them."""
    relay_backlog: int = 1024
    """Frames of one relayed client that may wait on the owner behind one that must
    wait (the journal full, a version being stored); more closes it with 1013."""
    bus_queue_size: int = 64 * 1024 * 1024
    """Bytes that may wait to be sent to one other node; beyond, they are dropped and
    the link reset (the clients relayed over it reconnect and resync)."""
    bus_stream_length: int = 100_000
    """Entries a node's inbox keeps in Redis; a node further behind loses the oldest
    and resets the links they came on."""

    @property
    def wire_pings(self) -> bool:
        """Whether the wire sends the keepalive pings (a timer per connection) rather
        than hypercorn (a task per connection, which outlives the connection by up to
        an interval): where the wire serves every connection it can, that is, with
        compression off. The few connections left on ASGI then get no WebSocket pings;
        the server's own awareness entry, renewed in every room every 15 s, still
        gives them traffic."""
        return self.wire and not self.websocket_compression
