"""The engine's errors: a small tree, each fatal one carrying a WebSocket close code.

    CollabError                     base of everything the engine raises on purpose
    ├── ProtocolError        4400   a frame that is not a well-formed message
    │   ├── InvalidDocumentName 4400  a document name that is empty, too long, not
    │   │                             UTF-8, or holds control characters
    │   └── BadFrame         1002   a WebSocket frame that breaks RFC 6455 itself
    ├── MessageTooBig        1009   a frame or an awareness state over its limit
    ├── PeerTooSlow          1013   a peer that does not read fast enough ("try again later")
    ├── GoingAway            1001   the server is shutting down
    ├── Unauthenticated      4401   no token, a bad one, or one that expired
    ├── Forbidden            4403   no right to read this document (or not any more)
    ├── StorageError         1011   the document cannot be read from or written to storage
    │   ├── StoreUnavailable 1011   (in `store`) the database cannot be reached now
    │   ├── Unanswered       1011   (in `cluster`) the owner node did not answer a call
    │   └── Deposed          1012   (in `ownership`) a node of a cluster no longer owns it
    │       └── Elsewhere    1012   (in `ownership`) another node owns it
    ├── Closed               (the owner's) (in `cluster`) a relayed client closed by its owner
    └── (in `locks`, reported in the lock reply, never a close)
        ├── LockConflict     4409   the section is held by someone else
        ├── LockNotHeld      4409   renewing or releasing a lease one does not hold
        └── TooManyLocks     4429   the user or the document holds as many leases as allowed

An error ends exactly one connection: the server closes that WebSocket with
`close_code` and `reason`; the room, its other peers and the document are
untouched. Close reasons are cut to the 123 bytes a close frame can carry.
"""

from __future__ import annotations

from typing import ClassVar


class CollabError(Exception):
    """Base class: an error the engine raises on purpose, with a close code."""

    close_code: ClassVar[int] = 1011

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProtocolError(CollabError):
    """A frame that does not decode to a y-websocket message, or carries a bad payload."""

    close_code = 4400


class InvalidDocumentName(ProtocolError):
    """A document name that is empty, longer than the configured limit, not UTF-8, or
    holds control characters (see `names`)."""


class BadFrame(ProtocolError):
    """A WebSocket frame that breaks RFC 6455: unmasked, reserved bits set, an
    unknown opcode, a control frame over 125 bytes or fragmented, a continuation
    with nothing to continue. The bytes after it cannot be trusted to start a frame."""

    close_code = 1002


class MessageTooBig(CollabError):
    """A frame or an awareness state larger than its configured limit."""

    close_code = 1009


class PeerTooSlow(CollabError):
    """A peer that did not read its frames fast enough: its outbox filled up, or more
    than `--max-buffered` bytes sent to it were left unread.

    Nothing is lost: on reconnect, sync step 1/2 by state vector heals the peer.
    """

    close_code = 1013


def close_reason(reason: str) -> str:
    """Cut `reason` to the 123 UTF-8 bytes a WebSocket close frame can carry."""
    data = reason.encode()
    if len(data) <= 123:
        return reason
    return data[:123].decode(errors="ignore")


class GoingAway(CollabError):
    """The server is shutting down; the client should reconnect later."""

    close_code = 1001


class StorageError(CollabError):
    """A document that cannot be loaded from, or written to, its store.

    The reason names the document and, where one is known, the sequence number of
    the update at fault. The server refuses the document (or ends its connections)
    rather than serve part of it; stored data is never replaced by less.
    """

    close_code = 1011


class Unauthenticated(CollabError):
    """No credentials where the server needs them, bad ones, or expired ones."""

    close_code = 4401


class Forbidden(CollabError):
    """The credentials are good, but they give no right to read this document."""

    close_code = 4403
