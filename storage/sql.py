"""SQLStore: the Store on SQLAlchemy's async engine, for SQLite and PostgreSQL alike.

    store = await SQLStore.connect("sqlite+aiosqlite:///collab.db")
    store = await SQLStore.connect("postgresql+asyncpg://localhost/test")

SQLite connections get `journal_mode=WAL`, `synchronous=FULL` (an append that has
returned survives a power cut, not only a process crash), `busy_timeout` and
`foreign_keys=ON`. Sequence numbers come from `documents.last_seq`, read and
advanced in the appending transaction, which also serialises concurrent writers of
one document (SQLite's write lock; PostgreSQL's row locks, `FOR UPDATE`).

On a SQLite file, the calls a server makes all the time (appends; a room's load and
grants when it opens; the reads and the write of the automatic version when an
editing session ends; a compaction's snapshot) run as one call each on the thread of a connection held from
the pool, with the same statements compiled to SQLite's text: through SQLAlchemy's
async layer every statement is several round trips between the event loop and
aiosqlite's thread, with SQLAlchemy's work for each on the loop (a millisecond or so
of the loop per call, when measured). The rest, and PostgreSQL, go through SQLAlchemy.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite
import anyio
import asyncpg.exceptions  # type: ignore[import-untyped]
from sqlalchemy import Select, bindparam, delete, event, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql import ClauseElement

from collab_engine.journal import describe_error
from collab_engine.ownership import Deposed
from collab_engine.permissions import Grant, Role
from collab_engine.store import Entry, Stored, StoreUnavailable, Version
from collab_engine.types import Update

from .schema import documents, grants, migrate, owners, snapshots, updates, versions

SQLITE_BUSY_TIMEOUT = 5.0
"""Seconds a SQLite write waits for another connection's lock before it fails."""

_MAX_SEQ = 2**62
"""Past any seq: `upto` when there is none."""

_Use = Literal["append", "other"]
_T = TypeVar("_T")
_NAMED = sqlite.dialect(paramstyle="named")

# The statements of the reads and of a new version, with named parameters: run
# through SQLAlchemy (PostgreSQL, unpooled SQLite) or, as SQLite text compiled from
# them (`_sqlite_text`), on a held connection's thread: one definition for both.
_SNAPSHOT_AT = (
    select(snapshots.c.seq, snapshots.c.state)
    .where(snapshots.c.document == bindparam("document"), snapshots.c.seq <= bindparam("upto"))
    .order_by(snapshots.c.seq.desc())
    .limit(1)
)
"""The newest snapshot of a document at or before `upto`."""
_NEWEST_SNAPSHOT = select(func.max(snapshots.c.seq)).where(
    snapshots.c.document == bindparam("document")
)
_NEW_SNAPSHOT = snapshots.insert()
_UPDATES_AFTER = (
    select(updates.c.seq, updates.c.data)
    .where(
        updates.c.document == bindparam("document"),
        updates.c.seq > bindparam("after"),
        updates.c.seq <= bindparam("upto"),
    )
    .order_by(updates.c.seq)
)
"""A document's updates in (`after`, `upto`], in order."""
_GRANTS_OF = (
    select(grants.c.principal, grants.c.role)
    .where(grants.c.document == bindparam("document"))
    .order_by(grants.c.principal)
)
_LAST_SEQ = select(documents.c.last_seq).where(documents.c.name == bindparam("document"))
_VERSIONS_OF = (
    select(versions).where(versions.c.document == bindparam("document")).order_by(versions.c.id)
)
_PREVIOUS_VERSION = select(func.max(versions.c.seq)).where(
    versions.c.document == bindparam("document"), versions.c.seq <= bindparam("seq")
)
"""The seq of the newest version at or before `seq`."""
_EDITORS = (
    select(updates.c.author)
    .where(
        updates.c.document == bindparam("document"),
        updates.c.seq > bindparam("after"),
        updates.c.seq <= bindparam("seq"),
        updates.c.author.is_not(None),
    )
    .group_by(updates.c.author)
    .order_by(func.min(updates.c.seq))
)
"""Who wrote the updates in (`after`, `seq`], in the order they first did."""
_NEW_VERSION = versions.insert().returning(versions.c.id)


