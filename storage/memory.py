"""MemoryStore: the reference Store, in a dict. For tests and benchmarks; keeps nothing."""

from __future__ import annotations

import time
from collections.abc import Sequence

from collab_engine.permissions import Grant
from collab_engine.store import Entry, Stored, Version
from collab_engine.types import Update


class MemoryStore:
    """A Store that lives in memory; the contract tests run against it too."""

    def __init__(self) -> None:
        self._log: dict[str, list[tuple[int, Update, str | None]]] = {}
        self._snapshots: dict[str, tuple[int, Update]] = {}
        self._grants: dict[str, dict[str, Grant]] = {}
        self._versions: list[Version] = []

    async def append(self, entries: Sequence[Entry]) -> list[int]:
        seqs = []
        for entry in entries:
            log = self._log.setdefault(entry.document, [])
            seq = log[-1][0] + 1 if log else 1
            log.append((seq, entry.update, entry.author))
            seqs.append(seq)
        return seqs

    async def load(self, document: str) -> Stored:
        seq, state = self._snapshots.get(document, (0, None))
        updates = [(s, u) for s, u, _ in self._log.get(document, []) if s > seq]
        return Stored(snapshot=state, snapshot_seq=seq, updates=updates)

    async def snapshot(self, document: str, state: Update, seq: int) -> None:
        log = self._log.get(document, [])
        if seq < 1 or not log or seq > log[-1][0]:
            raise ValueError(f"no update {seq} in the log of {document!r}")
        current = self._snapshots.get(document)
        if current is None or current[0] < seq:
            self._snapshots[document] = (seq, state)

    async def grants(self, document: str) -> list[Grant]:
        return [grant for _, grant in sorted(self._grants.get(document, {}).items())]

    async def grant(self, document: str, grant: Grant) -> None:
        self._grants.setdefault(document, {})[grant.principal] = grant

    async def revoke(self, document: str, principal: str) -> bool:
        return self._grants.get(document, {}).pop(principal, None) is not None

    async def add_version(
        self,
        document: str,
        seq: int,
        *,
        label: str | None = None,
        author: str | None = None,
        automatic: bool = False,
    ) -> Version:
        log = self._log.get(document)
        if not log or not 0 <= seq <= log[-1][0]:
            raise ValueError(f"no update {seq} in the log of {document!r}")
        version = Version(
            len(self._versions) + 1, document, seq, label, author, automatic, time.time()
        )
        self._versions.append(version)
        return version

    async def versions(self, document: str) -> list[Version]:
        return [version for version in self._versions if version.document == document]

    async def documents(self) -> list[str]:
        return sorted(self._log)

    async def aclose(self) -> None:
        pass
