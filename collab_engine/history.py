"""History: the versions of documents, their content, diffs, and restoring one.

    version = await engine.history.create("notes", label="before review", author="user:ann")
    content = await engine.history.content("notes", version.id)     # every root as JSON
    changes = await engine.history.diff("notes", version.id, None)  # ... up to now
    await engine.history.restore("notes", version.id, author="user:ann")

A version names a point of a document's update log (see `store.Version`). Content
at a version is rebuilt from the store: the latest snapshot at or before it, then
the log up to it (never `merge_updates`, far too slow on long logs), in a worker
thread. The log is never deleted, so every kept version can always be rebuilt.

Restoring makes the current content equal to a version's as one new change on top
of history (`rollback.revert`): it is applied to the room like any edit (broadcast,
stored, acknowledged), edits made meanwhile by others merge with it by the CRDT
rules, and a version "Restored version N" is recorded at the point it makes.

Automatic versions: when a loaded document has had no edit for `quiet` seconds, or
its room unloads (everybody left), or has been edited for `min_interval` seconds
without such a pause, and updates were stored since its newest version, a version
is made, unless the last automatic one is under `min_interval` seconds old (it is
then made once that much time has passed).
After each, the retention policy removes automatic versions beyond the newest
`keep`, and those older than `keep_days`; named versions and restore points are
kept. Removing a version hands its editors to the next one.

Who may do what is the caller's business (the server: viewer to list and read,
editor to name, owner to restore).
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from pycrdt import Doc

from . import json_text
from .blocks import root_kinds
from .clock import Clock
from .content import content_of, kinds_of
from .diff import diff
from .errors import ProtocolError, StorageError
from .journal import describe_error
from .permissions import Role
from .rollback import revert
from .room import Room
from .store import Store, Stored, Version, rebuild
from .types import DocumentName, Update
from .worker import Worker

log = logging.getLogger("collab_engine.history")

MAX_LABEL = 512
"""The longest version label, in characters."""


NEEDED: dict[str, Role] = {
    "list": Role.VIEWER,
    "content": Role.VIEWER,
    "diff": Role.VIEWER,
    "create": Role.EDITOR,
    "restore": Role.OWNER,
}
"""The role each history operation needs, over HTTP and the WebSocket alike."""


class VersionNotFound(LookupError):
    """No such version of the document, or no such document."""


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """When automatic versions are made, and how long they are kept."""

    quiet: float = 600.0
    """Seconds without an edit after which an editing session is versioned."""
    min_interval: float = 3600.0
    """Seconds that must separate two automatic versions of one document."""
    keep: int = 100
    """Automatic versions kept per document (the newest); 0 keeps none."""
    keep_days: float | None = 90.0
    """Automatic versions older than this many days are removed; None: never."""
    enabled: bool = True
    """False: no automatic versions at all."""


class Documents(Protocol):
    """What history needs of the engine (which is one): where documents are stored,
    the rooms open now, a way to open one, and the clock."""

    @property
    def store(self) -> Store | None: ...

    @property
    def rooms(self) -> dict[DocumentName, Room]: ...

    def room(self, name: str) -> AbstractAsyncContextManager[Room]: ...

    @property
    def clock(self) -> Clock: ...


class History:
    """The versions of an engine's documents. The engine makes one: `engine.history`."""

    def __init__(self, engine: Documents, policy: HistoryPolicy) -> None:
        self.engine = engine
        self.policy = policy
        # Automatic versions: documents due, the stored seq each was last checked
        # at (not due again until it has more), and when a skipped one may be retried.
        self._versioner = Worker(
            self._automatic, expected=(StorageError, VersionNotFound), failed=self._skipped
        )
        self._checked: dict[DocumentName, int] = {}
        self._retry_at: dict[DocumentName, float] = {}
        self._busy_since: dict[DocumentName, float] = {}

    @property
    def store(self) -> Store:
        if self.engine.store is None:
            raise RuntimeError("history needs an engine with a store")
        return self.engine.store

    # -- versions ----------------------------------------------------------------------

    async def versions(self, name: str) -> list[Version]:
        """The versions of document `name`, oldest first."""
        versions: list[Version] = await self._call(
            f"read the versions of {name!r}", self.store.versions, name
        )
        return versions

    async def version(self, name: str, version_id: int) -> Version:
        """Version `version_id` of document `name`.

        Raises:
            VersionNotFound: it has no such version.
        """
        for version in await self.versions(name):
            if version.id == version_id:
                return version
        raise VersionNotFound(f"{name!r} has no version {version_id}")

    async def create(
        self,
        name: str,
        *,
        label: str | None = None,
        author: str | None = None,
        automatic: bool = False,
    ) -> Version:
        """Record a version of document `name` as it is now: every change made so far
        (in a loaded room, once stored) is in it.

        Raises:
            VersionNotFound: the document has nothing stored.
            ValueError: the label is too long.
            StorageError: the store failed.
        """
        if label is not None and len(label) > MAX_LABEL:
            raise ValueError(f"a version label is at most {MAX_LABEL} characters")
        room = self.engine.rooms.get(DocumentName(name))
        seq: int | None = None
        if room is not None:
            await room.flush()
            seq = room.stored_seq
        try:
            with anyio.CancelScope(shield=True):
                version = await self.store.add_version(
                    name,
                    seq,
                    label=label,
                    author=author,
                    automatic=automatic,
                    created_at=self.engine.clock.wall(),
                )
        except ValueError as exc:
            raise VersionNotFound(f"{name!r} has nothing stored to version") from exc
        except Exception as exc:
            raise StorageError(f"cannot version {name!r}: {describe_error(exc)}") from exc
        self._checked[DocumentName(name)] = version.seq
        log.info("version %d of %r at seq %d (%s)", version.id, name, version.seq, label or "-")
        return version

    # -- content and diff --------------------------------------------------------------

    async def content(self, name: str, version_id: int | None) -> dict[str, Any]:
        """Every root of document `name` as JSON (see `content`), at version
        `version_id`, or now (None: what the room holds, stored or not)."""
        version = None if version_id is None else await self.version(name, version_id)
        room = self.engine.rooms.get(DocumentName(name))
        current = room.doc.get_update() if room is not None else None
        if version is None and current is None:
            stored = await self._load(name, None)
            seq = stored.last_seq
            roots = await anyio.to_thread.run_sync(_content_at, name, stored, None)
        elif version is None:
            assert room is not None and current is not None
            seq = room.stored_seq
            roots = await anyio.to_thread.run_sync(_content_of_update, current, None)
        else:
            stored = await self._load(name, version.seq)
            seq = version.seq
            roots = await anyio.to_thread.run_sync(_content_at, name, stored, current)
        return {
            "document": name,
            "version": None if version is None else version.to_json(),
            "seq": seq,
            "roots": roots,
        }

    async def diff(self, name: str, from_id: int, to_id: int | None) -> dict[str, Any]:
        """What changed in document `name` from version `from_id` to version `to_id`
        (None: to now, every change made so far stored first), with authors.

        Raises:
            VersionNotFound: a version does not exist.
            ValueError: `from_id` is newer than `to_id`.
        """
        start = await self.version(name, from_id)
        end = None if to_id is None else await self.version(name, to_id)
        if end is not None and end.seq < start.seq:
            raise ValueError(f"version {from_id} is newer than version {to_id}")
        async with self.engine.room(name) as room:
            # The current document tells the type of every root there is (roots are
            # never removed), which the replay must know before it starts.
            await room.flush()
            current = room.doc.get_update()
            stored = await self._load(name, start.seq)
            steps = await self._call(
                f"read the log of {name!r}",
                self.store.log,
                name,
                start.seq,
                None if end is None else end.seq,
            )
            changes = await anyio.to_thread.run_sync(_diff, name, stored, steps, current)
        return {
            "document": name,
            "from": start.to_json(),
            "to": None if end is None else end.to_json(),
            "seq": steps[-1][0] if steps else start.seq,
            "editors": list(dict.fromkeys(a for _, _, a in steps if a is not None)),
            "roots": changes,
        }

    # -- restore -----------------------------------------------------------------------

    async def restore(self, name: str, version_id: int, *, author: str | None = None) -> Version:
        """Make document `name` equal to version `version_id` as a new change, applied
        and broadcast like any edit; return the version recorded at the point the
        restore makes (labelled "Restored version N").

        Raises:
            VersionNotFound: no such version.
            StorageError: the store failed.
        """
        version = await self.version(name, version_id)
        stored = await self._load(name, version.seq)
        async with self.engine.room(name) as room:
            current = room.doc.get_update()
            update = await anyio.to_thread.run_sync(_restoration, name, stored, current)
            # Edits that arrived while it was computed merge with it (CRDT rules).
            room.apply(update, origin="collab-engine:restore", author=author)
            label = f"Restored version {version.id}" + (
                f" ({version.label})" if version.label else ""
            )
            return await self.create(name, label=label[:MAX_LABEL], author=author)

    # -- the WebSocket message -------------------------------------------------------

    async def answer(self, name: str, body: str, *, author: str, role: Role) -> dict[str, Any]:
        """The reply to a version request (our WebSocket message) on document `name`
        from a peer with `role`:

            {"id": 1, "op": "create", "label": "draft"}  -> {"id": 1, "ok": true, "version": {...}}
            {"id": 2, "op": "list"}                      -> {"id": 2, "ok": true, "versions": [...]}
            {"id": 3, "op": "restore", "version": 7}     -> {"id": 3, "ok": true, "version": {...}}

        A version created here holds every update the peer sent before the request.
        Errors are replies ({"ok": false, "error": ...}), never a closed connection,
        but for a body that is no JSON object (the codec refuses those first).

        Raises:
            ProtocolError: `body` is not a JSON object nested at most
                `json_text.MAX_DEPTH` deep (4400).
        """
        request = json_text.parse(body)  # ProtocolError (4400), as the codec would raise
        if not isinstance(request, dict):
            raise ProtocolError("a version request must be a JSON object")
        reply: dict[str, Any] = {"id": request.get("id")}
        op = request.get("op")
        try:
            if op not in NEEDED:
                raise ValueError(f"unknown version op {op!r}: {', '.join(NEEDED)}")
            if role < NEEDED[op]:
                raise PermissionError(f"{NEEDED[op]} right needed to {op} versions")
            if op == "list":
                return {
                    **reply,
                    "ok": True,
                    "versions": [v.to_json() for v in await self.versions(name)],
                }
            if op == "create":
                label = request.get("label")
                if label is not None and not isinstance(label, str):
                    raise ValueError("label must be a string")
                version = await self.create(name, label=label, author=author)
            elif op == "restore":
                target = request.get("version")
                if not isinstance(target, int):
                    raise ValueError("restore needs the version's id")
                version = await self.restore(name, target, author=author)
            else:
                raise ValueError(f"{op} is answered over HTTP: /api/documents/<name>/versions")
        except (ValueError, PermissionError, VersionNotFound, StorageError) as error:
            return {**reply, "ok": False, "error": str(error)}
        return {**reply, "ok": True, "version": version.to_json()}

    # -- automatic versions ------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether automatic versions are due or being made now."""
        return self._versioner.busy

    def sweep(self, now: float) -> None:
        """Find the documents due for an automatic version (called by the engine's
        sweeper with the monotonic time)."""
        if not self.policy.enabled or self.engine.store is None:
            return
        for name, room in self.engine.rooms.items():
            if room.edited_at is None or room.failed is not None:
                continue
            if room.stored and self._checked.get(name, -1) >= room.stored_seq:
                self._busy_since.pop(name, None)  # nothing since the last check
                continue
            if room.stored and now - room.edited_at >= self.policy.quiet:
                self._mark(name, room.stored_seq)
            elif now - self._busy_since.setdefault(name, now) >= self.policy.min_interval:
                # Edited without a quiet period for `min_interval`: a long session
                # gets a version per interval rather than none until it ends.
                self._mark(name, None)
        wall = self.engine.clock.wall()
        for name, at in list(self._retry_at.items()):
            if wall >= at:
                del self._retry_at[name]
                self._mark(name, None)

    def unloaded(self, name: DocumentName, edited: bool, stored_seq: int) -> None:
        """A room unloaded: everybody left, so its editing session is over."""
        self._busy_since.pop(name, None)
        if edited and self.policy.enabled and self.engine.store is not None:
            self._mark(name, stored_seq)

    def _mark(self, name: DocumentName, seq: int | None) -> None:
        if seq is not None and self._checked.get(name, -1) >= seq:
            return
        self._versioner.mark(name)

    async def run(self) -> None:
        """Make the automatic versions found due, one document at a time (the
        engine's task group runs this)."""
        await self._versioner.run()

    def _skipped(self, name: DocumentName, error: Exception) -> None:
        log.error("automatic version of %r skipped: %s", name, error)

    async def _automatic(self, name: DocumentName) -> None:
        self._busy_since.pop(name, None)  # checked now: the next long-session one is due later
        versions = await self._call(f"read the versions of {name!r}", self.store.versions, name)
        last = await self._call(f"read {name!r}", self.store.last_seq, name)
        if name in self.engine.rooms:
            self._checked[name] = last or 0
        else:
            # Not loaded: no edit can come before it loads again, and marks it anew.
            self._checked.pop(name, None)
        if last is None or last <= max((v.seq for v in versions), default=0):
            return  # nothing since the newest version
        automatic = [v for v in versions if v.automatic]
        if automatic:
            allowed = max(v.created_at for v in automatic) + self.policy.min_interval
            if self.engine.clock.wall() < allowed:
                self._retry_at[name] = allowed
                return
        await self.create(name, automatic=True)
        await self.prune(name)

    async def prune(self, name: str) -> list[int]:
        """Apply the retention policy to the automatic versions of `name`; return the
        ids removed."""
        automatic = sorted(
            (v for v in await self.versions(name) if v.automatic),
            key=lambda v: (v.created_at, v.id),
            reverse=True,
        )
        cutoff = (
            None
            if self.policy.keep_days is None
            else self.engine.clock.wall() - self.policy.keep_days * 86400
        )
        doomed = [
            v.id
            for index, v in enumerate(automatic)
            if index >= self.policy.keep or (cutoff is not None and v.created_at < cutoff)
        ]
        for version_id in doomed:
            await self._call(
                f"remove version {version_id} of {name!r}",
                self.store.remove_version,
                name,
                version_id,
            )
        return doomed

    # -- the store ---------------------------------------------------------------------

    async def _load(self, name: str, upto: int | None) -> Stored:
        stored: Stored = await self._call(f"load {name!r}", self.store.load, name, upto)
        return stored

    async def _call(self, what: str, method: Any, *args: Any) -> Any:
        try:
            # Shielded, as every store call (see `Engine._load`).
            with anyio.CancelScope(shield=True):
                return await method(*args)
        except Exception as exc:
            raise StorageError(f"cannot {what}: {describe_error(exc)}") from exc


def _content_of_update(update: Update, hint: dict[str, str] | None) -> dict[str, Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return content_of(doc, hint)


def _content_at(name: str, stored: Stored, current: Update | None) -> dict[str, Any]:
    # The current state tells the kind of roots empty at the version.
    hint = root_kinds(current) if current is not None else None
    return content_of(rebuild(name, stored), hint)


def _diff(
    name: str, stored: Stored, steps: list[tuple[int, Update, str | None]], current: Update
) -> dict[str, Any]:
    before = rebuild(name, stored)
    there = kinds_of(before)
    kinds = {**root_kinds(current), **there}
    changes = diff(before, [(author, update) for _, update, author in steps], kinds)
    # Roots made after the second point are typed for the replay, but are no change.
    return {root: value for root, value in changes.items() if root in there or value["authors"]}


def _restoration(name: str, stored: Stored, current: Update) -> Update:
    version = rebuild(name, stored)
    kinds = {**root_kinds(current), **root_kinds(version.get_update())}
    return revert(version, current, kinds)