def sqlite_url(path: str) -> str:
    """The SQLAlchemy URL of the SQLite file at `path`."""
    return f"sqlite+aiosqlite:///{path}"


class SQLStore:
    """A Store over one SQLAlchemy async engine. Create with `await SQLStore.connect(url)`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        insert = (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(documents)
        self._advance = (
            # Built once, with bound parameters, so that SQLAlchemy compiles it once.
            insert.values(
                name=bindparam("name"), last_seq=bindparam("count"), created_at=bindparam("now")
            )
            .on_conflict_do_update(
                index_elements=[documents.c.name],
                set_={"last_seq": documents.c.last_seq + insert.excluded.last_seq},
            )
            .returning(documents.c.name, documents.c.last_seq)
        )
        """Moves a document's last_seq on by `count` (creating the document at `count`)
        and returns where it ended."""
        self._sqlite_insert = str(updates.insert().compile(dialect=_NAMED))
        """The updates' insert as SQLite text, for `_append_in_thread`."""
        self._held: dict[_Use, tuple[AsyncConnection, aiosqlite.Connection]] = {}
        """SQLite: the connections held from the pool for the one-call paths, by use."""
        self._holding = anyio.Lock()

    @classmethod
    async def connect(
        cls, url: str, *, sqlite_busy_timeout: float = SQLITE_BUSY_TIMEOUT, **engine_options: Any
    ) -> SQLStore:
        """Open the database at `url` and bring its schema up to date.

        `sqlite_busy_timeout` is how long, in seconds, a SQLite write waits for a lock
        held by another connection before it fails with "database is locked".
        `engine_options` go to SQLAlchemy's `create_async_engine`.
        """
        _check_sqlite_directory(url)
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
        # Two statements whatever the number of documents in the batch (the journal
        # writes the updates of every document in one call: group commit): one upsert
        # moves each document's last_seq on by its number of updates and returns where
        # it ended, the other inserts the updates.
        if not entries:
            return []
        now = time.time()
        fenced = {entry.document: entry.epoch for entry in entries if entry.epoch is not None}
        if not fenced and await self._held_connection("append") is not None:
            # The whole transaction in one call on aiosqlite's thread: see
            # `_append_in_thread`.
            seqs: list[int] = await self._on_thread(
                "append", _append_in_thread, self._sqlite_insert, entries, now
            )
            return seqs
        counts = Counter(entry.document for entry in entries)
        names = sorted(counts)  # PostgreSQL locks the rows in this order: no deadlock
        try:
            async with self.engine.begin() as connection:
                if fenced:
                    await _check_fences(connection, fenced)
                # The upsert takes the row lock (PostgreSQL) or the database's write
                # lock (SQLite) before it reads last_seq: two writers never get the same
                # seqs.
                result = await connection.execute(
                    self._advance, [{"name": n, "count": counts[n], "now": now} for n in names]
                )
                next_seq = {row.name: int(row.last_seq) - counts[row.name] for row in result}
                seqs, rows = _numbered(entries, next_seq, now)
                await connection.execute(updates.insert(), rows)
        except Exception as exc:
            # A connection lost while the commit was on its way may have committed:
            # the journal's next attempt then logs the updates twice, which changes
            # nothing (applying a Yjs update again is a no-op); none is lost.
            if _unreachable(exc):
                raise StoreUnavailable(
                    f"the database is unreachable: {describe_error(exc)}"
                ) from exc
            raise
        return seqs

    async def _held_connection(self, use: _Use) -> aiosqlite.Connection | None:
        """The aiosqlite connection held from SQLAlchemy's pool for `use` (checked out
        the first time, so its `connect` hooks ran on it); None where everything goes
        through SQLAlchemy: not SQLite, or a pool whose checkouts share one connection
        (an in-memory database), where a transaction of our own could land inside one
        of SQLAlchemy's.

        Two uses, two connections, each with its own thread: "append" is the
        journal's alone, so that no read (a long history loading) ever waits in front
        of a commit; "other" serves the one-call reads and version writes."""
        held = self._held.get(use)
        if held is not None:
            return held[1]
        if self._dialect != "sqlite" or not isinstance(self.engine.pool, QueuePool):
            return None
        async with self._holding:
            if use not in self._held:
                connection = await self.engine.connect()
                raw = await connection.get_raw_connection()
                driver = raw.driver_connection
                if not isinstance(driver, aiosqlite.Connection):
                    await connection.close()
                    return None
                self._held[use] = (connection, driver)
            return self._held[use][1]

    async def _on_thread(self, use: _Use, function: Callable[..., _T], *args: Any) -> _T:
        """`function(sqlite3_connection, *args)` in one call on the thread of the
        connection held for `use` (which `_held_connection` returned). A failure other
        than ValueError (the caller's own refusal, after its rollback) drops that
        connection: the next call gets a fresh one."""
        driver = self._held[use][1]
        try:
            # `_execute` is aiosqlite's one primitive, under all of its public methods
            # (pinned): it runs `function` on the connection's thread, between others.
            result: _T = await driver._execute(function, driver._conn, *args)  # type: ignore[no-untyped-call]
        except ValueError:
            raise
        except BaseException:
            await self._release(use)
            raise
        return result

    async def _rows(
        self, statement: Select[Any], values: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """Every row a read returns, in its column order: in one call on the held
        connection's thread where there is one, through SQLAlchemy elsewhere."""
        if await self._held_connection("other") is not None:
            return await self._on_thread("other", _fetch, statement, values)
        async with self.engine.connect() as connection:
            return list(await connection.execute(statement, values))

    async def _release(self, use: _Use) -> None:
        held = self._held.pop(use, None)
        if held is not None:
            with anyio.CancelScope(shield=True):
                await held[0].close()

    async def load(self, document: str, upto: int | None = None) -> Stored:
        upto = _MAX_SEQ if upto is None else upto
        if await self._held_connection("other") is not None:
            return await self._on_thread("other", _load_in_thread, document, upto)
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(_SNAPSHOT_AT, {"document": document, "upto": upto})
            ).first()
            seq, state = (int(row.seq), bytes(row.state)) if row else (0, None)
            rows = await connection.execute(
                _UPDATES_AFTER, {"document": document, "after": seq, "upto": upto}
            )
            return Stored(
                snapshot=state,
                snapshot_seq=seq,
                updates=[(int(r.seq), bytes(r.data)) for r in rows],
            )

    async def log(
        self, document: str, after: int, upto: int | None = None
    ) -> list[tuple[int, Update, str | None]]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(updates.c.seq, updates.c.data, updates.c.author)
                .where(updates.c.document == document, updates.c.seq > after)
                .where(updates.c.seq <= (upto if upto is not None else _MAX_SEQ))
                .order_by(updates.c.seq)
            )
            return [(int(r.seq), bytes(r.data), r.author) for r in rows]

    async def snapshot(self, document: str, state: Update, seq: int) -> None:
        now = time.time()
        if await self._held_connection("other") is not None:
            await self._on_thread("other", _snapshot_in_thread, document, state, seq, now)
            return
        async with self.engine.begin() as connection:
            last = (await connection.execute(_LAST_SEQ, {"document": document})).scalar()
            _check_snapshot_seq(document, seq, last)
            newest = (await connection.execute(_NEWEST_SNAPSHOT, {"document": document})).scalar()
            if newest is None or newest < seq:
                await connection.execute(_NEW_SNAPSHOT, _snapshot_row(document, state, seq, now))

    async def grants(self, document: str) -> list[Grant]:
        rows = await self._rows(_GRANTS_OF, {"document": document})
        return [Grant(principal, Role.parse(role)) for principal, role in rows]

    async def grant(self, document: str, grant: Grant) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                delete(grants).where(
                    grants.c.document == document, grants.c.principal == grant.principal
                )
            )
            await connection.execute(
                grants.insert().values(
                    document=document,
                    principal=grant.principal,
                    role=str(grant.role),
                    created_at=time.time(),
                )
            )

    async def revoke(self, document: str, principal: str) -> bool:
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(grants).where(grants.c.document == document, grants.c.principal == principal)
            )
            return bool(result.rowcount)

    async def last_seq(self, document: str) -> int | None:
        rows = await self._rows(_LAST_SEQ, {"document": document})
        return int(rows[0][0]) if rows else None

    async def add_version(
        self,
        document: str,
        seq: int | None,
        *,
        label: str | None = None,
        author: str | None = None,
        automatic: bool = False,
        created_at: float | None = None,
    ) -> Version:
        now = time.time() if created_at is None else created_at
        if await self._held_connection("other") is not None:
            return await self._on_thread(
                "other", _add_version_in_thread, document, seq, label, author, automatic, now
            )
        async with self.engine.begin() as connection:
            last = (
                await connection.execute(_LAST_SEQ.with_for_update(), {"document": document})
            ).scalar()
            seq = _version_seq(document, seq, last)
            previous = (
                await connection.execute(_PREVIOUS_VERSION, {"document": document, "seq": seq})
            ).scalar()
            rows = await connection.execute(
                _EDITORS, {"document": document, "after": previous or 0, "seq": seq}
            )
            editors = tuple(row.author for row in rows)
            values = _version_row(document, seq, label, author, automatic, now, editors)
            result = await connection.execute(_NEW_VERSION, values)
            version_id = int(result.scalar_one())
        return Version(version_id, document, seq, label, author, automatic, now, editors)

    async def versions(self, document: str) -> list[Version]:
        rows = await self._rows(_VERSIONS_OF, {"document": document})
        return [_version(row) for row in rows]

    async def remove_version(self, document: str, version_id: int) -> bool:
        async with self.engine.begin() as connection:
            rows = (
                await connection.execute(
                    select(versions)
                    .where(versions.c.document == document)
                    .order_by(versions.c.seq, versions.c.id)
                    .with_for_update()
                )
            ).all()
            found = [i for i, row in enumerate(rows) if int(row.id) == version_id]
            if not found:
                return False
            index = found[0]
            if index + 1 < len(rows):
                after = _version(rows[index + 1])
                editors = dict.fromkeys([*_version(rows[index]).editors, *after.editors])
                await connection.execute(
                    update(versions)
                    .where(versions.c.id == after.id)
                    .values(editors=json.dumps(list(editors)))
                )
            await connection.execute(delete(versions).where(versions.c.id == version_id))
            return True

    async def documents(self) -> list[str]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(documents.c.name).order_by(documents.c.name))
            return [r.name for r in rows]

    async def aclose(self) -> None:
        for use in list(self._held):
            await self._release(use)
        await self.engine.dispose()


