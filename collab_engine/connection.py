"""A connection: one client of one room, whatever carries its frames.

This is the one seam every message of every transport passes through. A transport
(the server's wire below ASGI, the portable ASGI path, a client relayed from another
node) does three things and nothing more:

- hands each binary frame it reads to `Connection.receive`;
- sends what the peer's outbox holds (`Peer.deliver_to` / `Peer.batches`), in order;
- when `receive` returns a `Later`, reads nothing more until `Later.run` has been
  awaited (pause reading; TCP backpressure slows the client down meanwhile).

What a message does is decided by the room alone (`Room.receive`): sync, awareness,
locks, acknowledgements, versions. Errors close the peer with their close code
(`Peer.close`); the transport turns that into the close frame.
"""

from __future__ import annotations

from typing import Protocol

from .errors import CollabError, MessageTooBig
from .peer import Peer
from .protocol import Message, decode
from .room import Later, Room

__all__ = ["Carried", "Connection", "Later"]


class Carried(Protocol):
    """What a transport carries: a client's outbox, and where its frames go. A
    `Connection` to a room of this process, or, on a node of a cluster, a
    `cluster.Remote` relaying the client to the node that owns its document."""

    @property
    def peer(self) -> Peer:
        """The client's outbox, identity and rights; closed when the connection ends."""
        ...

    def receive(self, data: bytes) -> Later | None:
        """Act on one frame; what it returns is awaited (`catch_up`) before the next."""
        ...

    async def catch_up(self, later: Later) -> None:
        """Await what a frame had to wait for."""
        ...


class Connection:
    """`peer`'s connection to `room`: frames in, the room's decisions out.

    Args:
        room: the room the peer has joined (or will, with `join`).
        peer: the client's outbox, identity and rights.
        max_frame_size: the largest frame accepted, in bytes (larger closes with 1009).
    """

    def __init__(self, room: Room, peer: Peer, max_frame_size: int) -> None:
        self.room = room
        self.peer = peer
        self.max_frame_size = max_frame_size

    def join(self) -> None:
        """Join the room: the opening of the sync is queued for the peer."""
        self.room.join(self.peer)

    def leave(self) -> None:
        """Leave the room: the peer's awareness states are removed for everyone."""
        self.room.leave(self.peer)

    def decode(self, data: bytes) -> Message:
        """The message in a binary frame.

        Raises:
            MessageTooBig: the frame is over `max_frame_size` (1009).
            ProtocolError: it is not a message of the protocol (4400).
        """
        if len(data) > self.max_frame_size:
            raise MessageTooBig(f"frame of {len(data)} bytes is over {self.max_frame_size}")
        return decode(data)

    def receive(self, data: bytes) -> Later | None:
        """Act on one frame: decode it and hand it to the room. Returns what must be
        awaited before the next frame is read, if anything. A frame that does not
        decode, or that the room refuses, closes the peer with the error's code
        (None is returned). A closed peer's frames are dropped: its rights may be
        what closed it."""
        if self.peer.closed:
            return None
        try:
            return self.room.receive(self.peer, self.decode(data))
        except CollabError as error:
            self.peer.close(error)
            return None

    async def catch_up(self, later: Later) -> None:
        """Await what a frame had to wait for; an error closes the peer."""
        try:
            await later.run()
        except CollabError as error:
            self.peer.close(error)
