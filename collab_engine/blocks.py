"""The blocks of a Yjs update: the clock ranges of one client's items, and what is deleted.

Yjs (and Yrs) store a client's insertions as blocks: an item covers the clock range
`[clock, clock + length)`, `length` counted in UTF-16 code units for strings. Where
the blocks of a client start and end is what turns a relative position (an item id)
into an index the way Yjs does; pycrdt does not expose it, so it is read here from
the update `Doc.get_update(state_vector)` encodes (lib0 v1 encoding, as Yjs's
`encodeStateAsUpdate`). Pure: bytes in, values out.
"""

from __future__ import annotations

from bisect import bisect_right
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


KINDS: Final = ("map", "text", "xml", "array")
"""The kinds of root `root_kinds` tells apart, strongest hint first."""
_XML_TEXT: Final = 6


def root_kinds(update: bytes) -> dict[str, str]:
    """The kind of each root type `update` holds content in: "map", "text", "xml"
    (an XmlFragment) or "array".

    A Yjs update does not say what type a root is; its items do. An item that names
    its parent (a root, by name) tells with its map key (a Map) or its content
    (strings and formats: Text; XML nodes: XmlFragment; values: Array). Items placed
    next to another item (an origin) name no parent: they take their origin's root
    and key, which is followed only for roots whose named items are all deleted. A
    root whose every item is deleted and garbage-collected is not in the result.

    Raises:
        ProtocolError: `update` is not a well-formed v1 update.
    """
    reader = _Reader(update)
    items: list[_Item] = []
    for _ in range(reader.var_uint()):
        count = reader.var_uint()
        client = reader.var_uint()
        clock = reader.var_uint()
        for _ in range(count):
            item = _Item(client, clock)
            length = _struct(reader, item=item)
            item.length = length
            items.append(item)
            clock += length
    hints: dict[str, set[str]] = {}
    for item in items:
        if item.root is not None:
            found = hints.setdefault(item.root, set())
            if item.key:
                found.add("map")  # even deleted: a key is a map's
            elif item.kind is not None:
                found.add(item.kind)
    if any(not found for found in hints.values()):
        _follow_origins(items, hints)
    return {
        root: next(kind for kind in KINDS if kind in found)
        for root, found in hints.items()
        if found
    }


class _Item:
    """What `root_kinds` reads of one struct."""

    __slots__ = ("client", "clock", "length", "origin", "right", "root", "key", "kind", "nested")

    def __init__(self, client: int, clock: int) -> None:
        self.client = client
        self.clock = clock
        self.length = 0
        self.origin: tuple[int, int] | None = None
        self.right: tuple[int, int] | None = None
        self.root: str | None = None
        self.key: bool = False
        self.kind: str | None = None
        self.nested = False
        """The parent is another item (a type nested in a root), not a root."""


def _follow_origins(items: list[_Item], hints: dict[str, set[str]]) -> None:
    # Items by client, in clock order (as the update lists them), to find the item
    # holding an id by bisection.
    by_client: dict[int, list[_Item]] = {}
    for item in items:
        by_client.setdefault(item.client, []).append(item)
    starts = {client: [item.clock for item in row] for client, row in by_client.items()}

    def holder(item_id: tuple[int, int]) -> _Item | None:
        row = by_client.get(item_id[0])
        if row is None:
            return None
        index = bisect_right(starts[item_id[0]], item_id[1]) - 1
        if index < 0 or item_id[1] >= row[index].clock + row[index].length:
            return None
        return row[index]

    for item in items:
        if item.root is not None or item.nested or item.kind is None:
            continue
        chain = [item]
        current: _Item | None = item
        while current is not None and current.root is None and not current.nested:
            neighbour = current.origin or current.right
            current = holder(neighbour) if neighbour is not None else None
            if current is not None:
                if current in chain:
                    break
                chain.append(current)
        if current is None or current.root is None:
            continue
        for link in chain:  # everything on the way has the same parent and key
            link.root, link.key = current.root, current.key
        if current.root in hints:
            hints[current.root].add("map" if current.key else item.kind)


def _struct(reader: _Reader, roots: set[str] | None = None, *, item: _Item | None = None) -> int:
    """Read one struct; return its length in clock units (and add the root it names
    as its parent to `roots`)."""
    info = reader.byte()
    kind = info & 0b11111
    if kind in (_GC, _SKIP):
        return reader.var_uint()
    if info & 0x80:
        origin = reader.var_uint(), reader.var_uint()
        if item is not None:
            item.origin = origin
    if info & 0x40:
        right = reader.var_uint(), reader.var_uint()
        if item is not None:
            item.right = right
    if not info & 0xC0:
        if reader.var_uint() == 1:
            root = reader.var_string()  # the parent is a root, by name
            if roots is not None:
                roots.add(root)
            if item is not None:
                item.root = root
        else:
            reader.var_uint(), reader.var_uint()  # the parent is an item, by id
            if item is not None:
                item.nested = True
        if info & 0x20:
            reader.var_string()  # the key in a map
            if item is not None:
                item.key = True
    if item is not None:
        item.kind = _KIND_OF_CONTENT.get(kind)
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
        type_ref = reader.var_uint()
        if type_ref in (_XML_ELEMENT, _XML_HOOK):
            reader.var_string()
        if item is not None and type_ref in (_XML_ELEMENT, _XML_HOOK, _XML_TEXT):
            item.kind = "xml"
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


_KIND_OF_CONTENT: Final = {
    _JSON: "array",
    _BINARY: "array",
    _STRING: "text",
    _EMBED: "text",
    _FORMAT: "text",
    _TYPE: "array",  # a nested type in a sequence; XML nodes are told apart above
    _ANY: "array",
    _DOC: "array",
}


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
