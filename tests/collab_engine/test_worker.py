"""The worker behind the compactor and the versioner: one document at a time, each at
most once while due, expected errors reported and survived, work not cancelled midway."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from collab_engine.errors import StorageError
from collab_engine.types import DocumentName
from collab_engine.worker import Worker

pytestmark = pytest.mark.anyio


async def test_documents_are_worked_once_each_in_order_and_errors_survived() -> None:
    done: list[str] = []
    failed: list[tuple[str, str]] = []
    gate = anyio.Event()

    async def work(name: DocumentName) -> None:
        await gate.wait()
        if name == "bad":
            raise StorageError("disk full")
        done.append(name)

    worker = Worker(work, expected=(StorageError,), failed=lambda n, e: failed.append((n, str(e))))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        for name in ("a", "bad", "b", "a"):  # "a" again while due: once
            worker.mark(DocumentName(name))
        assert worker.busy and DocumentName("b") in worker
        gate.set()
        while worker.busy:
            await anyio.lowlevel.checkpoint()
        assert done == ["a", "b"] and failed == [("bad", "disk full")]
        tg.cancel_scope.cancel()


async def test_work_under_way_is_finished_when_the_worker_is_cancelled() -> None:
    finished: list[str] = []
    started, stored = anyio.Event(), anyio.Event()

    async def work(name: DocumentName) -> None:
        started.set()
        await stored.wait()  # a store call under way when the cancellation comes
        finished.append(name)

    worker = Worker(work, expected=(StorageError,), failed=lambda n, e: None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        worker.mark(DocumentName("doc"))
        await started.wait()
        tg.cancel_scope.cancel()
        stored.set()  # unshielded, the cancellation would have ended the wait first
    assert finished == ["doc"]
