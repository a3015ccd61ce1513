"""`SQLOwnership`: the cluster's ownership table in PostgreSQL (see
`collab_engine.ownership` for the rules it keeps).

    nodes(id, started_at, expires_at)    a node's lease: it lapses at expires_at
    owners(document, node, epoch)        the owner (NULL: released) and the epoch

Times are the database's clock (`clock_timestamp()`, Unix seconds): the nodes'
own clocks never enter a decision, so they may disagree. A claim is one statement
that inserts the owner row or moves it, in which PostgreSQL decides the race
between two nodes claiming at once: the row's lock makes the second wait for the
first and then see its owner alive. Moving a row takes the same lock that a fenced
append reads it with (`FOR SHARE`, `storage.sql`): a claim and an append of the
document's old owner are ordered, and the append after the claim is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import BigInteger, Float, String, TextClause, bindparam, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import TypeEngine

from collab_engine.errors import StorageError
from collab_engine.journal import describe_error
from collab_engine.ownership import Deposed, Lease, Node


def _sql(statement: str) -> TextClause:
    """`statement` with its parameters typed, so that asyncpg is told their types
    rather than deduce one from each place a parameter is used."""
    clause = text(statement)
    types: dict[str, TypeEngine[Any]] = {
        "node": String(),
        "document": String(),
        "ttl": Float(),
        "epoch": BigInteger(),
        "locks": String(),
    }
    return clause.bindparams(
        *(bindparam(name, type_=kind) for name, kind in types.items() if f":{name}" in statement)
    )


NOW = "extract(epoch from clock_timestamp())"
"""The database's clock, in Unix seconds (the time of the statement, not of the
transaction's start)."""

_REGISTER = _sql(
    f"""
    INSERT INTO nodes (id, started_at, expires_at) VALUES (:node, {NOW}, {NOW} + :ttl)
    ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at
    """
)
_RENEW = _sql(
    f"""
    UPDATE nodes SET expires_at = {NOW} + :ttl
    WHERE id = :node AND expires_at > {NOW}
    RETURNING id
    """
)
_CLAIM = _sql(
    f"""
    INSERT INTO owners (document, node, epoch)
    SELECT :document, :node, 1
    WHERE EXISTS (SELECT 1 FROM nodes WHERE id = :node AND expires_at > {NOW})
    ON CONFLICT (document) DO UPDATE SET node = EXCLUDED.node, epoch = owners.epoch + 1
    WHERE owners.node IS DISTINCT FROM EXCLUDED.node AND NOT EXISTS (
        SELECT 1 FROM nodes WHERE nodes.id = owners.node AND nodes.expires_at > {NOW}
    )
    RETURNING node, epoch
    """
)
"""Ours if nobody owns it, its owner released it or its owner's lease lapsed, and
our own lease has not: one statement, one row lock."""
_OWNER = _sql(
    f"""
    SELECT owners.node, owners.epoch, nodes.expires_at > {NOW} AS alive
    FROM owners LEFT JOIN nodes ON nodes.id = owners.node
    WHERE owners.document = :document
    """
)
_ALIVE = _sql(f"SELECT expires_at > {NOW} FROM nodes WHERE id = :node")
_RELEASE = _sql(
    """
    UPDATE owners SET node = NULL, epoch = epoch + 1
    WHERE document = :document AND node = :node AND epoch = :epoch
    RETURNING epoch
    """
)
"""The epoch moves on at a release too: whatever the releasing node still tries to
append after it is refused, though nobody has claimed the document yet."""
_RELEASE_ALL = _sql(
    "UPDATE owners SET node = NULL, epoch = epoch + 1 WHERE node = :node RETURNING document"
)
_SAVE_LOCKS = _sql(
    """
    UPDATE owners SET locks = :locks
    WHERE document = :document AND node = :node AND epoch = :epoch
    RETURNING epoch
    """
)
_LOCKS = _sql("SELECT locks FROM owners WHERE document = :document")
_DEREGISTER = _sql("DELETE FROM nodes WHERE id = :node")
_NODES = _sql(f"SELECT id, started_at, expires_at, expires_at > {NOW} AS alive FROM nodes")
_LEASES = _sql("SELECT document, node, epoch FROM owners WHERE node IS NOT NULL ORDER BY document")
_LEASES_OF = _sql("SELECT document, node, epoch FROM owners WHERE node = :node ORDER BY document")


