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

What a lock may be is bounded (`LockLimits`): the length of each key of a section
and of the whole section, and the leases one user and one document may hold. What
other clients are shown of the leases (`Locks.summary`: sections and holders, no
timings, at most `summary_size` bytes) changes only when a lease is taken or ends,
never when one is renewed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from pycrdt import Doc, Map

from .blocks import root_names
from .clock import SYSTEM
from .errors import CollabError, ProtocolError
from .types import PeerId

Section = tuple[str, ...]


class LockConflict(CollabError):
    """The section, or one overlapping it, is held by someone else."""

    close_code = 4409  # never closes a connection: reported in the lock reply


class LockNotHeld(CollabError):
    """A renew or release of a lease that is not (or no longer) the caller's."""

    close_code = 4409


class TooManyLocks(CollabError):
    """The user, or the document, holds as many leases as `LockLimits` allows."""

    close_code = 4429  # never closes a connection: reported in the lock reply (HTTP 429)


@dataclass(frozen=True, slots=True)
class LockLimits:
    """What a lock may be, and how many there may be. Each is a server flag."""

    max_key_length: int = 128
    """The longest key of a section, in UTF-8 bytes (`--lock-max-key-length`)."""
    max_section_length: int = 512
    """The most UTF-8 bytes of all of a section's keys together
    (`--lock-max-section-length`)."""
    per_user: int = 16
    """The most leases one user may hold on one document (`--locks-per-user`)."""
    per_document: int = 64
    """The most leases one document may have (`--locks-per-document`)."""
    summary_size: int = 4096
    """The most bytes of JSON the leases take in the server's awareness entry
    (`--lock-summary-size`): beyond, the summary says how many more there are."""


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

    def to_json(self, now: float, wall: float) -> dict[str, Any]:
        """The JSON shape of replies and the HTTP API, as of monotonic time `now`,
        which is Unix time `wall`."""
        return {
            "section": list(self.section),
            "holder": {"id": self.user_id, "name": self.name},
            "fence": self.fence,
            "expiresIn": round(max(0.0, self.expires_at - now), 3),
            # Wall-clock time, for clients to count down (expiresIn is as of `now`).
            "expiresAt": round((wall + max(0.0, self.expires_at - now)) * 1000),
        }


def overlaps(a: Section, b: Section) -> bool:
    """Whether one section contains the other."""
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def parse_section(value: Any, limits: LockLimits | None = None) -> Section:
    """A section from its JSON form: a list of at most `MAX_DEPTH` non-empty strings,
    each at most `limits.max_key_length` UTF-8 bytes, together at most
    `limits.max_section_length`.

    Raises:
        ValueError: not a section, or one over the limits; the reason says which.
    """
    limits = limits or LockLimits()
    if (
        not isinstance(value, list)
        or len(value) > MAX_DEPTH
        or not all(isinstance(part, str) and part for part in value)
    ):
        raise ValueError(
            f'a section is [], ["root"] or a key path ["root", "key", ...] of at most {MAX_DEPTH}'
        )
    sizes = [len(part.encode("utf-8", "surrogatepass")) for part in value]
    if any(size > limits.max_key_length for size in sizes):
        raise ValueError(f"a section's key is at most {limits.max_key_length} bytes")
    if sum(sizes) > limits.max_section_length:
        raise ValueError(f"a section's keys are at most {limits.max_section_length} bytes in all")
    return tuple(value)


MAX_DEPTH = 8
"""The longest key path a lock may name."""


class Locks:
    """The leases of one room.

    Args:
        default_ttl: seconds a lease lasts unless renewed.
        grace: seconds a lease outlives its holder's connection.
        limits: how many leases there may be, and how much of them is shown.
        first_fence: the fencing number the first lease follows; by default the Unix
            time in milliseconds, so that numbers keep growing across restarts.
    """

    def __init__(
        self,
        *,
        default_ttl: float = 30.0,
        grace: float = 5.0,
        limits: LockLimits | None = None,
        first_fence: int | None = None,
    ) -> None:
        self.default_ttl = default_ttl
        self.grace = grace
        self.limits = limits or LockLimits()
        self._leases: dict[Section, Lease] = {}
        self._fence = int(SYSTEM.wall() * 1000) if first_fence is None else first_fence

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
            TooManyLocks: a new lease would be one more than the user, or the
                document, may hold.
        """
        for lease in self._leases.values():
            if overlaps(lease.section, section) and (
                lease.peer != peer or lease.user_id != user_id or lease.section != section
            ):
                raise LockConflict(
                    f"{list(lease.section)} is locked by {lease.name} (fence {lease.fence})"
                )
        if section not in self._leases:
            limits = self.limits
            if len(self._leases) >= limits.per_document:
                raise TooManyLocks(
                    f"the document has {limits.per_document} locks, the most it may have"
                )
            held = sum(1 for lease in self._leases.values() if lease.user_id == user_id)
            if held >= limits.per_user:
                raise TooManyLocks(
                    f"{user_id} holds {limits.per_user} locks on the document, the most one "
                    "user may hold"
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

    def export(self, now: float, wall: float) -> str:
        """The leases, as JSON for whoever takes the document over (another node of a
        cluster): each with its expiry as Unix time (`now` is `wall`), and the last
        fencing number given."""
        return json.dumps(
            {
                "fence": self._fence,
                "leases": [
                    {
                        "section": list(lease.section),
                        "user": lease.user_id,
                        "name": lease.name,
                        "fence": lease.fence,
                        "expires": wall + (lease.expires_at - now),
                    }
                    for lease in self._leases.values()
                ],
            },
            separators=(",", ":"),
        )

    def restore(self, text: str, now: float, wall: float) -> None:
        """Take over the leases of `export` (as of monotonic `now`, Unix `wall`):
        bound to no connection, each until its expiry; their holders renew or release
        them with their fences. Fencing numbers go on from the highest given.

        Raises:
            ValueError: `text` is not what `export` writes.
        """
        try:
            saved = json.loads(text)
            leases = [
                Lease(
                    tuple(str(key) for key in item["section"]),
                    str(item["user"]),
                    str(item["name"]),
                    None,
                    int(item["fence"]),
                    now + (float(item["expires"]) - wall),
                )
                for item in saved["leases"]
            ]
            self._fence = max(self._fence, int(saved["fence"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"saved locks that cannot be read: {exc}") from exc
        for lease in leases:
            if lease.expires_at > now:
                self._leases[lease.section] = lease

    def summary(self) -> dict[str, Any]:
        """What the other clients are shown of the leases: `{"locks": [{"section",
        "holder": {"id", "name"}}, ...]}`, oldest first, at most
        `limits.summary_size` bytes of JSON; leases left out are counted in
        `"more"`. No timings: renewing a lease does not change it. Empty (`{}`)
        without leases."""
        if not self._leases:
            return {}
        budget = self.limits.summary_size
        shown: list[dict[str, Any]] = []
        size = len('{"locks":[],"more":0000}')
        for lease in self._leases.values():
            item = {
                "section": list(lease.section),
                "holder": {"id": _cut(lease.user_id), "name": _cut(lease.name)},
            }
            cost = len(json.dumps(item, separators=(",", ":"))) + 1
            if size + cost > budget:
                break
            size += cost
            shown.append(item)
        more = len(self._leases) - len(shown)
        return {"locks": shown, "more": more} if more else {"locks": shown}

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


def _cut(text: str, most: int = 64) -> str:
    # Names and ids come from tokens (or a client, anonymously): shown, not trusted.
    return text if len(text) <= most else text[: most - 1] + "\u2026"


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
