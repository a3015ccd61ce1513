"""Time in tests: a manual clock moved on by the test, and one polling helper for what
truly happens elsewhere (another process, a thread, the network).

A test that checks what the engine does after a timeout gives the engine a
`ManualClock` and moves it with `advance`: the sweeper, the journal's linger and the
presence timers run when the test says the time has come, however loaded the machine
is. `eventually` is for effects the test cannot step (a server in another process, a
store's thread, a socket): it polls with a generous deadline and never asserts how
long the effect took.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from collab_engine.clock import ManualClock

DEADLINE = 30.0
"""How long `eventually` waits before it fails: far longer than anything takes on a
loaded machine, so that only a real failure reaches it."""


async def advance(clock: ManualClock, seconds: float, *, step: float = 0.01) -> None:
    """Move `clock` on by `seconds`, `step` at a time, letting every task that was
    waiting for the time (the sweeper at each of its steps) run before the next step."""
    end = clock.monotonic() + seconds
    while (left := end - clock.monotonic()) > 1e-9:
        clock.advance(min(step, left))
        await anyio.wait_all_tasks_blocked()


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = DEADLINE,
    what: str = "the condition",
) -> None:
    """Return once `condition()` holds (it may be a coroutine function), checking every
    20 ms; fail with `what` in the message after `timeout` seconds."""
    with anyio.move_on_after(timeout):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)
    raise AssertionError(f"{what} did not hold within {timeout:g} s")
