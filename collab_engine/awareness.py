"""The room's awareness: the latest state of every client, and who owns it.

This is the y-protocols awareness CRDT (last writer wins per client id, by clock)
kept on the server, so that a joiner gets every state at once, stale or repeated
entries are not forwarded, and the states of a connection that goes away are
removed for everyone. Pure: time is passed in, nothing here does I/O.

Rules, as y-protocols applies them:
- an entry is accepted when its clock is greater than the known one, or equal to it
  and it removes a state that is still present;
- an accepted entry is what gets forwarded; a rejected (stale) one goes nowhere;
- a removal keeps the clock, so an older copy of the state cannot come back;
- a removal made here (the owner left, or its state timed out) is sent at the
  state's own clock, as y-protocols does: receivers accept a null state at an equal
  clock, and the client, if it comes back, is heard again at its next clock
  (a removal at clock + 1 would make that next change look stale to everyone).

And ours, on top:
- a client id belongs to the connection that set its present state: another
  connection's newer entries for it are refused (`Applied.refused`; stale copies,
  which y-websocket echoes back, are ignored like any stale entry), unless the caller's
  `may_take_over` allows it (the same authenticated user reconnecting);
- the server may change a state itself (`put`: identity, idle, typing): it is issued
  at clock + 1, so every replica takes it, the owner's own included (y-protocols
  adopts a newer copy of its own state). Should the owner send its own clock + 1
  before it has seen ours, the tie goes to the owner: its entry is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import MessageTooBig
from .protocol import AwarenessEntry
from .types import ClientId, PeerId


@dataclass(slots=True)
class _Record:
    clock: int
    state: str | None
    owner: PeerId | None
    updated_at: float
    by_server: bool = False
    """The present state was issued by the server (`put`), not by its owner."""


@dataclass(slots=True)
class Applied:
    """What `Awareness.apply` did with a batch of entries."""

    accepted: list[AwarenessEntry] = field(default_factory=list)
    """Entries now in the table, as they were sent."""
    refused: list[AwarenessEntry] = field(default_factory=list)
    """Entries for client ids another connection holds: ignored."""


SERVER_OWNER = PeerId(0)
"""The owner of the server's own entries: they never time out here (the server
renews them for the clients' sake) and no connection may take them."""


