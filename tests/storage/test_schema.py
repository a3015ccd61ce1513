"""Schema migrations: applied once at start-up, and a newer database is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from collab_engine.store import Entry
from storage import SQLStore, sqlite_url
from storage.schema import MIGRATIONS, schema_version

pytestmark = pytest.mark.anyio


async def test_migrations_run_once_and_record_the_version(tmp_path: Path) -> None:
    """Opening a database twice leaves it at the current version, data intact."""
    url = sqlite_url(str(tmp_path / "db.sqlite"))
    first = await SQLStore.connect(url)
    await first.append([])
    await first.aclose()
    second = await SQLStore.connect(url)
    async with second.engine.connect() as connection:
        versions = (await connection.execute(select(schema_version.c.version))).scalars().all()
    await second.aclose()
    assert versions == [len(MIGRATIONS)]


async def test_a_database_from_a_newer_program_is_refused(tmp_path: Path) -> None:
    """A schema version beyond this program's is an error, never a downgrade."""
    url = sqlite_url(str(tmp_path / "db.sqlite"))
    store = await SQLStore.connect(url)
    async with store.engine.begin() as connection:
        await connection.execute(schema_version.update().values(version=len(MIGRATIONS) + 1))
    await store.aclose()
    with pytest.raises(RuntimeError, match="newer than this program"):
        await SQLStore.connect(url)


async def test_a_version_1_database_is_brought_to_the_current_version(tmp_path: Path) -> None:
    """A database made by the first schema gets the grants table, its data intact."""
    path = tmp_path / "v1.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        schema_version.create(connection)
        connection.execute(schema_version.insert().values(version=1))
        MIGRATIONS[0](connection)
    engine.dispose()
    store = await SQLStore.connect(sqlite_url(str(path)))
    try:
        await store.append([Entry("d", b"u")])
        assert await store.grants("d") == []
    finally:
        await store.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
