"""Session locks: leases on a document or a section of it. Pure: time comes in as `now`.

A section is a path: `()` is the whole document, `("body",)` a root type by name,
`("sections", "intro")` a key of a root Map (and everything under it), and so on
down nested maps (`("sections", "intro", "title")`). Two sections
overlap when one is a prefix of the other; overlapping leases have one holder.

A lease is held by one connection of one user, carries a fencing number that only
grows (a later lease always has a greater one, across restarts too: the numbers
start from the clock), and ends when it expires unless renewed, when its holder
releases it, when an owner forces it, or `grace` seconds after its connection ends.
A write by anyone but the holder's user into a locked section is denied.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from pycrdt import Doc, Map

from .blocks import root_names
from .errors import CollabError, ProtocolError
from .types import PeerId

Section = tuple[str, ...]


class LockConflict(CollabError):
    """The section, or one overlapping it, is held by someone else."""

    close_code = 4409  # never closes a connection: reported in the lock reply


class LockNotHeld(CollabError):
    """A renew or release of a lease that is not (or no longer) the caller's."""

    close_code = 4409


@dataclass(frozen=True, slots=True)
class Lease:
    """One lock: who holds which section, until when, under which fencing number."""

    section: Section
    user_id: str
    name: str
    peer: PeerId | None
    """The holder's connection (None: taken over HTTP, bound to no connection)."""
    fence: int
    expires_at: float

    def to_json(self, now: float) -> dict[str, Any]:
        """The JSON shape of replies, the HTTP API and the server's awareness entry."""
        return {
            "section": list(self.section),
            "holder": {"id": self.user_id, "name": self.name},
            "fence": self.fence,
            "expiresIn": round(max(0.0, self.expires_at - now), 3),
            # Wall-clock time, for clients to count down (expiresIn is as of `now`).
            "expiresAt": round((time.time() + max(0.0, self.expires_at - now)) * 1000),
        }


def overlaps(a: Section, b: Section) -> bool:
    """Whether one section contains the other."""
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def parse_section(value: Any) -> Section:
    """A section from its JSON form: a list of at most `MAX_DEPTH` non-empty strings.

    Raises:
        ValueError: not a section.
    """
    if (
        not isinstance(value, list)
        or len(value) > MAX_DEPTH
        or not all(isinstance(part, str) and part for part in value)
    ):
        raise ValueError(
            f'a section is [], ["root"] or a key path ["root", "key", ...] of at most {MAX_DEPTH}'
        )
    return tuple(value)


MAX_DEPTH = 8
"""The longest key path a lock may name."""


