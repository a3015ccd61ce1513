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


async def test_a_version_3_database_gets_the_editors_of_versions(tmp_path: Path) -> None:
    """Schema 3 had versions without editors: migration 4 adds the column, and the
    versions already there read with no editors."""
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE schema_version (version INTEGER NOT NULL);
            INSERT INTO schema_version VALUES (3);
            CREATE TABLE documents (name VARCHAR(1024) PRIMARY KEY, last_seq BIGINT NOT NULL,
                created_at FLOAT NOT NULL);
            CREATE TABLE updates (document VARCHAR(1024), seq BIGINT, data BLOB NOT NULL,
                author VARCHAR(256), created_at FLOAT NOT NULL, PRIMARY KEY (document, seq));
            CREATE TABLE snapshots (document VARCHAR(1024), seq BIGINT, state BLOB NOT NULL,
                created_at FLOAT NOT NULL, PRIMARY KEY (document, seq));
            CREATE TABLE grants (document VARCHAR(1024), principal VARCHAR(512),
                role VARCHAR(16) NOT NULL, created_at FLOAT NOT NULL,
                PRIMARY KEY (document, principal));
            CREATE TABLE versions (id INTEGER PRIMARY KEY AUTOINCREMENT,
                document VARCHAR(1024) NOT NULL, seq BIGINT NOT NULL, label VARCHAR(512),
                author VARCHAR(256), automatic BOOLEAN NOT NULL, created_at FLOAT NOT NULL);
            INSERT INTO documents VALUES ('d', 1, 0);
            INSERT INTO updates VALUES ('d', 1, x'00', 'alice', 0);
            INSERT INTO versions (document, seq, label, automatic, created_at)
                VALUES ('d', 1, 'old', 0, 0);
            """
        )
    store = await SQLStore.connect(sqlite_url(str(path)))
    try:
        (old,) = await store.versions("d")
        assert (old.label, old.editors) == ("old", ())
        new = await store.add_version("d", 1, label="new")
        assert new.editors == ()  # nothing since the version at the same seq
    finally:
        await store.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
