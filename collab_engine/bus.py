"""The bus between the nodes of a cluster: the port the core sends through (`Bus`), the
port it hears through (`Listener`), and the pure bookkeeping of the links between nodes
(`Links`), which an implementation (`storage.redis.RedisBus`) runs.

A node sends *bodies* (opaque bytes: a relayed client's messages, the owner's frames
back) to one other node, and *notices* (opaque bytes: "the grants of document X
changed") to every node. The transport may lose what it carries (Redis restarted, a
connection cut, a queue full, a reader left behind): that must cost speed, never data.
So nothing is lost silently: where a body may have been lost, both ends of the link
hear `Listener.reset`, and the layers above close what depended on the link (clients
reconnect and resync by state vector); where a notice may have been lost, every node
hears `Listener.notices_lost` and re-reads what notices describe.

Links
-----
Bodies travel in *entries*, each carrying one or more bodies (or none). Each entry
from one node to another carries a `Stamp`: the sender's *generation* for that
destination (a random number) and the entry's sequence number in it (1, 2, 3, ...).
A generation ends when its sender can no longer vouch for what it sent in it; the next
entry begins a new generation at 1, marked `reset`. The receiver checks each entry's
stamp (`Continuity.check`) and gives a `Verdict`:

    IN_ORDER    the next entry of the generation it follows, or a sender's first
                entry ever, at 1 and not marked `reset`
    RESTARTED   a new generation at 1: the sender reset the link, and knows it
    GAP         entries are missing, which the sender does not know
    JOINED      the first entry heard from a sender, past the start of its generation:
                what came before was never seen here

The rules a bus keeps (`Links`), so that both ends of a link hear of every loss:
- A node reports `reset(peer)` whenever it may have lost something to or from `peer`:
  its queue to `peer` overflowed, a write to `peer` failed, it saw a `GAP` or `JOINED`
  from `peer`, its reader was cut off, or it saw `RESTARTED` from `peer`.
- With every such reset except the last, it also begins a new generation to `peer` (and
  drops what was queued for `peer`): `peer` sees `RESTARTED` and reports its own reset.
  A `RESTARTED` reset begins none: the peer already knows, and answering it would
  bounce between the two forever.
- A loss shows at the receiver when the next entry from the same sender arrives, and
  a reset announces itself at once with an entry that carries no bodies: a trailing
  loss followed by silence is reported when the sender next sends.

Notices are numbered the same way, one generation per notifying node (`Numbering`,
`Continuity`): `RESTARTED` or `GAP` means notices may have been lost (`notices_lost`);
`JOINED` is how every node first hears from the others and means nothing was lost.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class Listener(Protocol):
    """What a bus tells the node it serves. Calls are synchronous, on the event loop,
    never from inside `Bus.send` or `Bus.notify`; they must not block or raise (a bus
    logs what one raises and goes on). They may call `Bus.send` and `Bus.notify`."""

    def received(self, sender: str, bodies: Sequence[bytes]) -> None:
        """Bodies from `sender` to this node, in the order it sent them."""

    def reset(self, node: str) -> None:
        """Bodies to or from `node` may have been lost since the last reset of this
        link: everything in flight with `node` is void. Bodies sent to `node` after
        this call, and received from it after this call, belong to the new link."""

    def noticed(self, sender: str, bodies: Sequence[bytes]) -> None:
        """Notices from `sender` (this node included), in the order it sent them."""

    def notices_lost(self) -> None:
        """A notice may have been missed: re-read whatever notices describe."""


class Bus(Protocol):
    """The node's link to every other node of its cluster."""

    @property
    def node(self) -> str:
        """This node's name, unique in the cluster."""
        ...

    def send(self, to: str, body: bytes) -> None:
        """Queue `body` for node `to`. Never blocks, never raises.

        Bodies to one node arrive in the order they were sent, or the link is reset on
        both sides (`Listener.reset`): never silently lost. When the queue to `to` is
        full, everything queued for it is dropped, this body included, and so is
        anything sent to `to` until `reset(to)` is reported, which happens soon after
        `send` returns (never inside it: the listener closes what depended on the link,
        which may be what is sending).
        """
        ...

    def notify(self, body: bytes) -> None:
        """Queue a notice for every node, this one included. Never blocks, never
        raises; a notice that may have been lost is reported as `notices_lost` on
        every node."""
        ...

    @property
    def healthy(self) -> bool:
        """Whether the last round trip to the transport succeeded within the bus's
        health timeout (by the bus's clock)."""
        ...


