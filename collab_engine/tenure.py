"""A node's tenure: how an engine of a cluster holds the documents it owns.

The rules of ownership are in `ownership`; this is the engine's side of them:

- `claim` a document before loading it (`Elsewhere` names another owner);
- `adopt` the room loaded: it is fenced with the lease's epoch, takes over the
  locks the previous owner kept, and keeps its own for the next one;
- `hold` the node's lease for as long as the engine runs: renewed three times a
  ttl. A node that cannot renew (the database is unreachable, or `gate` says the
  node is cut off from the others) pauses the journal before its lease can lapse:
  another node may claim its documents after that, and what this one would store
  then could be refused (the fence refuses it anyway; pausing means nothing is even
  tried, and nothing acknowledged). Its rooms go on serving their clients. Once it
  renews again, it drops the documents it lost (their clients reconnect to the new
  owner, 1012) and commits what waited for the others;
- give a document up once its room is unloaded (nobody used it here for the unload
  grace, and everything it took is stored): the next node a client of it reaches
  claims it, so documents follow their users instead of staying where they were
  first opened; a claim of the same document here waits for the release to end;
- `leave` the cluster when the engine stops: every document given up at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from .clock import Clock
from .errors import StorageError
from .journal import Journal
from .ownership import Deposed, Elsewhere, Lease, Ownership
from .room import Room
from .types import DocumentName

log = logging.getLogger("collab_engine.tenure")


class Tenure:
    """The documents an engine owns, and the lease it holds them by.

    Args:
        ownership: the cluster's ownership table, as this node sees it.
        clock: the engine's clock (the renewal's rhythm).
        journal: the engine's journal (paused while the lease is in doubt).
        rooms: the engine's loaded rooms (the lost ones are closed).
    """

    def __init__(
        self,
        ownership: Ownership,
        clock: Clock,
        journal: Journal | None,
        rooms: Callable[[], dict[DocumentName, Room]],
    ) -> None:
        self.ownership = ownership
        self.node = ownership.node
        self.clock = clock
        self.journal = journal
        self.rooms = rooms
        self.gate: Callable[[], bool] = lambda: True
        """Whether this node may renew its lease now (a node of a cluster renews only
        while it can reach the other nodes: see `cluster`)."""
        self.leases: dict[DocumentName, Lease] = {}
        """The leases of the documents this node's rooms hold."""
        # At most one entry per document: the releases wait for `release_unloaded`.
        self._releasing: dict[DocumentName, tuple[Lease, anyio.Event]] = {}
        self._wakeup = anyio.Event()

    async def claim(self, name: DocumentName) -> Lease:
        """This node's lease of document `name`, claimed if need be.

        Raises:
            Elsewhere: another live node owns it.
            Deposed: this node's own lease has lapsed.
            StorageError: the ownership table cannot be reached.
        """
        releasing = self._releasing.get(name)
        if releasing is not None:
            await releasing[1].wait()  # given up first: then claimed anew
        # Shielded as the load that follows: a claim is one short transaction.
        with anyio.CancelScope(shield=True):
            lease = await self.ownership.claim(name)
        if lease.node != self.node:
            raise Elsewhere(lease)
        return lease

    async def adopt(self, room: Room, lease: Lease) -> None:
        """Serve `room` under `lease`: fence its updates with the epoch, take over the
        locks the previous owner kept, and keep them from now on for the next one."""
        room.epoch = lease.epoch
        self.leases[room.name] = lease
        ownership = self.ownership
        with anyio.CancelScope(shield=True):
            saved = await ownership.locks(room.name)
        if saved is not None:
            try:
                room.restore_locks(saved)
            except ValueError as error:
                log.error("the locks kept for %r are lost: %s", room.name, error)

        async def save() -> None:
            text = room.locks.export(room.clock(), room.wall())
            with anyio.CancelScope(shield=True):
                await ownership.save_locks(lease, text)

        room.save_locks = save

    def unloaded(self, name: DocumentName) -> None:
        """The room of `name` was unloaded: the document is given up (soon, by
        `release_unloaded`)."""
        lease = self.leases.pop(name, None)
        if lease is not None and name not in self._releasing:
            self._releasing[name] = (lease, anyio.Event())
            self._wakeup.set()

    async def release_unloaded(self) -> None:
        """Give up the documents whose rooms were unloaded, one at a time, forever (the
        engine's task group runs this)."""
        while True:
            if not self._releasing:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            name, (lease, done) = next(iter(self._releasing.items()))
            try:
                with anyio.CancelScope(shield=True):
                    await self.ownership.release(lease)
            except StorageError as error:
                # Kept until this node leaves or its lease lapses: nothing is lost.
                log.warning("cannot give %r up: %s", lease.document, error.reason)
            finally:
                del self._releasing[name]
                done.set()

    async def join(self) -> None:
        """Register this node (or renew its lease)."""
        await self.ownership.register()

    async def hold(self) -> None:
        """Keep the lease renewed, forever (the engine's task group runs this)."""
        ownership = self.ownership
        renewed_at = self.clock.monotonic()
        in_doubt = False
        while True:
            await self.clock.sleep(ownership.ttl / 3)
            if self.gate():
                try:
                    with anyio.CancelScope(shield=True):
                        current = await ownership.renew()
                        if not current or in_doubt:
                            await self._check()
                    renewed_at = self.clock.monotonic()
                    if in_doubt and self.journal is not None:
                        self.journal.resume()
                    in_doubt = False
                    continue
                except StorageError as error:
                    log.warning("cannot renew the lease of node %r: %s", self.node, error)
            else:
                log.warning("node %r does not renew its lease: it is cut off", self.node)
            if not in_doubt and self.clock.monotonic() - renewed_at >= ownership.ttl * 2 / 3:
                in_doubt = True
                if self.journal is not None:
                    self.journal.pause(
                        f"node {self.node!r} could not renew its lease: nothing is stored "
                        "or acknowledged until it has"
                    )

    async def leave(self, timeout: float) -> None:
        """Give every document up at once (everything accepted is stored by now),
        rather than leave them to wait for this node's lease to lapse."""
        with anyio.move_on_after(timeout, shield=True):
            try:
                await self.ownership.deregister()
            except StorageError as error:
                log.warning("leaving the cluster: %s (the lease lapses by itself)", error.reason)

    async def _check(self) -> None:
        # The lease had lapsed, or was in doubt: the documents claimed since by other
        # nodes are lost; their rooms end (1012) and their clients reconnect.
        leases = list(self.leases.values())
        held = set(await self.ownership.held(leases))
        reason = f"node {self.node!r} lost the document while its lease had lapsed"
        rooms = self.rooms()
        for lease in leases:
            if lease in held:
                continue
            name = DocumentName(lease.document)
            self.leases.pop(name, None)
            room = rooms.get(name)
            if room is not None:
                log.warning("%s: %r", reason, lease.document)
                room.storage_failed(Deposed(f"{reason} ({lease.document!r})"))