class Locks:
    """The leases of one room.

    Args:
        default_ttl: seconds a lease lasts unless renewed.
        grace: seconds a lease outlives its holder's connection.
    """

    def __init__(self, *, default_ttl: float = 30.0, grace: float = 5.0) -> None:
        self.default_ttl = default_ttl
        self.grace = grace
        self._leases: dict[Section, Lease] = {}
        self._fence = int(time.time() * 1000)

    @property
    def leases(self) -> list[Lease]:
        """The current leases."""
        return list(self._leases.values())

    def acquire(
        self,
        section: Section,
        *,
        user_id: str,
        name: str,
        peer: PeerId | None,
        now: float,
        ttl: float | None = None,
    ) -> Lease:
        """Take a lease on `section` (or renew it, for the same connection).

        Raises:
            LockConflict: an overlapping lease is held by another connection.
        """
        for lease in self._leases.values():
            if overlaps(lease.section, section) and (
                lease.peer != peer or lease.user_id != user_id or lease.section != section
            ):
                raise LockConflict(
                    f"{list(lease.section)} is locked by {lease.name} (fence {lease.fence})"
                )
        self._fence += 1
        lease = Lease(section, user_id, name, peer, self._fence, now + (ttl or self.default_ttl))
        self._leases[section] = lease
        return lease

    def renew(self, section: Section, fence: int, now: float, ttl: float | None = None) -> Lease:
        """Extend the lease with `fence`.

        Raises:
            LockNotHeld: there is no such lease (any more).
        """
        lease = self._held(section, fence)
        renewed = replace(lease, expires_at=now + (ttl or self.default_ttl))
        self._leases[section] = renewed
        return renewed

    def release(self, section: Section, fence: int) -> Lease:
        """End the lease with `fence`.

        Raises:
            LockNotHeld: there is no such lease (any more).
        """
        lease = self._held(section, fence)
        del self._leases[section]
        return lease

    def force_release(self, section: Section) -> Lease | None:
        """End whatever lease `section` has (an owner's right)."""
        return self._leases.pop(section, None)

    def disconnected(self, peer: PeerId, now: float) -> bool:
        """The connection `peer` ended: its leases end `grace` seconds from now."""
        changed = False
        for section, lease in list(self._leases.items()):
            if lease.peer == peer:
                self._leases[section] = replace(
                    lease, peer=None, expires_at=min(lease.expires_at, now + self.grace)
                )
                changed = True
        return changed

    def expire(self, now: float) -> list[Lease]:
        """End the leases whose time is up; return them."""
        ended = [lease for lease in self._leases.values() if lease.expires_at <= now]
        for lease in ended:
            del self._leases[lease.section]
        return ended

    def blocking(self, sections: Iterable[Section], user_id: str) -> Lease | None:
        """The lease of another user over any of `sections`, if there is one."""
        for section in sections:
            for lease in self._leases.values():
                if lease.user_id != user_id and overlaps(lease.section, section):
                    return lease
        return None

    def _held(self, section: Section, fence: int) -> Lease:
        lease = self._leases.get(section)
        if lease is None or lease.fence != fence:
            raise LockNotHeld(f"no lease on {list(section)} with fence {fence}")
        return lease


class Shadow:
    """A copy of a room's document that says which sections an update touches,
    at the cost of applying the update, not of copying the document.

    The room keeps it while it has leases: every change the room takes is also
    `follow`ed here. Its roots are all observed deeply (seen as Maps, whatever they
    are: a Map reports the keys that change, a Text or an Array a change of the
    root itself); `check` applies an update first here and collects what changed.
    An update applied here before the room takes it is applied again by `follow`:
    Yjs updates are idempotent, so that costs nothing more.
    """

    def __init__(self, doc: Doc[Any]) -> None:
        self.doc: Doc[Any] = Doc()
        self.doc.apply_update(doc.get_update())
        self._touched: set[Section] = set()
        self._observed: set[str] = set()
        self._subscriptions: list[Any] = []
        for name in self.doc.keys():
            self._observe(name)

    def _observe(self, name: str) -> None:
        root = self.doc.get(name, type=Map)
        # Kept: a subscription that is garbage-collected stops observing.
        self._subscriptions.append(root.observe_deep(_collector(name, self._touched)))
        self._observed.add(name)

    def check(self, update: bytes) -> set[Section]:
        """The sections `update` changes (it is applied to the shadow).

        Raises:
            ValueError: `update` is not a valid Yjs update.
        """
        try:
            names = root_names(update)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from exc
        for name in names - self._observed:
            self._observe(name)
        self._touched.clear()
        self.doc.apply_update(update)
        touched = set(self._touched)
        self._touched.clear()
        return touched

    def follow(self, update: bytes) -> None:
        """The room took `update`: so does the shadow."""
        self.check(update)


def sections_touched(doc: Doc[Any], update: bytes) -> set[Section]:
    """The sections `update` would change in `doc`, on a throwaway `Shadow`.

    Raises:
        ValueError: `update` is not a valid Yjs update.
    """
    return Shadow(doc).check(update)


def _collector(name: str, touched: set[Section]) -> Any:
    # A change in a map reports the map's path and the keys that changed; any other
    # change (text, array), the path of the type that changed.
    def collect(events: list[Any], *_: Any) -> None:
        for event in events:
            path = (name, *(str(part) for part in getattr(event, "path", []) or []))
            keys = list(getattr(event, "keys", {}) or {})
            if keys:
                touched.update((*path, str(key)) for key in keys)
            else:
                touched.add(path)

    return collect
