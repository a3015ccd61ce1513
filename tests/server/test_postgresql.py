"""The server on PostgreSQL (`--database-url`): the same schema, queries and promise.

Skips with a reason when no PostgreSQL answers at 127.0.0.1:5432 (database `test`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from pycrdt import Map, Text
from sqlalchemy import delete

from collab_engine.engine import rebuild
from storage import SQLStore
from storage.schema import documents, snapshots, updates
from tests.server.test_cli import start_server, stop
from tests.storage.test_store_contract import POSTGRES, postgres_answers
from tests.yclient import yclient

pytestmark = pytest.mark.anyio


@pytest.fixture
async def document() -> AsyncIterator[str]:
    """A fresh document name; its rows are deleted afterwards."""
    if not postgres_answers():
        pytest.skip("no PostgreSQL answers at 127.0.0.1:5432 (see shared/services.md)")
    name = f"pg-test/{uuid.uuid4().hex}"
    yield name
    store = await SQLStore.connect(POSTGRES)
    try:
        async with store.engine.begin() as connection:
            for table in (snapshots, updates):
                await connection.execute(delete(table).where(table.c.document == name))
            await connection.execute(delete(documents).where(documents.c.name == name))
    finally:
        await store.aclose()


async def test_acknowledged_edits_survive_a_restart_on_postgresql(document: str) -> None:
    """Write through the CLI server on PostgreSQL with acknowledgements, compacting
    along the way; stop it; a new server serves the same content, and the rows are
    in PostgreSQL."""
    args = ("--database-url", POSTGRES, "--compact-after-updates", "20", "--log-level", "WARNING")
    process, url = await start_server(*args)
    try:
        async with yclient(url, document) as writer:
            await writer.request_persisted()
            text = writer.doc.get("t", type=Text)
            for i in range(50):
                text += f"{i}é;"
                await writer.flush()
            writer.doc.get("m", type=Map)["key"] = "value"
            await writer.flush()
            await writer.wait_persisted()
            expected = str(text)
            # The compactor runs on its own schedule (the sweep finds the document
            # due): wait for its snapshot before stopping the server.
            store = await SQLStore.connect(POSTGRES)
            try:
                with anyio.fail_after(10):
                    while (await store.load(document)).snapshot_seq < 20:
                        await anyio.sleep(0.05)
            finally:
                await store.aclose()
    finally:
        assert await stop(process) == 0
    process, url = await start_server(*args)
    try:
        async with yclient(url, document) as reader:
            assert str(reader.doc.get("t", type=Text)) == expected
            assert reader.doc.get("m", type=Map).to_py() == {"key": "value"}
    finally:
        assert await stop(process) == 0
    store = await SQLStore.connect(POSTGRES)
    try:
        stored = await store.load(document)
        assert stored.snapshot_seq >= 20  # the compactor ran on PostgreSQL too
        assert str(rebuild(document, stored).get("t", type=Text)) == expected
    finally:
        await store.aclose()
