"""Ownership: which node of a cluster serves a document, and the fence that keeps a
node that lost a document from storing anything of it.

Every node of a cluster accepts clients for every document, but each document has
one owner at a time: the node whose room holds it, decides what each message does
and appends to its log. The others relay their clients to the owner.

    Lease(document, node, epoch)     the document is `node`'s, for ownership `epoch`

The rules (`storage.ownership.SQLOwnership` keeps them in PostgreSQL, the cluster's
storage of record):

- A node has a lease of its own, renewed every third of its ttl; it lapses after a
  ttl without renewal, measured on the database's clock, so the nodes' clocks may
  disagree.
- A document has at most one owner. A node claims a document that has none, whose
  owner's lease lapsed, or whose owner released it; each move of ownership adds one
  to the document's epoch, so epochs only grow.
- A node whose own lease lapsed claims nothing until it has renewed it.
- The owner keeps the document's locks with its lease (`save_locks`) before it says
  a lock is granted: whoever takes the document over takes its locks too, and their
  fencing numbers go on growing.
- Every update an owner stores carries the epoch of its lease (`store.Entry.epoch`),
  and the store refuses, in the same transaction, the updates of a document whose
  epoch has moved on (`Deposed`). An acknowledgement follows a stored update: a node
  paused past its lease, whose documents moved while it slept, wakes unable to
  store, and so unable to acknowledge, anything of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import StorageError


class Deposed(StorageError):
    """This node no longer owns the document: another node claimed it (this node's
    lease lapsed) or it was given up. Nothing more of it is stored here; its clients
    are closed with 1012 and reconnect, to whichever node, which relays them to the
    new owner. Their unacknowledged updates were never stored, and they send them
    again on reconnecting."""

    close_code = 1012


@dataclass(frozen=True, slots=True)
class Lease:
    """Document `document` is `node`'s, for its ownership number `epoch`."""

    document: str
    node: str
    epoch: int


class Elsewhere(Deposed):
    """Another live node owns the document: this node relays its clients there
    (`cluster`), and refuses to serve it from a room of its own."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(f"document {lease.document!r} is served by node {lease.node!r}")
        self.lease = lease


@dataclass(frozen=True, slots=True)
class Node:
    """A node of the cluster as the ownership table knows it."""

    id: str
    started_at: float
    """Unix time of its first registration."""
    expires_at: float
    """Unix time (the database's clock) at which its lease lapses unless renewed."""
    alive: bool
    """Whether its lease had not lapsed when this was read."""


class Ownership(Protocol):
    """A node's view of the cluster's ownership table.

    Every method is one transaction. Raises `StorageError` (1011) when the table
    cannot be reached.
    """

    node: str
    """This node's id."""
    ttl: float
    """Seconds this node's lease lasts without renewal."""

    async def register(self) -> None:
        """Register this node (or renew its lease, lapsed or not)."""
        ...

    async def renew(self) -> bool:
        """Renew this node's lease. False: it had lapsed, and is registered anew; any
        document it owned may have moved meanwhile (see `held`)."""
        ...

    async def claim(self, document: str) -> Lease:
        """The document's lease: this node's (claimed now, or held already), or that of
        the live node that owns it. A claim that moves ownership adds one to the epoch.

        Raises:
            Deposed: this node's own lease has lapsed: it claims nothing until renewed.
        """
        ...

    async def owner(self, document: str) -> Lease | None:
        """The live owner's lease of `document`, if it has one."""
        ...

    async def held(self, leases: Sequence[Lease]) -> list[Lease]:
        """Those of `leases` still held: the same node at the same epoch."""
        ...

    async def release(self, lease: Lease) -> bool:
        """Give the document up, if `lease` is still current: the next claim, by any
        node, takes it without waiting for a lease to lapse. Whether it was."""
        ...

    async def save_locks(self, lease: Lease, locks: str) -> None:
        """Keep the document's locks (`locks.Locks.export`) for whoever takes it over.

        Raises:
            Deposed: `lease` is no longer current (nothing is kept).
        """
        ...

    async def locks(self, document: str) -> str | None:
        """The locks the document's last owner kept (None: none)."""
        ...

    async def deregister(self) -> None:
        """Give up every document of this node and remove it from the table."""
        ...

    async def nodes(self) -> list[Node]:
        """Every registered node, live or lapsed."""
        ...

    async def leases(self, node: str | None = None) -> list[Lease]:
        """The owners' leases (of `node` only, if given), by document."""
        ...
