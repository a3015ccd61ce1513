"""The bus between the nodes of a cluster: the port, and the bookkeeping that makes
a lost message a reported one.

A node sends bodies (bytes) to another node by its id, and notices to every node.
The bus promises order per pair of nodes, never delivery: what may have been lost
(its store restarted, a queue overflowed, a reader fell too far behind) is reported
as a reset of that link, on both sides, and what was in flight on it is void. The
layers above close what depended on it (relayed clients, who reconnect and resync by
state vector): loss costs a reconnect, never content.

`Sequencing` is that bookkeeping, pure: the sender numbers what it sends to each node
within a generation (a new one at every start and after every reset), and the
receiver checks that each batch follows the last one it had from that sender. The
implementation over Redis streams is `storage.redis.RedisBus`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Listener(Protocol):
    """Who the bus hands what it receives to. Called on the event loop; must not
    raise and must not block."""

    def received(self, sender: str, bodies: Sequence[bytes]) -> None:
        """Bodies from `sender`, in the order it sent them."""

    def reset(self, node: str) -> None:
        """Bodies to or from `node` may have been lost since the last reset: whatever
        was in flight with it is void."""

    def noticed(self, sender: str, bodies: Sequence[bytes]) -> None:
        """Notices from `sender` (this node's own too), in the order it sent them."""

    def notices_lost(self) -> None:
        """A notice may have been missed: re-read whatever notices describe."""


class Bus(Protocol):
    """This node's end of the bus."""

    node: str

    def send(self, to: str, body: bytes) -> None:
        """Queue `body` for node `to`. Never blocks, never raises: bodies to one node
        arrive in order, or the link is reset on both sides."""

    def notify(self, body: bytes) -> None:
        """Queue a notice for every node, this one included."""

    @property
    def healthy(self) -> bool:
        """Whether the bus reached its store recently (a node cut off from the others
        stops renewing its lease, so that its documents can move)."""
        ...


@dataclass(frozen=True, slots=True)
class Stamp:
    """Where a batch stands in its link: its sender's generation, and its number."""

    generation: str
    seq: int


class Sequencing:
    """Numbers batches per destination, and checks the numbers of those received.

    The sending side: `stamp(to)` for each batch sent to `to`; `restart(to)` after
    the link lost something, so that the receiver sees a new generation. The
    receiving side: `check(sender, stamp)` says whether the link is intact.
    """

    def __init__(self) -> None:
        self._out: dict[str, Stamp] = {}
        self._in: dict[str, Stamp] = {}

    def stamp(self, to: str) -> Stamp:
        """The stamp of the next batch for `to`."""
        last = self._out.get(to)
        stamp = Stamp(_generation(), 1) if last is None else Stamp(last.generation, last.seq + 1)
        self._out[to] = stamp
        return stamp

    def restart(self, to: str) -> None:
        """Start a new generation for `to`: the receiver will report a reset."""
        self._out.pop(to, None)

    def announce(self, to: str) -> str:
        """Start a new generation for `to` and return it, to be announced in a reset:
        the next batch for `to` is its number 1."""
        generation = _generation()
        self._out[to] = Stamp(generation, 0)
        return generation

    def check(self, sender: str, stamp: Stamp) -> bool:
        """Record `stamp` from `sender`; whether the batch follows the last one seen
        from it (the first batch ever seen from a sender follows nothing, and is
        taken as intact when it is its generation's first)."""
        last = self._in.get(sender)
        self._in[sender] = stamp
        if last is None:
            return stamp.seq == 1
        if stamp.generation == last.generation:
            return stamp.seq == last.seq + 1
        return False  # a new generation: the sender restarted or reset the link

    def follow(self, sender: str, generation: str) -> None:
        """`sender` announced `generation` (a reset): its next batch is its number 1."""
        self._in[sender] = Stamp(generation, 0)

    def forget(self, sender: str) -> None:
        """Forget what was seen from `sender` (its reader lost track of its stream)."""
        self._in.pop(sender, None)

    def senders(self) -> list[str]:
        """The senders seen so far."""
        return list(self._in)


def _generation() -> str:
    return secrets.token_hex(6)