def _version(row: Sequence[Any]) -> Version:
    # A row of `versions` in its column order, from SQLAlchemy or sqlite3.
    id_, document, seq, label, author, automatic, created_at, editors = row
    return Version(
        int(id_),
        document,
        int(seq),
        label,
        author,
        bool(automatic),
        float(created_at),
        tuple(json.loads(editors)) if editors else (),
    )


def _version_seq(document: str, seq: int | None, last: int | None) -> int:
    """The seq a new version of `document` is at: `seq`, or the last one when None.

    Raises:
        ValueError: the log has no such update (or the document no log)."""
    if last is not None and seq is None:
        seq = int(last)
    if last is None or seq is None or not 0 <= seq <= last:
        raise ValueError(f"no update {seq} in the log of {document!r}")
    return seq


def _version_row(
    document: str,
    seq: int,
    label: str | None,
    author: str | None,
    automatic: bool,
    now: float,
    editors: tuple[str, ...],
) -> dict[str, Any]:
    return {
        "document": document,
        "seq": seq,
        "label": label,
        "author": author,
        "automatic": automatic,
        "created_at": now,
        "editors": json.dumps(editors),
    }


_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.CrashShutdownError,
)


def _unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached (refused, lost, shutting
    down), as opposed to refusing the statement: looked for along its causes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, _CONNECTION_ERRORS):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


