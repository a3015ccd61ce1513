"""The blocks of a Yjs update: the clock ranges of one client's items, and what is deleted.

Yjs (and Yrs) store a client's insertions as blocks: an item covers the clock range
`[clock, clock + length)`, `length` counted in UTF-16 code units for strings. Where
the blocks of a client start and end is what turns a relative position (an item id)
into an index the way Yjs does; pycrdt does not expose it, so it is read here from
the update `Doc.get_update(state_vector)` encodes (lib0 v1 encoding, as Yjs's
`encodeStateAsUpdate`). Pure: bytes in, values out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .errors import ProtocolError
from .protocol import Decoder

_GC: Final = 0
_DELETED: Final = 1
_JSON: Final = 2
_BINARY: Final = 3
_STRING: Final = 4
_EMBED: Final = 5
_FORMAT: Final = 6
_TYPE: Final = 7
_ANY: Final = 8
_DOC: Final = 9
_SKIP: Final = 10
_XML_ELEMENT: Final = 3
_XML_HOOK: Final = 5


@dataclass(frozen=True, slots=True)
class Blocks:
    """One client's blocks in an update, and the update's deleted ranges of it."""

    starts: list[tuple[int, int]]
    """(clock, length) of each block, in clock order."""
    deleted: list[tuple[int, int]]
    """(clock, length) ranges deleted."""

    def block_of(self, clock: int) -> tuple[int, int] | None:
        """The (start, length) of the block holding `clock`, if any."""
        for start, length in self.starts:
            if start <= clock < start + length:
                return start, length
        return None

    def is_deleted(self, clock: int) -> bool:
        """Whether the item at `clock` is deleted."""
        return any(start <= clock < start + length for start, length in self.deleted)


def client_blocks(update: bytes, client: int) -> Blocks:
    """The blocks of `client` in a Yjs v1 `update`.

    Raises:
        ProtocolError: `update` is not a well-formed v1 update.
    """
    reader = _Reader(update)
    starts: list[tuple[int, int]] = []
    for _ in range(reader.var_uint()):
        count = reader.var_uint()
        owner = reader.var_uint()
        clock = reader.var_uint()
        for _ in range(count):
            length = _struct(reader)
            if owner == client:
                starts.append((clock, length))
            clock += length
    deleted: list[tuple[int, int]] = []
    for _ in range(reader.var_uint()):
        owner = reader.var_uint()
        for _ in range(reader.var_uint()):
            start, length = reader.var_uint(), reader.var_uint()
            if owner == client:
                deleted.append((start, length))
    return Blocks(starts, deleted)


def clock_ends(update: bytes) -> dict[int, int]:
    """For each client with structs in `update`, the clock just past its last one.

    Raises:
        ProtocolError: `update` is not a well-formed v1 update.
    """
    reader = _Reader(update)
    ends: dict[int, int] = {}
    for _ in range(reader.var_uint()):
        count = reader.var_uint()
        owner = reader.var_uint()
        clock = reader.var_uint()
        for _ in range(count):
            clock += _struct(reader)
        ends[owner] = max(ends.get(owner, 0), clock)
    return ends


def root_names(update: bytes) -> set[str]:
    """The root types `update` names as the parent of one of its items.

    Raises:
        ProtocolError: `update` is not a well-formed v1 update.
    """
    reader = _Reader(update)
    names: set[str] = set()
    for _ in range(reader.var_uint()):
        count = reader.var_uint()
        reader.var_uint(), reader.var_uint()  # client, clock
        for _ in range(count):
            _struct(reader, names)
    return names


def _struct(reader: _Reader, roots: set[str] | None = None) -> int:
    """Read one struct; return its length in clock units (and add the root it names
    as its parent to `roots`)."""
    info = reader.byte()
    kind = info & 0b11111
    if kind in (_GC, _SKIP):
        return reader.var_uint()
    if info & 0x80:
        reader.var_uint(), reader.var_uint()  # origin
    if info & 0x40:
        reader.var_uint(), reader.var_uint()  # right origin
    if not info & 0xC0:
        if reader.var_uint() == 1:
            root = reader.var_string()  # the parent is a root, by name
            if roots is not None:
                roots.add(root)
        else:
            reader.var_uint(), reader.var_uint()  # the parent is an item, by id
        if info & 0x20:
            reader.var_string()  # the key in a map
    if kind == _DELETED:
        return reader.var_uint()
    if kind == _JSON:
        count = reader.var_uint()
        for _ in range(count):
            reader.var_string()
        return count
    if kind == _BINARY:
        reader.var_bytes()
        return 1
    if kind == _STRING:
        return len(reader.var_string().encode("utf-16-le", "surrogatepass")) // 2
    if kind == _EMBED:
        reader.var_string()
        return 1
    if kind == _FORMAT:
        reader.var_string(), reader.var_string()
        return 1
    if kind == _TYPE:
        if reader.var_uint() in (_XML_ELEMENT, _XML_HOOK):
            reader.var_string()
        return 1
    if kind == _ANY:
        count = reader.var_uint()
        for _ in range(count):
            reader.any()
        return count
    if kind == _DOC:
        reader.var_string()
        reader.any()
        return 1
    raise ProtocolError(f"unknown struct content {kind}")


class _Reader(Decoder):
    """lib0 decoding, with what updates need beyond the y-websocket messages."""

    __slots__ = ()

    def var_int(self) -> None:
        byte = self.byte()
        while byte & 0x80:
            byte = self.byte()

    def var_string(self) -> str:
        # Yjs writes lone surrogates as they are: keep them.
        return self.var_bytes().decode("utf-8", "surrogatepass")

    def any(self) -> None:
        kind = self.byte()
        if kind in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if kind == 125:
            self.var_int()
        elif kind == 124:
            self.take(4)
        elif kind in (123, 122):
            self.take(8)
        elif kind == 119:
            self.var_string()
        elif kind == 118:
            for _ in range(self.var_uint()):
                self.var_string()
                self.any()
        elif kind == 117:
            for _ in range(self.var_uint()):
                self.any()
        elif kind == 116:
            self.var_bytes()
        else:
            raise ProtocolError(f"unknown lib0 any type {kind}")