def random_generation() -> int:
    """A new generation: random, so that a restarted process does not continue an old
    one."""
    return secrets.randbits(63) + 1


@dataclass(frozen=True, slots=True)
class Stamp:
    """What an entry carries to be checked: its sender's generation for the stream it
    is written to, and its number in that generation."""

    generation: int
    seq: int
    """1, 2, 3, ... within the generation."""
    reset: bool = False
    """The sender began this generation because it reset the link (first entry only)."""


class Verdict(Enum):
    """What an arriving entry's stamp says about the entries before it (see the
    module's docstring)."""

    IN_ORDER = "in order"
    RESTARTED = "restarted"
    GAP = "gap"
    JOINED = "joined"


class Numbering:
    """The sender's side: the stamp of each entry to each destination.

    Args:
        new_generation: where generations come from (random by default); a new one
            always differs from the one it replaces.
    """

    def __init__(self, new_generation: Callable[[], int] = random_generation) -> None:
        self._new_generation = new_generation
        self._next: dict[str, Stamp] = {}
        self.unannounced: set[str] = set()
        """Destinations whose new generation has no entry yet: they are owed one, even
        without bodies, so that the reset is heard at once."""

    def stamp(self, to: str) -> Stamp:
        """The stamp of the next entry to `to` (a first entry begins a generation)."""
        stamp = self._next.get(to) or Stamp(self._new_generation(), 1)
        self._next[to] = Stamp(stamp.generation, stamp.seq + 1)
        self.unannounced.discard(to)
        return stamp

    def restart(self, to: str) -> None:
        """End the generation to `to`: the next entry begins a new one, marked reset."""
        old = self._next.get(to)
        generation = self._new_generation()
        while old is not None and generation == old.generation:
            generation = self._new_generation()
        self._next[to] = Stamp(generation, 1, reset=True)
        self.unannounced.add(to)


class Continuity:
    """The receiver's side: checks the stamps of the entries arriving from each sender
    (entries of one sender in the order it wrote them; senders in any interleaving)."""

    def __init__(self) -> None:
        self._last: dict[str, Stamp] = {}

    def check(self, sender: str, stamp: Stamp) -> Verdict:
        """The verdict on the next entry from `sender`; it is then the one followed."""
        last = self._last.get(sender)
        self._last[sender] = stamp
        if last is not None and stamp.generation == last.generation:
            return Verdict.IN_ORDER if stamp.seq == last.seq + 1 else Verdict.GAP
        if stamp.seq != 1:
            return Verdict.JOINED if last is None else Verdict.GAP
        if last is None and not stamp.reset:
            return Verdict.IN_ORDER
        return Verdict.RESTARTED

    def senders(self) -> list[str]:
        """Every sender an entry has come from."""
        return list(self._last)


class Links:
    """One node's links with the others: the stamps of what it sends, the verdicts on
    what it receives, and the reset rules between the two (see the module's docstring).
    The caller reports the resets and drops what was queued for a restarted link.

    Args:
        new_generation: where generations come from (random by default).
    """

    def __init__(self, new_generation: Callable[[], int] = random_generation) -> None:
        self._numbering = Numbering(new_generation)
        self._continuity = Continuity()

    def stamp(self, to: str) -> Stamp:
        """The stamp of the next entry to `to`."""
        return self._numbering.stamp(to)

    def restart(self, to: str) -> None:
        """Begin a new generation to `to` (the caller reports `reset(to)`)."""
        self._numbering.restart(to)

    @property
    def unannounced(self) -> set[str]:
        """Destinations owed an entry, even one without bodies (do not modify)."""
        return self._numbering.unannounced

    def arrived(self, sender: str, stamp: Stamp) -> Verdict:
        """The verdict on an entry from `sender`. Anything but `IN_ORDER` is reported
        as `reset(sender)`; on `GAP` or `JOINED` the link to `sender` has been
        restarted too (the caller drops what was queued for it)."""
        verdict = self._continuity.check(sender, stamp)
        if verdict in (Verdict.GAP, Verdict.JOINED):
            self._numbering.restart(sender)
        return verdict

    def reconnected(self) -> list[str]:
        """The reader was cut off: anything from anyone may have been lost. Restarts
        the link to every sender heard from, and returns them (each reported as
        `reset`, with what was queued for it dropped)."""
        senders = self._continuity.senders()
        for sender in senders:
            self._numbering.restart(sender)
        return senders
