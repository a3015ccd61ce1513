"""The y-websocket wire protocol: pure encode and decode, bytes in and values out.

One binary WebSocket frame carries one message, in lib0 encoding
(`varUint` is LEB128 limited to 2**53 - 1, as JavaScript numbers are;
`varBytes` and `varString` are a `varUint` length then the bytes, UTF-8 for strings):

    syncStep1(sv)        := varUint(0) varUint(0) varBytes(stateVector)
    syncStep2(update)    := varUint(0) varUint(1) varBytes(update)
    update(update)       := varUint(0) varUint(2) varBytes(update)
    awareness(entries)   := varUint(1) varBytes(varUint(n) entry*n)
        entry            := varUint(clientId) varUint(clock) varString(JSON state or "null")
    permissionDenied(r)  := varUint(2) varUint(0) varString(reason)
    queryAwareness       := varUint(3)

and two messages of ours, under a message type y-websocket does not use (100):

    requestPersisted     := varUint(100) varUint(0)
    persisted(count)     := varUint(100) varUint(1) varUint(count)
    lockRequest(json)    := varUint(100) varUint(2) varString(JSON object)
    lockReply(json)      := varUint(100) varUint(3) varString(JSON object)
    versionRequest(json) := varUint(100) varUint(4) varString(JSON object)
    versionReply(json)   := varUint(100) varUint(5) varString(JSON object)

A client that sends `requestPersisted` is told, with `persisted(count)`, whenever
more of its updates are durable: the first `count` update messages (sync step 2
and update) it sent on this connection are stored and survive a crash of the
server. The server answers `requestPersisted` at once with the current count, so
a client learns whether a server acknowledges at all. Only clients that ask get
these messages: y-websocket logs an error for every message type it does not know.

`decode` accepts exactly these and nothing else: any other input raises
`ProtocolError`, and no other exception escapes it (property-tested). The CRDT
payloads (state vectors, updates) are returned as opaque bytes; whether they are
valid Yjs is for the document to decide when it applies them. The JSON ones (awareness
states, lock and version bodies) are read by `json_text.parse`: strict JSON nested at
most `json_text.MAX_DEPTH` (100) deep, or `ProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from . import json_text
from .errors import ProtocolError
from .types import ClientId, Frame, StateVector, Update

MESSAGE_SYNC: Final = 0
MESSAGE_AWARENESS: Final = 1
MESSAGE_AUTH: Final = 2
MESSAGE_QUERY_AWARENESS: Final = 3

SYNC_STEP1: Final = 0
SYNC_STEP2: Final = 1
SYNC_UPDATE: Final = 2

AUTH_PERMISSION_DENIED: Final = 0

MESSAGE_COLLAB: Final = 100
"""The message type of collab-engine's own messages (y-websocket uses 0 to 3)."""
COLLAB_REQUEST_PERSISTED: Final = 0
COLLAB_PERSISTED: Final = 1
COLLAB_LOCK_REQUEST: Final = 2
COLLAB_LOCK_REPLY: Final = 3
COLLAB_VERSION_REQUEST: Final = 4
COLLAB_VERSION_REPLY: Final = 5

MAX_VAR_UINT: Final = 2**53 - 1
"""The largest integer lib0 (JavaScript) can read back; larger ones are refused."""


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """A replica's state vector: "send me what I am missing"."""

    state_vector: StateVector


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """The reply to sync step 1: every update the asker was missing."""

    update: Update


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """An incremental document update."""

    update: Update


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's awareness state at a clock.

    `state` is the JSON text of an object, or `None` when the client has left
    (the wire carries the text `null`).
    """

    client_id: ClientId
    clock: int
    state: str | None
    value: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """`state` parsed, where the codec read it from a frame (it parses it to refuse
    what is not a JSON object, and the presence policy reads it: parsed once for
    both); None when `state` is None or the entry was made in process."""


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    """A batch of awareness entries."""

    entries: tuple[AwarenessEntry, ...]


@dataclass(frozen=True, slots=True)
class PermissionDenied:
    """The y-protocols auth message: a write or a read was refused, with a reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """A request for the awareness states of every client in the room."""


@dataclass(frozen=True, slots=True)
class RequestPersisted:
    """Ours: "tell me when my updates are durable" (client to server)."""


@dataclass(frozen=True, slots=True)
class Persisted:
    """Ours: the first `count` updates this connection sent are durable (server to client)."""

    count: int


@dataclass(frozen=True, slots=True)
class LockRequest:
    """Ours: acquire, renew or release a lock (client to server); `body` is a JSON object."""

    body: str


@dataclass(frozen=True, slots=True)
class LockReply:
    """Ours: the answer to a lock request (server to client); `body` is a JSON object."""

    body: str


@dataclass(frozen=True, slots=True)
class VersionRequest:
    """Ours: name a version, or list them (client to server); `body` is a JSON object."""

    body: str