async def _check_fences(connection: AsyncConnection, fenced: dict[str, int]) -> None:
    """Raise `Deposed` unless every document of `fenced` is still at its epoch.

    The owners' rows are read FOR SHARE: a claim that would move one of them (an
    UPDATE of the row) waits for this transaction to end, and a claim that committed
    first is seen here. So no update is stored after its document moved on."""
    names = sorted(fenced)  # the rows locked in one order: no deadlock between writers
    rows = await connection.execute(
        select(owners.c.document, owners.c.epoch)
        .where(owners.c.document.in_(names))
        .order_by(owners.c.document)
        .with_for_update(read=True)
    )
    current = {row.document: int(row.epoch) for row in rows}
    for name in names:
        if current.get(name) != fenced[name]:
            raise Deposed(
                f"document {name!r} moved on to ownership epoch {current.get(name)}: "
                f"this node's epoch {fenced[name]} no longer writes it"
            )


def _numbered(
    entries: Sequence[Entry], next_seq: dict[str, int], now: float
) -> tuple[list[int], list[dict[str, Any]]]:
    """Each entry's seq, counting on from `next_seq` (a document's last seq before
    the batch, moved on in place), and its row for the updates table."""
    seqs = []
    rows = []
    for entry in entries:
        seq = next_seq[entry.document] = next_seq[entry.document] + 1
        seqs.append(seq)
        rows.append(
            {
                "document": entry.document,
                "seq": seq,
                "data": entry.update,
                "author": entry.author,
                "created_at": now,
            }
        )
    return seqs, rows


