"""Interop across a restart: what the npm y-websocket client wrote is served again,
exactly, by a new server on the same SQLite file.

Node >= 20 and `npm ci --prefix tests/interop` are required: without them this test
fails (it is not skipped), like the other interop tests.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from server.settings import Settings
from storage import sqlite_url
from tests.conftest import TEST_ENGINE, running_server
from tests.interop.test_yjs_client import (
    _normalise,
    node_client,
    node_executable,
    server_map,
    server_text,
    sha256,
    wait_server,
)

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.timeout(60)]

ROOM = "interop/restart/héllo"
TEXT = "héllo 🌍, naïve café: 日本語テキスト; ∑ 😀 end"
MAP = {
    "greeting": "grüß dich 👋",
    "count": 42,
    "nested": {"list": [1, "zwei", "三", {"deep": True}], "emoji": "🎉"},
    "ünïcödé-kéy": None,
}


def settings_on(db: Path) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        ping_interval=None,
        engine=TEST_ENGINE,
        database_url=sqlite_url(str(db)),
    )


async def test_content_written_by_yjs_is_served_after_restart(tmp_path: Path) -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    db = tmp_path / "restart.db"
    with anyio.fail_after(40):
        async with running_server(settings_on(db)) as (app, url):
            async with node_client(url, ROOM, label="writer") as writer:
                await writer.request("insert", index=0, text=TEXT)
                # An insert in the middle, at a UTF-16 index past the astral character.
                await writer.request("insert", index=TEXT.index("🌍") + 2, text=" ⟨mid⟩")
                for key, value in MAP.items():
                    await writer.request("mapSet", key=key, value=value)
                await writer.request("delete", index=0, length=1)
                written = await writer.state()
                await wait_server(
                    app,
                    ROOM,
                    lambda: (
                        sha256(server_text(app, ROOM)) == written["textSha256"]
                        and server_map(app, ROOM) == _normalise(written["map"])
                    ),
                )
                # No flush: stopping the server writes everything it accepted.

        assert written["text"] == "éllo 🌍 ⟨mid⟩, naïve café: 日本語テキスト; ∑ 😀 end"
        assert _normalise(written["map"]) == MAP

        async with running_server(settings_on(db)) as (app, url):
            assert ROOM not in app.engine.rooms, "a new server starts with no document loaded"
            async with node_client(url, ROOM, label="reader") as reader:
                read = await reader.state()
                assert read["text"] == written["text"]
                assert read["textLength"] == written["textLength"]  # UTF-16 code units
                assert read["textSha256"] == written["textSha256"]
                assert _normalise(read["map"]) == _normalise(written["map"])
                assert server_text(app, ROOM) == written["text"]
                assert server_map(app, ROOM) == _normalise(written["map"])
                # The restored document takes new edits after the restored content.
                await reader.request("insert", index=-1, text=" ✓")
                await reader.wait({"text": written["text"] + " ✓"})
                await wait_server(app, ROOM, lambda: server_text(app, ROOM).endswith(" ✓"))