@dataclass(frozen=True, slots=True)
class VersionReply:
    """Ours: the answer to a version request (server to client); `body` is a JSON object."""

    body: str


Message: TypeAlias = (
    SyncStep1
    | SyncStep2
    | SyncUpdate
    | AwarenessUpdate
    | PermissionDenied
    | QueryAwareness
    | RequestPersisted
    | Persisted
    | LockRequest
    | LockReply
    | VersionRequest
    | VersionReply
)


# -- encoding -------------------------------------------------------------------------


def _var_uint(value: int) -> bytes:
    if value < 0 or value > MAX_VAR_UINT:
        raise ValueError(f"varUint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _var_bytes(data: bytes) -> bytes:
    return _var_uint(len(data)) + data


def encode_var_uint(value: int) -> bytes:
    """lib0's varUint of `value` (0 to 2**53 - 1)."""
    return _var_uint(value)


def encode_var_bytes(data: bytes) -> bytes:
    """lib0's varBytes: the length as a varUint, then the bytes."""
    return _var_bytes(bytes(data))


def encode_var_string(text: str) -> bytes:
    """lib0's varString: the UTF-8 length as a varUint, then the bytes."""
    return _var_bytes(text.encode())


def encode_sync_step1(state_vector: StateVector) -> Frame:
    """Encode a sync step 1 message carrying `state_vector`."""
    return b"\x00\x00" + _var_bytes(state_vector)


def encode_sync_step2(update: Update) -> Frame:
    """Encode a sync step 2 message carrying `update`."""
    return b"\x00\x01" + _var_bytes(update)


def encode_sync_update(update: Update) -> Frame:
    """Encode an update message carrying `update`."""
    return b"\x00\x02" + _var_bytes(update)


def encode_awareness(entries: tuple[AwarenessEntry, ...] | list[AwarenessEntry]) -> Frame:
    """Encode an awareness message carrying `entries` in order."""
    body = bytearray(_var_uint(len(entries)))
    for entry in entries:
        body += _var_uint(entry.client_id)
        body += _var_uint(entry.clock)
        body += _var_bytes(b"null" if entry.state is None else entry.state.encode())
    return b"\x01" + _var_bytes(bytes(body))


def encode_permission_denied(reason: str) -> Frame:
    """Encode the y-protocols auth "permission denied" message."""
    return b"\x02\x00" + _var_bytes(reason.encode())


def encode_query_awareness() -> Frame:
    """Encode a query-awareness message."""
    return b"\x03"


def encode_request_persisted() -> Frame:
    """Encode our request for persisted acknowledgements."""
    return b"\x64\x00"


def encode_persisted(count: int) -> Frame:
    """Encode our acknowledgement: the first `count` updates received are durable."""
    return b"\x64\x01" + _var_uint(count)


def encode_lock_request(body: str) -> Frame:
    """Encode our lock request carrying the JSON `body`."""
    return b"\x64\x02" + _var_bytes(body.encode())


def encode_lock_reply(body: str) -> Frame:
    """Encode our lock reply carrying the JSON `body`."""
    return b"\x64\x03" + _var_bytes(body.encode())


def encode_version_request(body: str) -> Frame:
    """Encode our version request carrying the JSON `body`."""
    return b"\x64\x04" + _var_bytes(body.encode())


def encode_version_reply(body: str) -> Frame:
    """Encode our version reply carrying the JSON `body`."""
    return b"\x64\x05" + _var_bytes(body.encode())


def encode(message: Message) -> Frame:
    """Encode any message; the inverse of `decode`."""
    match message:
        case SyncStep1(state_vector):
            return encode_sync_step1(state_vector)
        case SyncStep2(update):
            return encode_sync_step2(update)
        case SyncUpdate(update):
            return encode_sync_update(update)
        case AwarenessUpdate(entries):
            return encode_awareness(entries)
        case PermissionDenied(reason):
            return encode_permission_denied(reason)
        case QueryAwareness():
            return encode_query_awareness()
        case RequestPersisted():
            return encode_request_persisted()
        case Persisted(count):
            return encode_persisted(count)
        case LockRequest(body):
            return encode_lock_request(body)
        case LockReply(body):
            return encode_lock_reply(body)
        case VersionRequest(body):
            return encode_version_request(body)
        case VersionReply(body):
            return encode_version_reply(body)
    raise TypeError(f"not a message: {message!r}")


# -- decoding -------------------------------------------------------------------------


class Decoder:
    """lib0 decoding: a cursor over bytes; every read past the end raises `ProtocolError`."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def var_uint(self) -> int:
        data, pos = self.data, self.pos
        value = 0
        shift = 0
        while True:
            if pos >= len(data):
                raise ProtocolError("truncated message: expected a varUint")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 53:
                raise ProtocolError("varUint longer than 53 bits")
        if value > MAX_VAR_UINT:
            raise ProtocolError("varUint larger than 2**53 - 1")
        self.pos = pos
        return value

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ProtocolError("truncated message: expected a byte")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if end > len(self.data):
            raise ProtocolError(f"truncated message: {count} bytes expected")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def var_bytes(self) -> bytes:
        length = self.var_uint()
        end = self.pos + length
        if end > len(self.data):
            raise ProtocolError(
                f"truncated message: {length} bytes announced, {len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def var_string(self) -> str:
        try:
            return self.var_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("string is not valid UTF-8") from exc

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.pos} unexpected bytes after the message")


def _awareness_state(text: str) -> tuple[str | None, dict[str, Any] | None]:
    if text == "null":
        return None, None
    try:
        value = json_text.parse(text)
    except ProtocolError as error:
        raise ProtocolError(f"awareness state is not valid JSON: {error.reason}") from None
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise ProtocolError("awareness state must be a JSON object or null")
    return text, value


def _json_object(text: str) -> None:
    try:
        value = json_text.parse(text)
    except ProtocolError as error:
        raise ProtocolError(f"lock or version message is not valid JSON: {error.reason}") from None
    if not isinstance(value, dict):
        raise ProtocolError("lock or version message must be a JSON object")


def _decode_awareness(payload: bytes) -> AwarenessUpdate:
    reader = Decoder(payload)
    count = reader.var_uint()
    # Each entry takes at least 3 bytes: refuse impossible counts before looping.
    if count * 3 > len(payload):
        raise ProtocolError(f"awareness update announces {count} entries in {len(payload)} bytes")
    entries = []
    for _ in range(count):
        client_id = ClientId(reader.var_uint())
        clock = reader.var_uint()
        state, value = _awareness_state(reader.var_string())
        entries.append(AwarenessEntry(client_id, clock, state, value))
    reader.end()
    return AwarenessUpdate(tuple(entries))


def encode_state_vector(clocks: dict[int, int]) -> StateVector:
    """Encode {client id: clock} as a Yjs state vector; the inverse of `decode_state_vector`."""
    out = bytearray(_var_uint(len(clocks)))
    for client, clock in clocks.items():
        out += _var_uint(client) + _var_uint(clock)
    return bytes(out)


def decode_state_vector(state_vector: StateVector) -> dict[int, int]:
    """A Yjs state vector as {client id: clock} (the number of its items known).

    Raises:
        ProtocolError: the bytes are not a state vector.
    """
    reader = Decoder(state_vector)
    count = reader.var_uint()
    if count * 2 > len(state_vector):
        raise ProtocolError(f"state vector announces {count} clients in {len(state_vector)} bytes")
    clocks = {}
    for _ in range(count):
        client = reader.var_uint()
        clocks[client] = reader.var_uint()
    reader.end()
    return clocks


def decode(frame: bytes) -> Message:
    """Decode one frame into a message.

    Raises:
        ProtocolError: `frame` is not exactly one well-formed message. Nothing else
            is raised, whatever the input.
    """
    reader = Decoder(frame)
    kind = reader.var_uint()
    message: Message
    if kind == MESSAGE_SYNC:
        step = reader.var_uint()
        if step == SYNC_STEP1:
            message = SyncStep1(reader.var_bytes())
        elif step == SYNC_STEP2:
            message = SyncStep2(reader.var_bytes())
        elif step == SYNC_UPDATE:
            message = SyncUpdate(reader.var_bytes())
        else:
            raise ProtocolError(f"unknown sync message type {step}")
    elif kind == MESSAGE_AWARENESS:
        message = _decode_awareness(reader.var_bytes())
    elif kind == MESSAGE_AUTH:
        auth = reader.var_uint()
        if auth != AUTH_PERMISSION_DENIED:
            raise ProtocolError(f"unknown auth message type {auth}")
        message = PermissionDenied(reader.var_string())
    elif kind == MESSAGE_QUERY_AWARENESS:
        message = QueryAwareness()
    elif kind == MESSAGE_COLLAB:
        sub = reader.var_uint()
        if sub == COLLAB_REQUEST_PERSISTED:
            message = RequestPersisted()
        elif sub == COLLAB_PERSISTED:
            message = Persisted(reader.var_uint())
        elif sub in (COLLAB_LOCK_REQUEST, COLLAB_LOCK_REPLY):
            body = reader.var_string()
            _json_object(body)
            message = LockRequest(body) if sub == COLLAB_LOCK_REQUEST else LockReply(body)
        elif sub in (COLLAB_VERSION_REQUEST, COLLAB_VERSION_REPLY):
            body = reader.var_string()
            _json_object(body)
            message = VersionRequest(body) if sub == COLLAB_VERSION_REQUEST else VersionReply(body)
        else:
            raise ProtocolError(f"unknown collab-engine message type {sub}")
    else:
        raise ProtocolError(f"unknown message type {kind}")
    reader.end()
    return message
