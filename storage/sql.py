"""SQLStore: the Store on SQLAlchemy's async engine, for SQLite and PostgreSQL alike.

    store = await SQLStore.connect("sqlite+aiosqlite:///collab.db")
    store = await SQLStore.connect("postgresql+asyncpg://localhost/test")

SQLite connections get `journal_mode=WAL`, `synchronous=FULL` (an append that has
returned survives a power cut, not only a process crash), `busy_timeout` and
`foreign_keys=ON`. Sequence numbers come from `documents.last_seq`, incremented in
the appending transaction, which also serialises concurrent writers of one
document on PostgreSQL (the UPDATE takes the row lock).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from sqlalchemy import event, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from collab_engine.store import Entry, Stored
from collab_engine.types import Update

from .schema import documents, migrate, snapshots, updates

SQLITE_BUSY_TIMEOUT = 5.0
"""Seconds a SQLite write waits for another connection's lock before it fails."""


def sqlite_url(path: str) -> str:
    """The SQLAlchemy URL of the SQLite file at `path`."""
    return f"sqlite+aiosqlite:///{path}"


class SQLStore:
    """A Store over one SQLAlchemy async engine. Create with `await SQLStore.connect(url)`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name

    @classmethod
    async def connect(
        cls, url: str, *, sqlite_busy_timeout: float = SQLITE_BUSY_TIMEOUT, **engine_options: Any
    ) -> SQLStore:
        """Open the database at `url` and bring its schema up to date.

        `sqlite_busy_timeout` is how long, in seconds, a SQLite write waits for a lock
        held by another connection before it fails with "database is locked".
        `engine_options` go to SQLAlchemy's `create_async_engine`.
        """
        engine = create_async_engine(url, **engine_options)
        if engine.dialect.name == "sqlite":
            event.listen(
                engine.sync_engine,
                "connect",
                partial(_sqlite_pragmas, busy_timeout_ms=round(sqlite_busy_timeout * 1000)),
            )
        try:
            async with engine.begin() as connection:
                await connection.run_sync(migrate)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def append(self, entries: Sequence[Entry]) -> list[int]:
        by_document: dict[str, list[int]] = {}
        for index, entry in enumerate(entries):
            by_document.setdefault(entry.document, []).append(index)
        seqs = [0] * len(entries)
        now = time.time()
        async with self.engine.begin() as connection:
            for name, indexes in by_document.items():
                last = await self._reserve(connection, name, len(indexes), now)
                first = last - len(indexes) + 1
                rows = []
                for offset, index in enumerate(indexes):
                    seqs[index] = first + offset
                    entry = entries[index]
                    rows.append(
                        {
                            "document": name,
                            "seq": first + offset,
                            "data": entry.update,
                            "author": entry.author,
                            "created_at": now,
                        }
                    )
                await connection.execute(updates.insert(), rows)
        return seqs

    async def _reserve(self, connection: AsyncConnection, name: str, count: int, now: float) -> int:
        insert = (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(documents)
        await connection.execute(
            insert.values(name=name, last_seq=0, created_at=now).on_conflict_do_nothing()
        )
        result = await connection.execute(
            update(documents)
            .where(documents.c.name == name)
            .values(last_seq=documents.c.last_seq + count)
            .returning(documents.c.last_seq)
        )
        return int(result.scalar_one())

    async def load(self, document: str) -> Stored:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(snapshots.c.seq, snapshots.c.state)
                    .where(snapshots.c.document == document)
                    .order_by(snapshots.c.seq.desc())
                    .limit(1)
                )
            ).first()
            seq, state = (int(row.seq), bytes(row.state)) if row else (0, None)
            rows = await connection.execute(
                select(updates.c.seq, updates.c.data)
                .where(updates.c.document == document, updates.c.seq > seq)
                .order_by(updates.c.seq)
            )
            return Stored(
                snapshot=state,
                snapshot_seq=seq,
                updates=[(int(r.seq), bytes(r.data)) for r in rows],
            )

    async def snapshot(self, document: str, state: Update, seq: int) -> None:
        async with self.engine.begin() as connection:
            last = (
                await connection.execute(
                    select(documents.c.last_seq).where(documents.c.name == document)
                )
            ).scalar()
            if last is None or seq < 1 or seq > last:
                raise ValueError(f"no update {seq} in the log of {document!r}")
            newest = (
                await connection.execute(
                    select(func.max(snapshots.c.seq)).where(snapshots.c.document == document)
                )
            ).scalar()
            if newest is not None and newest >= seq:
                return
            await connection.execute(
                snapshots.insert().values(
                    document=document, seq=seq, state=state, created_at=time.time()
                )
            )

    async def documents(self) -> list[str]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(documents.c.name).order_by(documents.c.name))
            return [r.name for r in rows]

    async def aclose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, *, busy_timeout_ms: int) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
