"""The stores a benchmark writes to: a fresh SQLite file or PostgreSQL schema per run
(`Backend`, `backends`), or a fresh PostgreSQL database (`postgres_database`, for a
cluster of servers), `SQLStore.append` timed alone on one (`appends_once`), and
SQLite files checkpointed, measured on disk, broken down by table and index, copied."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
from sqlalchemy.ext.asyncio import create_async_engine

from collab_engine.store import Entry
from collab_engine.types import Update
from harness.report import ms, number, say
from harness.stats import median
from storage.sql import SQLStore, sqlite_url

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
"""The test database `.ci/run` starts."""


def postgres_answers(host: str = "127.0.0.1", port: int = 5432) -> bool:
    """Whether something listens where PostgreSQL should."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class Backend:
    """Where a run's store lives: `open()` gives a fresh, empty store and its clean-up."""

    name: str
    open: Callable[[], Awaitable[tuple[SQLStore, Callable[[], Awaitable[None]]]]]


def sqlite_backend(directory: Path) -> Backend:
    async def open_store() -> tuple[SQLStore, Callable[[], Awaitable[None]]]:
        path = directory / f"throughput-{uuid.uuid4().hex[:12]}.db"
        store = await SQLStore.connect(sqlite_url(str(path)))

        async def cleanup() -> None:
            await store.aclose()
            for suffix in ("", "-wal", "-shm"):
                await anyio.Path(f"{path}{suffix}").unlink(missing_ok=True)

        return store, cleanup

    return Backend("SQLite", open_store)


def postgres_backend(url: str) -> Backend:
    async def open_store() -> tuple[SQLStore, Callable[[], Awaitable[None]]]:
        schema = f"bench_storage_{uuid.uuid4().hex[:12]}"
        await postgres_execute(url, f'CREATE SCHEMA "{schema}"')
        try:
            store = await SQLStore.connect(
                url, connect_args={"server_settings": {"search_path": schema}}
            )
        except BaseException:
            await postgres_execute(url, f'DROP SCHEMA "{schema}" CASCADE')
            raise

        async def cleanup() -> None:
            await store.aclose()
            await postgres_execute(url, f'DROP SCHEMA "{schema}" CASCADE')

        return store, cleanup

    return Backend("PostgreSQL", open_store)


async def backends(
    names: Sequence[str], directory: Path, postgres_url: str, notes: list[str]
) -> list[Backend]:
    """ "sqlite" (files in `directory`) and "postgresql" in the order named; PostgreSQL
    only when it answers. What was skipped, and the PostgreSQL settings, go to `notes`."""
    chosen: list[Backend] = []
    for name in names:
        if name == "sqlite":
            chosen.append(sqlite_backend(directory))
        elif not postgres_answers():
            reason = "PostgreSQL skipped: nothing answers at 127.0.0.1:5432"
            say(reason)
            notes.append(reason)
        else:
            notes.append(
                f"{await postgres_settings(postgres_url)}; each run in a fresh schema, "
                "dropped after it"
            )
            chosen.append(postgres_backend(postgres_url))
    return chosen


async def postgres_settings(url: str) -> str:
    """PostgreSQL's version and durability settings, as a results header gives them."""
    settings = await postgres_execute(
        url,
        "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
        " current_setting('fsync'), current_setting('wal_sync_method')",
    )
    server_version, synchronous_commit, fsync, wal_sync = settings[0]
    return (
        f"PostgreSQL {server_version.split()[0]} at {url} (synchronous_commit="
        f"{synchronous_commit}, fsync={fsync}, wal_sync_method={wal_sync})"
    )


