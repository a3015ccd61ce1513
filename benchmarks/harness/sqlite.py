"""SQLite files a benchmark wrote: checkpointed, measured on disk, broken down by
table and index."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from storage.sql import SQLStore


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