class Awareness:
    """The awareness states of one room.

    Args:
        max_state_size: the largest accepted state, in bytes of its JSON text.
        outdated_timeout: seconds after which a state that was not renewed is
            removed (y-protocols clients renew every 15 s and drop others after 30 s).
    """

    def __init__(self, *, max_state_size: int, outdated_timeout: float = 30.0) -> None:
        self.max_state_size = max_state_size
        self.outdated_timeout = outdated_timeout
        self._records: dict[ClientId, _Record] = {}
        self._expire_at = -math.inf
        """No record can be due for `expire` before this."""

    def apply(
        self,
        entries: tuple[AwarenessEntry, ...],
        owner: PeerId,
        now: float,
        may_take_over: Callable[[PeerId], bool] = lambda _holder: False,
    ) -> Applied:
        """Apply entries sent by `owner`: the accepted ones are to be forwarded.

        The sender of an accepted entry becomes the owner of its client id. A client
        id whose present state another connection holds is refused, unless
        `may_take_over(holder)` says the sender may have it. A client id with no
        present state (its owner left) is free: a client that reconnects uses its
        id again.

        Raises:
            MessageTooBig: a state is over `max_state_size`; nothing is applied.
        """
        for entry in entries:
            if entry.state is not None and len(entry.state.encode()) > self.max_state_size:
                raise MessageTooBig(
                    f"awareness state of client {entry.client_id} is over "
                    f"{self.max_state_size} bytes"
                )
        applied = Applied()
        for entry in entries:
            record = self._records.get(entry.client_id)
            if record is None:
                if entry.state is None:
                    # Removing a state nobody has: remember the clock, forward nothing.
                    self._records[entry.client_id] = _Record(entry.clock, None, None, now)
                    continue
                self._records[entry.client_id] = _Record(entry.clock, entry.state, owner, now)
                applied.accepted.append(entry)
                continue
            holder = record.owner
            owners_tie = record.by_server and holder == owner and record.clock == entry.clock
            newer = (
                record.clock < entry.clock
                or owners_tie
                or (
                    record.clock == entry.clock and entry.state is None and record.state is not None
                )
            )
            if not newer:
                # Stale or repeated: y-websocket echoes every update it applies, the
                # other clients' and the server's included. Ignored, not refused.
                continue
            if holder is not None and holder != owner and not may_take_over(holder):
                applied.refused.append(entry)
                continue
            record.clock = entry.clock
            record.state = entry.state
            record.owner = owner if entry.state is not None else None
            record.updated_at = now
            record.by_server = False
            applied.accepted.append(entry)
        return applied

    def put(self, client_id: ClientId, state: str, now: float) -> AwarenessEntry:
        """Set the present state of `client_id` as the server: at clock + 1, owner kept.

        Raises:
            KeyError: `client_id` has no present state.
        """
        record = self._records[client_id]
        if record.state is None:
            raise KeyError(client_id)
        record.clock += 1
        record.state = state
        record.updated_at = now
        record.by_server = True
        return AwarenessEntry(client_id, record.clock, state)

    def add_own(self, client_id: ClientId, state: str, owner: PeerId, now: float) -> AwarenessEntry:
        """Set a state the server itself owns (its own entry): clock + 1 if known."""
        record = self._records.get(client_id)
        if record is None:
            record = self._records[client_id] = _Record(0, None, owner, now)
        record.clock += 1
        record.state = state
        record.owner = owner
        record.updated_at = now
        record.by_server = True
        return AwarenessEntry(client_id, record.clock, state)

    def reserve(self, client_id: ClientId, owner: PeerId, now: float) -> None:
        """Hold `client_id` for `owner` (the server's own entry) before it has a state:
        no connection may take it, present or not."""
        self._records.setdefault(client_id, _Record(0, None, owner, now))

    def remove_own(self, client_id: ClientId, now: float) -> AwarenessEntry | None:
        """Remove a state the server owns, at clock + 1 (so every replica takes the
        removal); the id stays the server's. None: it had no present state."""
        record = self._records.get(client_id)
        if record is None or record.state is None:
            return None
        record.clock += 1
        record.state = None
        record.updated_at = now
        record.by_server = True
        return AwarenessEntry(client_id, record.clock, None)

    def get(self, client_id: ClientId) -> AwarenessEntry | None:
        """The present state of `client_id`, as an entry, or None."""
        record = self._records.get(client_id)
        if record is None or record.state is None:
            return None
        return AwarenessEntry(client_id, record.clock, record.state)

    def owner_of(self, client_id: ClientId) -> PeerId | None:
        """The connection that holds the present state of `client_id`, if any."""
        record = self._records.get(client_id)
        return None if record is None or record.state is None else record.owner

    def clock_of(self, client_id: ClientId) -> int | None:
        """The clock known for `client_id` (of a state or of its removal), if any."""
        record = self._records.get(client_id)
        return None if record is None else record.clock

    def remove_owner(self, owner: PeerId) -> list[AwarenessEntry]:
        """Remove every state `owner` holds; return the removal entries, to forward."""
        removed: list[AwarenessEntry] = []
        for client_id, record in self._records.items():
            if record.owner == owner and record.state is not None:
                record.state = None
                record.owner = None
                removed.append(AwarenessEntry(client_id, record.clock, None))
        return removed

    def expire(self, now: float) -> list[AwarenessEntry]:
        """Remove states not renewed within `outdated_timeout`; return the removals.

        Also forgets the clocks of states removed more than a timeout ago, which keeps
        the table bounded by the clients seen recently. Cheap until the oldest record
        can be due: the engine calls it for every room several times a second, and a
        record only ever becomes due `outdated_timeout` after its last change.
        """
        if now < self._expire_at:
            return []
        timeout = self.outdated_timeout
        # Whatever changes later is stamped later than now: no record can be due
        # before the soonest found here.
        soonest = now + timeout
        removed: list[AwarenessEntry] = []
        forget: list[ClientId] = []
        for client_id, record in self._records.items():
            if record.owner == SERVER_OWNER:
                continue
            if now - record.updated_at < timeout:
                soonest = min(soonest, record.updated_at + timeout)
                continue
            if record.state is None:
                forget.append(client_id)
                continue
            record.state = None
            record.owner = None
            record.updated_at = now
            removed.append(AwarenessEntry(client_id, record.clock, None))
        self._expire_at = soonest
        for client_id in forget:
            del self._records[client_id]
        return removed

    def entries(self) -> list[AwarenessEntry]:
        """Every present state, as the entries a joining client needs."""
        return [
            AwarenessEntry(client_id, record.clock, record.state)
            for client_id, record in self._records.items()
            if record.state is not None
        ]

    def owned_by(self, owner: PeerId) -> list[ClientId]:
        """The client ids whose present state `owner` set."""
        return [
            client_id
            for client_id, record in self._records.items()
            if record.owner == owner and record.state is not None
        ]
