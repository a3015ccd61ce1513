"""Time, as the engine reads it: one clock, passed from the engine to everything that
reads time (rooms, presence, locks, the journal, history, the sweeper).

    monotonic()   seconds on a clock that only goes forward: timeouts, intervals
    wall()        Unix time: what is stored or shown (version times, lease expiries)
    sleep(s)      wait `s` seconds of this clock

`SystemClock` is the real time. `ManualClock` is time that moves only when told
(`advance`), for tests and simulations: what the engine does after a timeout happens
when the test says the time has come, not after a sleep that may be too short on a
loaded machine.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    """Where time comes from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (its origin means nothing)."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock (at once for 0 or less,
        after a checkpoint)."""
        ...


class SystemClock:
    """The real time: `time.monotonic`, `time.time` and `anyio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


SYSTEM = SystemClock()
"""The clock everything uses unless given another."""


class ManualClock:
    """Time that moves only when `advance` is called; sleepers wake when their time
    has come. Monotonic and wall time move together.

    Args:
        start: the monotonic time to start at.
        wall: the Unix time at `start` (default: the real time now, so that times
            shown to clients are plausible).
    """

    def __init__(self, start: float = 1000.0, wall: float | None = None) -> None:
        self._now = start
        self._offset = (time.time() if wall is None else wall) - start
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        self._sleepers.append((self._now + seconds, woken))
        await woken.wait()

    def advance(self, seconds: float) -> None:
        """Move time on by `seconds` and wake every sleeper whose time has come (they
        run at the caller's next checkpoint)."""
        if seconds < 0:
            raise ValueError("time does not go back")
        self._now += seconds
        due = [event for deadline, event in self._sleepers if deadline <= self._now]
        self._sleepers = [(d, e) for d, e in self._sleepers if d > self._now]
        for event in due:
            event.set()

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting for time to pass."""
        return len(self._sleepers)
