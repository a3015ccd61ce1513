"""The Store protocol: the port through which the engine's journal reads and writes.

A store keeps, per document, an append-only log of updates numbered 1, 2, 3, ...
(`seq`), and snapshots: the merged state of the log up to some `seq`. Loading a
document is its latest snapshot plus the updates after it. A snapshot never
deletes log rows: version history needs them (what compaction gives up is load
time, never content). Implementations live in the `storage` package.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pycrdt import Doc

from .errors import StorageError
from .permissions import Grant
from .types import Update


class StoreUnavailable(StorageError):
    """The store cannot be reached now (the connection to the database is refused or
    lost): nothing is wrong with the data, and the same call may succeed later. The
    journal keeps what it holds and tries again; nothing is acknowledged meanwhile."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One update to append to a document's log."""

    document: str
    update: Update
    author: str | None = None
    epoch: int | None = None
    """The ownership epoch the writer holds the document at (a node of a cluster):
    the store refuses the entry (`ownership.Deposed`) unless it is still current.
    None: not fenced (one process alone)."""


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


log = logging.getLogger("collab_engine.store")


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

        Raises:
            Deposed: an entry's `epoch` is no longer its document's (nothing of the
                call is stored); only stores that keep ownership fence entries.
            StoreUnavailable: the store cannot be reached (nothing is stored).
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

    async def last_seq(self, document: str) -> int | None:
        """The seq of the newest update of `document` (0: none yet); None when the
        document is not stored."""
        ...

    async def add_version(
        self,
        document: str,
        seq: int | None,
        *,
        label: str | None = None,
        author: str | None = None,
        automatic: bool = False,
        created_at: float | None = None,
    ) -> Version:
        """Record a version of a stored `document` at update `seq` (0: before any;
        None: its newest update, read in the same transaction).

        Versions only name points of the log, which is never deleted: compaction
        cannot take away what a version needs. The version's `editors` are the
        authors of the log entries after the newest version at or before `seq`.
        `created_at` is its Unix time (None: now, by the store's clock).

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


def rebuild(name: str, stored: Stored) -> Doc[Any]:
    """The document `stored` describes: its snapshot, then every update after it.

    Raises:
        StorageError: the snapshot or an update cannot be decoded; it names the
            document and the sequence number. No partial document is returned.
    """
    doc: Doc[Any] = Doc()
    if stored.snapshot is not None:
        _integrate(
            doc, stored.snapshot, f"document {name!r}: the snapshot at seq {stored.snapshot_seq}"
        )
    for seq, update in stored.updates:
        _integrate(doc, update, f"document {name!r}: update {seq}")
    return doc


def _integrate(doc: Doc[Any], update: Update, what: str) -> None:
    try:
        doc.apply_update(update)
    except Exception as exc:
        error = StorageError(f"{what} cannot be decoded ({exc})")
        log.error("%s", error.reason)
        raise error from exc
    except BaseException as exc:
        # Yrs panics (pyo3's PanicException is a BaseException) on some garbage.
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        error = StorageError(f"{what} cannot be decoded (the decoder panicked)")
        log.error("%s", error.reason)
        raise error from exc