def _append_in_thread(
    connection: sqlite3.Connection, insert: str, entries: Sequence[Entry], now: float
) -> list[int]:
    # SQLStore.append for SQLite, run on the connection's own thread. Through
    # SQLAlchemy's async layer each statement, cursor and commit is a round trip between
    # the event loop and aiosqlite's thread, with SQLAlchemy's work for each in the
    # loop: a fixed cost per commit on the loop, whatever its size, which the fan-out
    # benchmark saw in the server's CPU and its p99. Here the transaction is one round
    # trip, and its Python is a few lines around sqlite3's C (which lets go of the GIL
    # while SQLite works).
    counts = Counter(entry.document for entry in entries)
    names = sorted(counts)
    # IMMEDIATE: the write lock before last_seq is read, as the upsert first takes it.
    connection.execute("BEGIN IMMEDIATE")
    try:
        next_seq = {}
        # Every document's last_seq moved on in one statement per ADVANCE_CHUNK of
        # them, not one each: each statement is a return to Python (and a wait for
        # the GIL the loop holds), and a busy commit spans tens of documents.
        for start in range(0, len(names), ADVANCE_CHUNK):
            chunk = names[start : start + ADVANCE_CHUNK]
            values = [value for name in chunk for value in (name, counts[name], now)]
            for name, last_seq in connection.execute(_advance_sql(len(chunk)), values):
                next_seq[name] = int(last_seq) - counts[name]
        seqs, rows = _numbered(entries, next_seq, now)
        connection.executemany(insert, rows)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    return seqs


