"""The engine: the owner of rooms, and the embedding API.

    async with Engine() as engine:
        async with engine.room("notes/today") as room:
            with room.doc.transaction():
                room.doc.get("body", type=Text).insert(0, "Hello")

A room is created on its first use and unloaded once nobody has used it for
`unload_grace` seconds. Connected clients see an in-process change exactly as they
see another client's: both go through the room's document observer. The engine
owns one background task, the sweeper (awareness timeouts, idle rooms); it lives
and dies with the `async with` block.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from .errors import GoingAway
from .room import Room
from .types import DocumentName

log = logging.getLogger("collab_engine.engine")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's limits and timings. Every one is explicit and tested."""

    max_awareness_state_size: int = 64 * 1024
    """Largest awareness state accepted, in bytes of JSON; larger closes with 1009."""
    awareness_timeout: float = 30.0
    """Seconds before an awareness state that was not renewed is removed (y-protocols' value)."""
    outbox_size: int = 1024
    """Frames that may wait for one peer's writer before it is evicted with 1013."""
    unload_grace: float = 2.0
    """Seconds a room stays loaded after its last user leaves."""
    sweep_interval: float = 0.25
    """Seconds between two sweeps (awareness timeouts, idle rooms)."""


@dataclass(slots=True)
class _Slot:
    room: Room
    users: int = 0
    idle_since: float = 0.0


class Engine:
    """The rooms of one process. Use as `async with Engine(config) as engine:`."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self._slots: dict[DocumentName, _Slot] = {}
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> Engine:
        if self._task_group is not None:
            raise RuntimeError("engine already running")
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._sweep_forever)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self.close_peers()
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._task_group = None
            for slot in self._slots.values():
                slot.room.close()
            self._slots.clear()

    @property
    def rooms(self) -> dict[DocumentName, Room]:
        """The rooms loaded now, by document name."""
        return {name: slot.room for name, slot in self._slots.items()}

    @asynccontextmanager
    async def room(self, name: str) -> AsyncIterator[Room]:
        """Use the room of document `name`, loading it if it is cold.

        Every concurrent user of one name gets the same room. The room stays loaded
        while it is in use and for `unload_grace` seconds after.
        """
        if self._task_group is None:
            raise RuntimeError("the engine is not running: use `async with Engine()`")
        doc_name = DocumentName(name)
        slot = self._slots.get(doc_name)
        if slot is None:
            slot = _Slot(self._new_room(doc_name))
            self._slots[doc_name] = slot
            log.debug("room %r loaded", name)
        slot.users += 1
        try:
            yield slot.room
        finally:
            slot.users -= 1
            if slot.users == 0:
                slot.idle_since = time.monotonic()

    def _new_room(self, name: DocumentName) -> Room:
        return Room(
            name,
            max_awareness_state_size=self.config.max_awareness_state_size,
            awareness_timeout=self.config.awareness_timeout,
        )

    def close_peers(self) -> None:
        """Close every connected peer with 1001 (the server is going away)."""
        for slot in self._slots.values():
            for peer in list(slot.room.peers.values()):
                peer.close(GoingAway("server shutting down"))

    def sweep(self) -> None:
        """Expire stale awareness states and unload rooms idle past the grace."""
        now = time.monotonic()
        for name, slot in list(self._slots.items()):
            slot.room.sweep()
            if slot.users == 0 and now - slot.idle_since >= self.config.unload_grace:
                del self._slots[name]
                slot.room.close()
                log.debug("room %r unloaded", name)

    async def _sweep_forever(self) -> None:
        while True:
            await anyio.sleep(self.config.sweep_interval)
            self.sweep()
