"""A worker: documents due for one kind of background work, done one at a time by one
task, in the order they became due. The engine's compactor and history's versioner
are workers.

A document is due at most once at a time (marking it again while due changes
nothing). The work on one document is shielded from cancellation: the engine stopping
waits for the work under way (a store call is never cancelled midway; see
`Engine._load`). An error of one of the `expected` kinds goes to `failed` and the
worker goes on with the next document; anything else is a bug and ends the engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from .types import DocumentName


class Worker:
    """Args:
    work: what to do for one document.
    expected: the errors `work` may raise that are no bug (a store that failed).
    failed: told of each such error, with the document.
    """

    def __init__(
        self,
        work: Callable[[DocumentName], Awaitable[object]],
        *,
        expected: tuple[type[Exception], ...],
        failed: Callable[[DocumentName, Exception], None],
    ) -> None:
        self._work = work
        self._expected = expected
        self._failed = failed
        self._due: dict[DocumentName, None] = {}
        self._wakeup = anyio.Event()

    def mark(self, name: DocumentName) -> None:
        """`name` is due (again, once done if it is under way)."""
        self._due[name] = None
        self._wakeup.set()

    def __contains__(self, name: object) -> bool:
        """Whether `name` is due or under way."""
        return name in self._due

    @property
    def busy(self) -> bool:
        """Whether any document is due or under way."""
        return bool(self._due)

    async def run(self) -> None:
        """Work through the documents due, forever (an engine's task group runs this)."""
        while True:
            if not self._due:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            name = next(iter(self._due))
            try:
                with anyio.CancelScope(shield=True):
                    await self._work(name)
            except self._expected as error:
                self._failed(name, error)
            finally:
                del self._due[name]
