"""MemoryStore: the reference Store, in a dict. For tests and benchmarks; keeps nothing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from collab_engine.permissions import Grant
from collab_engine.store import Entry, Stored, Version
from collab_engine.types import Update


class MemoryStore:
    """A Store that lives in memory; the contract tests run against it too."""

    def __init__(self) -> None:
        self._log: dict[str, list[tuple[int, Update, str | None]]] = {}
        self._snapshots: dict[str, list[tuple[int, Update]]] = {}
        self._grants: dict[str, dict[str, Grant]] = {}
        self._versions: list[Version] = []
        self._last_id = 0

    async def append(self, entries: Sequence[Entry]) -> list[int]:
        seqs = []
        for entry in entries:
            log = self._log.setdefault(entry.document, [])
            seq = log[-1][0] + 1 if log else 1
            log.append((seq, entry.update, entry.author))
            seqs.append(seq)
        return seqs

    async def load(self, document: str, upto: int | None = None) -> Stored:
        last = upto if upto is not None else float("inf")
        seq, state = max(
            ((s, u) for s, u in self._snapshots.get(document, []) if s <= last),
            default=(0, None),
        )
        updates = [(s, u) for s, u, _ in self._log.get(document, []) if seq < s <= last]
        return Stored(snapshot=state, snapshot_seq=seq, updates=updates)

    async def log(
        self, document: str, after: int, upto: int | None = None
    ) -> list[tuple[int, Update, str | None]]:
        last = upto if upto is not None else float("inf")
        return [entry for entry in self._log.get(document, []) if after < entry[0] <= last]

    async def snapshot(self, document: str, state: Update, seq: int) -> None:
        log = self._log.get(document, [])
        if seq < 1 or not log or seq > log[-1][0]:
            raise ValueError(f"no update {seq} in the log of {document!r}")
        kept = self._snapshots.setdefault(document, [])
        if not kept or kept[-1][0] < seq:
            kept.append((seq, state))

    async def grants(self, document: str) -> list[Grant]:
        return [grant for _, grant in sorted(self._grants.get(document, {}).items())]

    async def grant(self, document: str, grant: Grant) -> None:
        self._grants.setdefault(document, {})[grant.principal] = grant

    async def revoke(self, document: str, principal: str) -> bool:
        return self._grants.get(document, {}).pop(principal, None) is not None

    async def last_seq(self, document: str) -> int | None:
        log = self._log.get(document)
        return None if log is None else (log[-1][0] if log else 0)

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
        log = self._log.get(document)
        if log and seq is None:
            seq = log[-1][0]
        if not log or seq is None or not 0 <= seq <= log[-1][0]:
            raise ValueError(f"no update {seq} in the log of {document!r}")
        previous = max(
            (v.seq for v in self._versions if v.document == document and v.seq <= seq), default=0
        )
        editors = dict.fromkeys(
            author for s, _, author in log if previous < s <= seq and author is not None
        )
        self._last_id += 1
        version = Version(
            self._last_id,
            document,
            seq,
            label,
            author,
            automatic,
            time.time() if created_at is None else created_at,
            tuple(editors),
        )
        self._versions.append(version)
        return version

    async def versions(self, document: str) -> list[Version]:
        return [version for version in self._versions if version.document == document]

    async def remove_version(self, document: str, version_id: int) -> bool:
        ordered = sorted(
            (v for v in self._versions if v.document == document), key=lambda v: (v.seq, v.id)
        )
        index = next((i for i, v in enumerate(ordered) if v.id == version_id), None)
        if index is None:
            return False
        if index + 1 < len(ordered):
            after = ordered[index + 1]
            editors = tuple(dict.fromkeys([*ordered[index].editors, *after.editors]))
            self._versions[self._versions.index(after)] = replace(after, editors=editors)
        self._versions.remove(ordered[index])
        return True

    async def documents(self) -> list[str]:
        return sorted(self._log)

    async def aclose(self) -> None:
        pass
