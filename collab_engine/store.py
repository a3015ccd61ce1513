"""The Store protocol: the port through which the engine's journal reads and writes.

A store keeps, per document, an append-only log of updates numbered 1, 2, 3, ...
(`seq`), and snapshots: the merged state of the log up to some `seq`. Loading a
document is its latest snapshot plus the updates after it. A snapshot never
deletes log rows: version history needs them (what compaction gives up is load
time, never content). Implementations live in the `storage` package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .permissions import Grant
from .types import Update


@dataclass(frozen=True, slots=True)
class Entry:
    """One update to append to a document's log."""

    document: str
    update: Update
    author: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """What a store holds for one document: enough to rebuild it."""

    snapshot: Update | None = None
    """The merged state up to `snapshot_seq`, or None when there is no snapshot."""
    snapshot_seq: int = 0
    updates: list[tuple[int, Update]] = field(default_factory=list)
    """The log entries after `snapshot_seq`, as (seq, update), in seq order."""

    @property
    def last_seq(self) -> int:
        """The seq of the newest update (0 for a document with none)."""
        return self.updates[-1][0] if self.updates else self.snapshot_seq


@dataclass(frozen=True, slots=True)
class Version:
    """A named point in a document's history: its log up to `seq`."""

    id: int
    document: str
    seq: int
    label: str | None
    author: str | None
    automatic: bool
    created_at: float
    """Unix time."""
    editors: tuple[str, ...] = ()
    """Who wrote updates between the version before this one and this one (authors
    of the log entries in that range, by first appearance; anonymous writers count
    under their anonymous id)."""

    def to_json(self) -> dict[str, object]:
        """The version as the HTTP API and the WebSocket message give it."""
        return {
            "id": self.id,
            "document": self.document,
            "seq": self.seq,
            "label": self.label,
            "author": self.author,
            "automatic": self.automatic,
            "createdAt": self.created_at,
            "editors": list(self.editors),
        }


class Store(Protocol):
    """Durable storage of document updates and snapshots.

    Every method is one transaction: it happens whole or not at all.
    """

    async def append(self, entries: Sequence[Entry]) -> list[int]:
        """Append `entries` (any documents, in order); return the seq given to each.

        Once this returns, the entries are durable.
        """
        ...

    async def load(self, document: str, upto: int | None = None) -> Stored:
        """The latest snapshot of `document` and every update after it; with `upto`,
        as of update `upto`: the latest snapshot at or before it and the updates up
        to it."""
        ...

    async def log(
        self, document: str, after: int, upto: int | None = None
    ) -> list[tuple[int, Update, str | None]]:
        """The log entries of `document` after seq `after` (up to `upto`), as
        (seq, update, author), in seq order."""
        ...

    async def snapshot(self, document: str, state: Update, seq: int) -> None:
        """Record `state` as the merged content of `document` up to `seq`.

        A snapshot older than the newest one is ignored (stored data is never
        replaced by less).

        Raises:
            ValueError: `document` has no update `seq`.
        """
        ...

    async def grants(self, document: str) -> list[Grant]:
        """The grants stored for `document`, by principal."""
        ...

    async def grant(self, document: str, grant: Grant) -> None:
        """Store `grant` on `document`, replacing the principal's previous one."""
        ...

    async def revoke(self, document: str, principal: str) -> bool:
        """Remove the principal's grant on `document`; whether there was one."""
        ...

    async def add_version(
        self,
        document: str,
        seq: int,
        *,
        label: str | None = None,
        author: str | None = None,
        automatic: bool = False,
    ) -> Version:
        """Record a version of a stored `document` at update `seq` (0: before any).

        Versions only name points of the log, which is never deleted: compaction
        cannot take away what a version needs. The version's `editors` are the
        authors of the log entries after the newest version at or before `seq`.

        Raises:
            ValueError: `document` is not stored, or has no update `seq`.
        """
        ...

    async def versions(self, document: str) -> list[Version]:
        """The versions of `document`, oldest first."""
        ...

    async def remove_version(self, document: str, version_id: int) -> bool:
        """Forget a version (the log is untouched); whether there was one.

        Its editors are added to the next version's, which now covers its range.
        """
        ...

    async def documents(self) -> list[str]:
        """The names of every stored document."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store is not used after this."""
        ...
