"""Shared fixtures: the anyio backend, and a real hypercorn server on 127.0.0.1."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
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

BOTH_TRANSPORTS = {
    "tests.server.test_websocket",
    "tests.server.test_permissions",
    "tests.server.test_history",
    "tests.server.test_locks",
    "tests.server.test_endpoints",
    "tests.server.test_durability",
    "tests.interop.test_yjs_client",
    "tests.interop.test_permissions",
    "tests.interop.test_locks",
    "tests.interop.test_presence",
    "tests.interop.test_history",
    "tests.interop.test_restart",
    "tests.interop.test_client",
}
"""The suites that run once on each transport: the end-to-end, interop, permission,
history and durability tests. (The wire's own tests choose their path themselves.)"""

_transport = ["wire"]
"""The transport the servers of the running test use: `wire` (where it can) or `asgi`."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__ in BOTH_TRANSPORTS and not metafunc.definition.get_closest_marker(
        "own_transport"
    ):
        metafunc.parametrize("transport", ["wire", "asgi"], indirect=True)


@pytest.fixture(autouse=True)
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """`wire` or `asgi`: the path the test's servers carry frames on (`running_server`,
    and `collab-engine serve` started by `tests.server.test_cli.start_server`)."""
    name: str = getattr(request, "param", "wire")
    _transport[0] = name
    try:
        yield name
    finally:
        _transport[0] = "wire"


def current_transport() -> str:
    """The transport of the running test (see `transport`)."""
    return _transport[0]


@asynccontextmanager
async def running_server(
    settings: Settings | None = None, *, clock: Clock = SYSTEM
) -> AsyncIterator[tuple[App, str]]:
    """A real hypercorn serving a fresh `App` on 127.0.0.1:<free port>; yields the app
    and its base URL `ws://127.0.0.1:PORT`.

    The engine reads time from `clock` (a `ManualClock` lets the test decide when
    timeouts fire). Frames go on the test's transport (`transport`): through ASGI
    for `asgi`, whatever the settings say. Documents go to `settings.database_url`; without one, to a new SQLite file in a
    temporary directory removed afterwards. The store is closed after the server
    has stopped (and its journal drained).
    """
    # No pings by default: hypercorn's ping task keeps a closed connection's task alive
    # until its next tick; the ping test sets a short interval of its own.
    settings = settings or Settings(
        host="127.0.0.1", port=0, ping_interval=None, engine=TEST_ENGINE
    )
    wire = settings.wire and current_transport() == "wire"
    settings = replace(settings, host="127.0.0.1", port=0, wire=wire)
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
