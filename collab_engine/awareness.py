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
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import MessageTooBig
from .protocol import AwarenessEntry
from .types import ClientId, PeerId


@dataclass(slots=True)
class _Record:
    clock: int
    state: str | None
    owner: PeerId | None
    updated_at: float


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

    def apply(
        self, entries: tuple[AwarenessEntry, ...], owner: PeerId, now: float
    ) -> list[AwarenessEntry]:
        """Apply entries sent by `owner`; return the accepted ones, to forward.

        The sender of an accepted entry becomes the owner of its client id (a client
        that reconnects takes its id over from its previous connection).

        Raises:
            MessageTooBig: a state is over `max_state_size`; nothing is applied.
        """
        for entry in entries:
            if entry.state is not None and len(entry.state.encode()) > self.max_state_size:
                raise MessageTooBig(
                    f"awareness state of client {entry.client_id} is over "
                    f"{self.max_state_size} bytes"
                )
        accepted: list[AwarenessEntry] = []
        for entry in entries:
            record = self._records.get(entry.client_id)
            if record is None:
                if entry.state is None:
                    # Removing a state nobody has: remember the clock, forward nothing.
                    self._records[entry.client_id] = _Record(entry.clock, None, None, now)
                    continue
                self._records[entry.client_id] = _Record(entry.clock, entry.state, owner, now)
                accepted.append(entry)
                continue
            if record.clock < entry.clock or (
                record.clock == entry.clock and entry.state is None and record.state is not None
            ):
                record.clock = entry.clock
                record.state = entry.state
                record.owner = owner if entry.state is not None else None
                record.updated_at = now
                accepted.append(entry)
        return accepted

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
        the table bounded by the clients seen recently.
        """
        removed: list[AwarenessEntry] = []
        forget: list[ClientId] = []
        for client_id, record in self._records.items():
            if now - record.updated_at < self.outdated_timeout:
                continue
            if record.state is None:
                forget.append(client_id)
                continue
            record.state = None
            record.owner = None
            record.updated_at = now
            removed.append(AwarenessEntry(client_id, record.clock, None))
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
