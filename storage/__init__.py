"""Storage backends for collab-engine (SQLite by default, PostgreSQL through the same schema)."""