@lru_cache(maxsize=32)
def _sqlite_text(statement: ClauseElement, keys: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """`statement` as SQLite text with named parameters, and the values of the
    parameters it fixes itself (a LIMIT): compiled once per statement. `keys` are
    the parameters it is run with: an insert's columns are those, as SQLAlchemy
    compiles an insert for the values it is executed with."""
    compiled = statement.compile(dialect=_NAMED, column_keys=list(keys))
    return str(compiled), {k: v for k, v in compiled.params.items() if v is not None}


def _run(
    connection: sqlite3.Connection, statement: ClauseElement, values: dict[str, Any]
) -> sqlite3.Cursor:
    text, fixed = _sqlite_text(statement, tuple(values))
    return connection.execute(text, {**fixed, **values})


def _fetch(
    connection: sqlite3.Connection, statement: ClauseElement, values: dict[str, Any]
) -> list[tuple[Any, ...]]:
    # A read of one statement, on a held connection's thread (see `_append_in_thread`
    # for why one call): every row, as tuples in the statement's column order.
    rows: list[tuple[Any, ...]] = _run(connection, statement, values).fetchall()
    return rows


def _load_in_thread(connection: sqlite3.Connection, document: str, upto: int) -> Stored:
    # SQLStore.load for SQLite. Through SQLAlchemy, the rows of a long history become
    # Row objects on the event loop, and even an empty room costs round trips on it;
    # here both are off the loop.
    # One read transaction: the snapshot and the updates after it are of one moment.
    connection.execute("BEGIN")
    try:
        row = _run(connection, _SNAPSHOT_AT, {"document": document, "upto": upto}).fetchone()
        seq, state = (int(row[0]), bytes(row[1])) if row else (0, None)
        rows = _run(
            connection, _UPDATES_AFTER, {"document": document, "after": seq, "upto": upto}
        ).fetchall()
    finally:
        connection.rollback()
    return Stored(snapshot=state, snapshot_seq=seq, updates=[(int(s), bytes(d)) for s, d in rows])


def _snapshot_in_thread(
    connection: sqlite3.Connection, document: str, state: Update, seq: int, now: float
) -> None:
    # SQLStore.snapshot for SQLite (a compaction), in one call: see `_load_in_thread`.
    connection.execute("BEGIN IMMEDIATE")
    try:
        rows = _run(connection, _LAST_SEQ, {"document": document}).fetchall()
        _check_snapshot_seq(document, seq, rows[0][0] if rows else None)
        (newest,) = _run(connection, _NEWEST_SNAPSHOT, {"document": document}).fetchone()
        if newest is None or newest < seq:
            _run(connection, _NEW_SNAPSHOT, _snapshot_row(document, state, seq, now))
        connection.commit()
    except BaseException:
        connection.rollback()
        raise


def _check_snapshot_seq(document: str, seq: int, last: int | None) -> None:
    """Raises ValueError when `document`'s log has no update `seq`."""
    if last is None or seq < 1 or seq > last:
        raise ValueError(f"no update {seq} in the log of {document!r}")


def _snapshot_row(document: str, state: Update, seq: int, now: float) -> dict[str, Any]:
    return {"document": document, "seq": seq, "state": state, "created_at": now}


def _add_version_in_thread(
    connection: sqlite3.Connection,
    document: str,
    seq: int | None,
    label: str | None,
    author: str | None,
    automatic: bool,
    now: float,
) -> Version:
    # SQLStore.add_version for SQLite: through SQLAlchemy its five statements are five
    # round trips on the event loop, and every editing session that ends makes one
    # (an automatic version); here, one call. IMMEDIATE: the write lock before last_seq
    # is read, so no append lands between the check and the version.
    connection.execute("BEGIN IMMEDIATE")
    try:
        rows = _run(connection, _LAST_SEQ, {"document": document}).fetchall()
        seq = _version_seq(document, seq, rows[0][0] if rows else None)
        (previous,) = _run(
            connection, _PREVIOUS_VERSION, {"document": document, "seq": seq}
        ).fetchone()
        values = {"document": document, "after": previous or 0, "seq": seq}
        editors = tuple(editor for (editor,) in _run(connection, _EDITORS, values))
        row = _version_row(document, seq, label, author, automatic, now, editors)
        (version_id,) = _run(connection, _NEW_VERSION, row).fetchone()
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    return Version(int(version_id), document, seq, label, author, automatic, now, editors)


ADVANCE_CHUNK = 500
"""Documents per multi-row upsert (3 parameters each: far under SQLite's limit)."""


@lru_cache(maxsize=64)
def _advance_sql(count: int) -> str:
    """SQLite text of `SQLStore._advance` for `count` documents at once: each
    document's last_seq moved on by its count (created at it), where it ended
    returned, with its name (RETURNING's order is not the VALUES order)."""
    rows = ", ".join(["(?, ?, ?)"] * count)
    return (
        f"INSERT INTO {documents.name} ({documents.c.name.name}, {documents.c.last_seq.name}, "
        f"{documents.c.created_at.name}) VALUES {rows} "
        f"ON CONFLICT ({documents.c.name.name}) DO UPDATE SET "
        f"{documents.c.last_seq.name} = {documents.name}.{documents.c.last_seq.name} "
        f"+ excluded.{documents.c.last_seq.name} "
        f"RETURNING {documents.c.name.name}, {documents.c.last_seq.name}"
    )


def _check_sqlite_directory(url: str) -> None:
    # Refuse before aiosqlite starts its thread: when it fails to open a file, its
    # worker thread outlives the failure and reports to a closed event loop at exit.
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:"):
        return  # a URI filename: SQLite parses it, and says what is wrong
    directory = Path(database).parent
    if not directory.is_dir():
        raise FileNotFoundError(f"no directory {str(directory)!r} for the SQLite file")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, *, busy_timeout_ms: int) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
