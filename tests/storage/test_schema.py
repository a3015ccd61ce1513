"""Schema migrations: applied once at start-up, and a newer database is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

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
