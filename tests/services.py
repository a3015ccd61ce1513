"""The services some tests need (PostgreSQL, Redis), found or reported.

Where a service does not answer, its tests skip with the reason, except under CI
(`CI=true`): CI's machines run both, so a missing one there is a failure, never a
silent pass.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


def answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections at `host`:`port`."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need(service: str, port: int) -> None:
    """Skip the test (fail it under CI) unless `service` answers on `port`."""
    if answers(port):
        return
    reason = f"no {service} answers at 127.0.0.1:{port} (see shared/services.md)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: CI runs it, so this is a failure")
    pytest.skip(reason)


def need_program(name: str) -> str:
    """The path of program `name`; skip the test (fail it under CI) where it is missing."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"`{name}` is not installed (see shared/services.md)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: CI has it, so this is a failure")
    pytest.skip(reason)


@asynccontextmanager
async def postgres_schema(prefix: str = "test") -> AsyncIterator[dict[str, object]]:
    """A fresh PostgreSQL schema, dropped afterwards: yields the `SQLStore.connect`
    keyword arguments that make a connection use it (its search path)."""
    need("PostgreSQL", 5432)
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    # Not SQLStore.connect: that would migrate the public schema, which other
    # checkouts' tests (another schema version) may share.
    admin = create_async_engine(POSTGRES)
    try:
        async with admin.begin() as connection:
            await connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        try:
            yield {"connect_args": {"server_settings": {"search_path": schema}}}
        finally:
            async with admin.begin() as connection:
                await connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await admin.dispose()
