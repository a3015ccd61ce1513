"""Storage backends for collab-engine: implementations of `collab_engine.store.Store`.

SQLite (the embedded default) and PostgreSQL through the same SQLAlchemy Core code
(`SQLStore`), and an in-memory reference (`MemoryStore`).
"""

from .memory import MemoryStore as MemoryStore
from .sql import SQLStore as SQLStore
from .sql import sqlite_url as sqlite_url

__all__ = ["MemoryStore", "SQLStore", "sqlite_url"]