@contextlib.asynccontextmanager
async def postgres_database(url: str, prefix: str = "bench") -> AsyncIterator[str]:
    """A fresh database on the PostgreSQL server of `url` (CREATE DATABASE on an
    AUTOCOMMIT connection), dropped afterwards, even with connections still open:
    the URL of the new database."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            async with admin.connect() as connection:
                await connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()


async def postgres_execute(url: str, sql: str) -> list[Any]:
    """Run one statement on its own connection (no schema is created); return its rows."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            result = await connection.exec_driver_sql(sql)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def checkpoint(store: SQLStore) -> None:
    async with store.engine.connect() as connection:
        row = (await connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()
        if row[0] != 0:
            raise RuntimeError(f"the WAL checkpoint was blocked: {tuple(row)}")


async def space_by_object(store: SQLStore) -> dict[str, int]:
    """Bytes of pages per table and index, from SQLite's dbstat table (if compiled in)."""
    async with store.engine.connect() as connection:
        try:
            result = await connection.exec_driver_sql(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
            )
            rows = cast(list[tuple[str, int]], result.all())
            space = {str(name): int(size) for name, size in rows}
        except Exception:  # noqa: BLE001 - dbstat is optional: no breakdown then
            return {}
        free = (await connection.exec_driver_sql("PRAGMA freelist_count")).scalar_one()
        page_size = (await connection.exec_driver_sql("PRAGMA page_size")).scalar_one()
    space["(free pages)"] = int(free) * int(page_size)
    return space


def file_bytes(path: Path) -> int:
    """The database file and its write-ahead log (the -shm index holds no data)."""
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite file, write-ahead log included (backup API)."""
    with contextlib.closing(sqlite3.connect(source)) as src:
        with contextlib.closing(sqlite3.connect(target)) as dst:
            src.backup(dst)


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class AppendResult:
    per_call: float
    cpu_per_call: float
    calls: int


async def appends_once(
    backend: Backend,
    shapes: Sequence[tuple[int, int]],
    updates: Sequence[Sequence[Update]],
    budget: float,
) -> dict[tuple[int, int], AppendResult]:
    """`SQLStore.append` alone, one call at a time, per (entries, documents) shape:
    calls for about `budget` seconds (5 at least), the first left out (it creates the
    documents' rows); the median call and the mean CPU time of one."""
    store, cleanup = await backend.open()
    results: dict[tuple[int, int], AppendResult] = {}
    try:
        for entries, documents in shapes:
            prefix = f"append-{uuid.uuid4().hex[:8]}"
            durations: list[float] = []
            cpu = 0.0
            call = 0
            deadline = time.perf_counter() + budget
            while call < 6 or (time.perf_counter() < deadline and call < 1000):
                batch = [
                    Entry(
                        f"{prefix}-{index % documents}",
                        updates[index % len(updates)][call % len(updates[0])],
                        f"writer-{index}",
                    )
                    for index in range(entries)
                ]
                cpu_before, started = time.process_time(), time.perf_counter()
                await store.append(batch)
                if call:
                    durations.append(time.perf_counter() - started)
                    cpu += time.process_time() - cpu_before
                call += 1
            results[(entries, documents)] = AppendResult(
                statistics.median(durations), cpu / len(durations), len(durations)
            )
    finally:
        await cleanup()
    return results


def append_table(appends: dict[tuple[str, int, int], list[AppendResult]], writers: int) -> str:
    """The reference rows: `SQLStore.append` alone, medians over the runs."""
    lines = [
        "Reference: `SQLStore.append` alone (no engine), one call at a time, on a fresh "
        "database; the median call, median over the runs. A group commit above holds the "
        f"{writers} writers' updates over as many documents as there are rooms.",
        "",
        "| backend | entries per append | documents per append | ms per append "
        "| CPU ms per append (this process) | entries/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (backend, entries, documents), runs in appends.items():
        per_call = median([r.per_call for r in runs])
        lines.append(
            f"| {backend} | {entries} | {documents} | {ms(per_call)} "
            f"| {ms(median([r.cpu_per_call for r in runs]))} "
            f"| {number(entries / per_call) if per_call else 'n/a'} |"
        )
    return "\n".join(lines)