class SQLOwnership:
    """One node's view of the ownership table of a PostgreSQL database.

    Args:
        engine: the SQLAlchemy async engine of the cluster's database (the store's;
            its schema brought up to date by `SQLStore.connect`).
        node: this node's id, unique in the cluster.
        ttl: seconds this node's lease lasts without renewal.
    """

    def __init__(self, engine: AsyncEngine, node: str, ttl: float) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError(f"a cluster keeps ownership in PostgreSQL, not {engine.dialect.name}")
        if not node:
            raise ValueError("a node needs an id")
        if not ttl > 0:
            raise ValueError("a lease's ttl must be positive")
        self.engine = engine
        self.node = node
        self.ttl = ttl

    async def register(self) -> None:
        async with self._transaction() as connection:
            await connection.execute(_REGISTER, {"node": self.node, "ttl": self.ttl})

    async def renew(self) -> bool:
        async with self._transaction() as connection:
            renewed = await connection.execute(_RENEW, {"node": self.node, "ttl": self.ttl})
            if renewed.first() is not None:
                return True
            await connection.execute(_REGISTER, {"node": self.node, "ttl": self.ttl})
            return False

    async def claim(self, document: str) -> Lease:
        async with self._transaction() as connection:
            claimed = (
                await connection.execute(_CLAIM, {"document": document, "node": self.node})
            ).first()
            if claimed is not None:
                return Lease(document, self.node, int(claimed.epoch))
            alive = (await connection.execute(_ALIVE, {"node": self.node})).scalar()
            if not alive:
                raise Deposed(
                    f"node {self.node!r} claims nothing: its lease has lapsed "
                    "(it is renewed once the database answers again)"
                )
            row = (await connection.execute(_OWNER, {"document": document})).first()
        # Not inserted, not moved, and our lease is live: the row is ours already, or
        # a live node's (one that moved it since our statement included).
        assert row is not None and row.node is not None, "a claim that failed left no owner"
        return Lease(document, str(row.node), int(row.epoch))

    async def owner(self, document: str) -> Lease | None:
        async with self._transaction() as connection:
            row = (await connection.execute(_OWNER, {"document": document})).first()
        if row is None or row.node is None or not row.alive:
            return None
        return Lease(document, str(row.node), int(row.epoch))

    async def held(self, leases: Sequence[Lease]) -> list[Lease]:
        current = {lease.document: lease for lease in await self.leases(self.node)}
        return [lease for lease in leases if current.get(lease.document) == lease]

    async def release(self, lease: Lease) -> bool:
        values = {"document": lease.document, "node": lease.node, "epoch": lease.epoch}
        async with self._transaction() as connection:
            return (await connection.execute(_RELEASE, values)).first() is not None

    async def save_locks(self, lease: Lease, locks: str) -> None:
        values = {
            "document": lease.document,
            "node": lease.node,
            "epoch": lease.epoch,
            "locks": locks,
        }
        async with self._transaction() as connection:
            saved = (await connection.execute(_SAVE_LOCKS, values)).first()
        if saved is None:
            raise Deposed(
                f"document {lease.document!r} moved on from epoch {lease.epoch}: "
                "its locks are no longer this node's to keep"
            )

    async def locks(self, document: str) -> str | None:
        async with self._transaction() as connection:
            value = (await connection.execute(_LOCKS, {"document": document})).scalar()
        return None if value is None else str(value)

    async def deregister(self) -> None:
        async with self._transaction() as connection:
            await connection.execute(_RELEASE_ALL, {"node": self.node})
            await connection.execute(_DEREGISTER, {"node": self.node})

    async def nodes(self) -> list[Node]:
        async with self._transaction() as connection:
            rows = (await connection.execute(_NODES)).all()
        return [
            Node(str(row.id), float(row.started_at), float(row.expires_at), bool(row.alive))
            for row in sorted(rows, key=lambda row: str(row.id))
        ]

    async def leases(self, node: str | None = None) -> list[Lease]:
        async with self._transaction() as connection:
            if node is None:
                rows = (await connection.execute(_LEASES)).all()
            else:
                rows = (await connection.execute(_LEASES_OF, {"node": node})).all()
        return [Lease(str(row.document), str(row.node), int(row.epoch)) for row in rows]

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction, with the database's errors as `StorageError` (1011)."""
        try:
            async with self.engine.begin() as connection:
                yield connection
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(
                f"the ownership table cannot be reached: {describe_error(exc)}"
            ) from exc
