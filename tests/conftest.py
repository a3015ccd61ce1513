"""Shared fixtures: the anyio backend, and a real hypercorn server on 127.0.0.1."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from collab_engine.clock import SYSTEM, Clock
from collab_engine.engine import EngineConfig
from server.app import App, open_store, serve
from server.settings import Settings
from storage import sqlite_url


@pytest.fixture
def anyio_backend() -> str:
    # SQLAlchemy's async engine and aiosqlite run on asyncio only.
    return "asyncio"


# Short timings, so that the tests about timeouts run in well under a second.
TEST_ENGINE = EngineConfig(unload_grace=0.2, sweep_interval=0.05)


@asynccontextmanager
async def running_server(
    settings: Settings | None = None, *, clock: Clock = SYSTEM
) -> AsyncIterator[tuple[App, str]]:
    """A real hypercorn serving a fresh `App` on 127.0.0.1:<free port>; yields the app
    and its base URL `ws://127.0.0.1:PORT`.

    The engine reads time from `clock` (a `ManualClock` lets the test decide when
    timeouts fire). Documents go to `settings.database_url`; without one, to a new SQLite file in a
    temporary directory removed afterwards. The store is closed after the server
    has stopped (and its journal drained).
    """
    # No pings by default: hypercorn's ping task keeps a closed connection's task alive
    # until its next tick; the ping test sets a short interval of its own.
    settings = settings or Settings(
        host="127.0.0.1", port=0, ping_interval=None, engine=TEST_ENGINE
    )
    settings = replace(settings, host="127.0.0.1", port=0)
    async with AsyncExitStack() as stack:
        if settings.database_url is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory())
            settings = replace(settings, database_url=sqlite_url(str(Path(directory) / "test.db")))
        store = await open_store(settings)
        assert store is not None
        stack.push_async_callback(store.aclose)
        app = App(settings, store, clock=clock)
        shutdown = anyio.Event()
        async with anyio.create_task_group() as tg:
            port = await tg.start(_serve, app, shutdown)
            try:
                yield app, f"ws://127.0.0.1:{port}"
            finally:
                shutdown.set()


async def _serve(
    app: App, shutdown: anyio.Event, *, task_status: anyio.abc.TaskStatus[int]
) -> None:
    await serve(app, shutdown=shutdown, task_status=task_status)


@pytest.fixture
async def server() -> AsyncIterator[tuple[App, str]]:
    """A real server with the test timings; yields `(app, "ws://127.0.0.1:PORT")`."""
    async with running_server() as running:
        yield running
