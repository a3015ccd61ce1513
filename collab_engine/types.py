"""The vocabulary of the engine: ids and wire values, in Yjs terms.

Everything here is a plain value. Binary CRDT payloads stay `bytes` (aliases
name what the bytes mean); nothing on the hot path is validated by a model.
"""

from __future__ import annotations

from typing import NewType, TypeAlias

DocumentName = NewType("DocumentName", str)
"""The name a document is addressed by: the whole WebSocket path after the first `/`."""

PeerId = NewType("PeerId", int)
"""One connection (or one in-process session) to a room, unique within the process."""

ClientId = NewType("ClientId", int)
"""A Yjs client id: the id a replica writes its items and its awareness state under."""

Update: TypeAlias = bytes
"""A Yjs update (lib0 v1 encoding), as `Y.encodeStateAsUpdate` writes it."""

StateVector: TypeAlias = bytes
"""A Yjs state vector (lib0 v1 encoding), as `Y.encodeStateVector` writes it."""

Frame: TypeAlias = bytes
"""One encoded y-websocket message: what one binary WebSocket frame carries."""
