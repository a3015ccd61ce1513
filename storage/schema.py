"""The tables, in SQLAlchemy Core (rows are blobs: no ORM), and their migrations.

    documents(name PK, last_seq, created_at)
    updates(document, seq, data, author, created_at)   PK (document, seq): the log
    snapshots(document, seq, state, created_at)        PK (document, seq)
    grants(document, principal, role, created_at)      PK (document, principal)
    versions(id, document, seq, label, author, automatic, created_at, editors)
    nodes(id PK, started_at, expires_at)               a cluster's nodes and their leases
    owners(document PK, node, epoch, locks)            each document's owner (node NULL:
                                                       released), its ownership epoch, and
                                                       its locks for a successor (JSON)
    schema_version(version)                            one row

The same schema runs on SQLite and PostgreSQL. Migrations are keyed by version
number and applied in order at start-up, in one transaction each.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)

metadata = MetaData()

documents = Table(
    "documents",
    metadata,
    Column("name", String(1024), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
)

updates = Table(
    "updates",
    metadata,
    Column("document", String(1024), ForeignKey("documents.name"), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("author", String(256)),
    Column("created_at", Float, nullable=False),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("document", String(1024), ForeignKey("documents.name"), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("state", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

grants = Table(
    "grants",
    metadata,
    Column("document", String(1024), primary_key=True),
    Column("principal", String(512), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("document", String(1024), ForeignKey("documents.name"), nullable=False, index=True),
    Column("seq", BigInteger, nullable=False),
    Column("label", String(512)),
    Column("author", String(256)),
    Column("automatic", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("editors", Text),  # JSON list: who wrote updates since the version before
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", String(256), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),  # the database's clock, Unix time
)

owners = Table(
    "owners",
    metadata,
    # No foreign key to documents: a document is owned before its first update.
    Column("document", String(1024), primary_key=True),
    Column("node", String(256)),
    Column("epoch", BigInteger, nullable=False),  # only grows: the fence of appends
    Column("locks", Text),  # the owner's leases, for whoever takes the document over
)

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))


def _v1(connection: Connection) -> None:
    metadata.create_all(connection, tables=[documents, updates, snapshots])


def _v2(connection: Connection) -> None:
    metadata.create_all(connection, tables=[grants])


def _v3(connection: Connection) -> None:
    metadata.create_all(connection, tables=[versions])


def _v4(connection: Connection) -> None:
    # Version 3 databases have the table without the column (new ones get it from _v3).
    if "editors" not in {column["name"] for column in inspect(connection).get_columns("versions")}:
        connection.execute(text("ALTER TABLE versions ADD COLUMN editors TEXT"))


def _v5(connection: Connection) -> None:
    metadata.create_all(connection, tables=[nodes, owners])


def _v6(connection: Connection) -> None:
    # Version 5 databases have the table without the column (new ones get it from _v5).
    if "locks" not in {column["name"] for column in inspect(connection).get_columns("owners")}:
        connection.execute(text("ALTER TABLE owners ADD COLUMN locks TEXT"))


MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _v5, _v6]
"""Migration N (1-based) brings the schema from version N - 1 to N."""


def migrate(connection: Connection) -> int:
    """Apply the missing migrations; return the resulting version."""
    schema_version.create(connection, checkfirst=True)
    current = connection.execute(schema_version.select()).scalar()
    if current is None:
        connection.execute(schema_version.insert().values(version=0))
        current = 0
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"the database has schema version {current}, newer than this program's "
            f"{len(MIGRATIONS)}: upgrade collab-engine"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        MIGRATIONS[version - 1](connection)
        connection.execute(schema_version.update().values(version=version))
    return len(MIGRATIONS)
