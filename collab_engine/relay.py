"""The relay protocol: what two nodes of a cluster say of the clients one relays to
the other. Pure encode and decode, bytes in and values out, in lib0 encoding as the
y-websocket protocol is (`protocol`).

A client connects to any node (the edge). When another node owns its document, the
edge relays the client's frames to the owner, and the owner's frames for it back:

    edge -> owner
        open(conn, document, credentials, label)   a client joined (credentials: JSON, or
                                                   "" in open mode: anonymous, owner)
        frame(conn, data)                          one frame the client sent
        leave(conn)                                the client is gone
    owner -> edge
        deliver(conns, frames)                     these frames, in order, to each of conns
        shut(conn, code, reason)                   close the client with this code
    either way
        call(id, request)                          a request for the owner to serve (an HTTP
                                                   request of the API, as the server encodes it)
        answer(id, response)                       its response

`conn` is the edge's number for the client, unique on the edge. A broadcast reaches an
edge as one `deliver` naming every client of the room there, not one message per client.

    open     := varUint(0) varUint(conn) varString(document) varString(credentials)
                varString(label)
    frame    := varUint(1) varUint(conn) varBytes(data)
    leave    := varUint(2) varUint(conn)
    deliver  := varUint(3) varUint(n) varUint(conn)*n varUint(m) varBytes(frame)*m
    shut     := varUint(4) varUint(conn) varUint(code) varString(reason)
    call     := varUint(5) varUint(id) varBytes(request)
    answer   := varUint(6) varUint(id) varBytes(response)

`decode` accepts exactly these, or raises `ProtocolError`. A node trusts what another
node of its cluster says (the cluster shares its Redis: see docs/cluster.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final, TypeAlias

from .errors import ProtocolError
from .identity import Identity
from .permissions import Credentials, Role
from .protocol import Decoder, encode_var_bytes, encode_var_string, encode_var_uint

OPEN: Final = 0
FRAME: Final = 1
LEAVE: Final = 2
DELIVER: Final = 3
SHUT: Final = 4
CALL: Final = 5
ANSWER: Final = 6


@dataclass(frozen=True, slots=True)
class Open:
    conn: int
    document: str
    credentials: Credentials | None
    """None: open mode (an anonymous client, owner of every document)."""
    label: str


@dataclass(frozen=True, slots=True)
class Frame:
    conn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Leave:
    conn: int


@dataclass(frozen=True, slots=True)
class Deliver:
    conns: tuple[int, ...]
    frames: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Shut:
    conn: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Call:
    id: int
    request: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    id: int
    response: bytes


Relayed: TypeAlias = Open | Frame | Leave | Deliver | Shut | Call | Answer


def encode(message: Relayed) -> bytes:
    """The bytes of `message`."""
    match message:
        case Open(conn, document, credentials, label):
            return (
                encode_var_uint(OPEN)
                + encode_var_uint(conn)
                + encode_var_string(document)
                + encode_var_string(_credentials_json(credentials))
                + encode_var_string(label)
            )
        case Frame(conn, data):
            return encode_var_uint(FRAME) + encode_var_uint(conn) + encode_var_bytes(data)
        case Leave(conn):
            return encode_var_uint(LEAVE) + encode_var_uint(conn)
        case Deliver(conns, frames):
            parts = [encode_var_uint(DELIVER), encode_var_uint(len(conns))]
            parts += [encode_var_uint(conn) for conn in conns]
            parts.append(encode_var_uint(len(frames)))
            parts += [encode_var_bytes(frame) for frame in frames]
            return b"".join(parts)
        case Shut(conn, code, reason):
            return (
                encode_var_uint(SHUT)
                + encode_var_uint(conn)
                + encode_var_uint(code)
                + encode_var_string(reason)
            )
        case Call(id_, request):
            return encode_var_uint(CALL) + encode_var_uint(id_) + encode_var_bytes(request)
        case Answer(id_, response):
            return encode_var_uint(ANSWER) + encode_var_uint(id_) + encode_var_bytes(response)
    raise TypeError(f"not a relay message: {message!r}")


def decode(data: bytes) -> Relayed:
    """The message in `data`.

    Raises:
        ProtocolError: `data` is not exactly one relay message.
    """
    decoder = Decoder(data)
    kind = decoder.var_uint()
    message: Relayed
    if kind == OPEN:
        conn = decoder.var_uint()
        document = decoder.var_string()
        credentials = _credentials_of(decoder.var_string())
        message = Open(conn, document, credentials, decoder.var_string())
    elif kind == FRAME:
        message = Frame(decoder.var_uint(), decoder.var_bytes())
    elif kind == LEAVE:
        message = Leave(decoder.var_uint())
    elif kind == DELIVER:
        conns = tuple(decoder.var_uint() for _ in range(_count(decoder, data)))
        frames = tuple(decoder.var_bytes() for _ in range(_count(decoder, data)))
        message = Deliver(conns, frames)
    elif kind == SHUT:
        message = Shut(decoder.var_uint(), decoder.var_uint(), decoder.var_string())
    elif kind == CALL:
        message = Call(decoder.var_uint(), decoder.var_bytes())
    elif kind == ANSWER:
        message = Answer(decoder.var_uint(), decoder.var_bytes())
    else:
        raise ProtocolError(f"unknown relay message type {kind}")
    decoder.end()
    return message


def _count(decoder: Decoder, data: bytes) -> int:
    count = decoder.var_uint()
    if count > len(data):  # each element takes at least one byte
        raise ProtocolError(f"a count of {count} in a message of {len(data)} bytes")
    return count


def _credentials_json(credentials: Credentials | None) -> str:
    if credentials is None:
        return ""
    identity = credentials.identity
    return json.dumps(
        {
            "user": identity.user_id,
            "name": identity.name,
            "groups": list(identity.groups),
            "anonymous": identity.anonymous,
            "role": credentials.role.name.lower(),
            "documents": credentials.documents,
            "expires": credentials.expires_at,
            "admin": credentials.admin,
        },
        separators=(",", ":"),
    )


def _credentials_of(text: str) -> Credentials | None:
    if not text:
        return None
    try:
        fields = json.loads(text)
        identity = Identity(
            user_id=str(fields["user"]),
            name=str(fields["name"]),
            groups=tuple(str(group) for group in fields["groups"]),
            anonymous=bool(fields["anonymous"]),
        )
        expires = fields["expires"]
        return Credentials(
            identity=identity,
            role=Role[str(fields["role"]).upper()],
            documents=str(fields["documents"]),
            expires_at=None if expires is None else float(expires),
            admin=bool(fields["admin"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"bad credentials in a relayed open: {exc}") from exc
