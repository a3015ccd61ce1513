"""`collab-engine history`, `export` and `import` as a user runs them: separate
processes, on a SQLite file with the server stopped, and against a running server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from pycrdt import Doc, Map, Text

from collab_engine.content import content_of
from collab_engine.permissions import Role
from server.auth import mint
from server.settings import Settings
from storage import sqlite_url
from tests.conftest import TEST_ENGINE, running_server
from tests.server.test_cli import start_server
from tests.yclient import yclient

pytestmark = pytest.mark.anyio

SECRET = "cli-history-secret-of-32-bytes-at-least"


async def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    result = await anyio.run_process([sys.executable, "-m", "server", *args], check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{args}: exit {result.returncode}: {result.stderr.decode()}")
    return result


async def test_history_export_and_import_on_the_database(tmp_path: Path) -> None:
    """With the server stopped: name a version, change the document by importing
    JSON, read the version and the diff, restore, export as a Yjs update and import
    it into another document, which then holds the same content."""
    db = str(tmp_path / "collab.db")
    settings = Settings(ping_interval=None, engine=TEST_ENGINE, database_url=sqlite_url(db))
    async with running_server(settings) as (_, url):
        async with yclient(url, "notes") as client:
            client.doc.get("body", type=Text).insert(0, "Première version ✍️")
            client.doc.get("meta", type=Map)["title"] = "Notes"
            await client.flush()
            await client.request_persisted()
            await client.wait_persisted()
            first = content_of(client.doc)
    where = ("--db", db)
    made = json.loads(
        (await cli("history", "create", "notes", "--label", "v1", "--json", *where)).stdout
    )
    version = made["version"]["id"]
    assert made["version"]["label"] == "v1"
    changed = tmp_path / "changed.json"
    changed.write_text(
        json.dumps({"roots": {"body": {"type": "text", "text": "Rewritten"}}}), encoding="utf-8"
    )
    await cli("import", "notes", str(changed), *where, "--author", "user:importer")
    shown = (await cli("history", "show", "notes", "now", *where)).stdout.decode()
    assert "Rewritten" in shown and "Notes" in shown
    listed = (await cli("history", "list", "notes", *where)).stdout.decode()
    assert "v1" in listed and "named" in listed
    diff = (await cli("history", "diff", "notes", str(version), "now", *where)).stdout.decode()
    assert '- @0 "Première version ✍️"' in diff
    assert '+ @0 "Rewritten"  (user:importer)' in diff
    at_version = json.loads(
        (await cli("history", "show", "notes", str(version), "--json", *where)).stdout
    )
    assert at_version["roots"] == first
    await cli("history", "restore", "notes", str(version), *where)
    now = json.loads((await cli("history", "show", "notes", "now", "--json", *where)).stdout)
    assert now["roots"] == first
    exported = tmp_path / "notes.yjs"
    await cli("export", "notes", "--format", "yjs", "-o", str(exported), *where)
    replica: Doc = Doc()
    replica.apply_update(exported.read_bytes())
    assert content_of(replica) == first
    await cli("import", "copy", str(exported), *where)
    as_json = json.loads((await cli("export", "copy", *where)).stdout)
    assert as_json == {"roots": first}
    missing = await cli("history", "show", "notes", "99", *where, check=False)
    assert missing.returncode == 1 and b"no version 99" in missing.stderr
    nowhere = await cli("history", "list", "notes", "--db", str(tmp_path / "none.db"), check=False)
    assert nowhere.returncode != 0 and b"no database" in nowhere.stderr


async def test_history_against_a_running_server_reaches_connected_clients(tmp_path: Path) -> None:
    """With `--url`, a restore and an import go through the server: a connected client
    sees them at once. The CLI mints an owner token from the secret. The serve flags
    for automatic versions apply: the quiet import gets one, crediting its author."""
    process, url = await start_server(
        "--db",
        str(tmp_path / "live.db"),
        "--secret",
        SECRET,
        "--log-level",
        "WARNING",
        "--version-after-quiet",
        "0.3",
        "--version-min-interval",
        "0",
    )
    http = url.replace("ws://", "http://")
    where = ("--url", http, "--secret", SECRET)
    token = mint(SECRET, user="ann", role=Role.EDITOR)
    try:
        async with yclient(url, f"live?token={token}") as client:
            body = client.doc.get("body", type=Text)
            body.insert(0, "kept")
            await client.flush()
            await client.request_persisted()
            await client.wait_persisted()
            made = json.loads((await cli("history", "create", "live", "--json", *where)).stdout)
            body.insert(4, " and then lost")
            await client.flush()
            await client.wait_persisted()
            await cli("history", "restore", "live", str(made["version"]["id"]), *where)
            await client.wait_for(lambda: str(body) == "kept")
            content = tmp_path / "new.json"
            content.write_text(json.dumps({"roots": {"meta": {"type": "map", "value": {"k": 1}}}}))
            await cli("import", "live", str(content), *where)
            meta = client.doc.get("meta", type=Map)
            await client.wait_for(lambda: meta.to_py() == {"k": 1.0})
            with anyio.fail_after(10):
                while True:
                    listed = await cli("history", "list", "live", "--json", *where)
                    versions = json.loads(listed.stdout)["versions"]
                    if versions[-1]["automatic"]:
                        break
                    await anyio.sleep(0.2)
            assert versions[-1]["editors"] == ["cli"]
            named = [v["label"] for v in versions if not v["automatic"]]
            assert named == [None, f"Restored version {made['version']['id']}"]
            refused = await cli("history", "list", "live", "--url", http, check=False)
            assert refused.returncode == 1 and b"401" in refused.stderr
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.wait()


async def test_the_secret_administers_a_document_whose_grants_name_someone_else(
    tmp_path: Path,
) -> None:
    """The token the CLI mints from `--secret` is an admin token: history, export and
    import work on a document whose grants are for another user only. A token with no
    grant there gets 403, with a reason that names the user and the missing grant."""
    process, url = await start_server(
        "--db", str(tmp_path / "granted.db"), "--secret", SECRET, "--log-level", "WARNING",
        "--no-automatic-versions",
    )  # fmt: skip
    http = url.replace("ws://", "http://")
    where = ("--url", http, "--secret", SECRET)
    ann = mint(SECRET, user="ann", role=Role.OWNER)
    try:
        async with yclient(url, f"kept?token={ann}") as client:
            body = client.doc.get("body", type=Text)
            body.insert(0, "ann's")
            await client.flush()
            await client.request_persisted()
            await client.wait_persisted()
            async with httpx.AsyncClient(
                base_url=f"{http}/api/documents", headers={"authorization": f"Bearer {ann}"}
            ) as api:
                granted = await api.put("/kept/grants/user:ann", json={"role": "owner"})
                assert granted.status_code == 200, granted.text
                grants = (await api.get("/kept/grants")).json()["grants"]
                assert grants == [{"principal": "user:ann", "role": "owner"}]
            made = json.loads((await cli("history", "create", "kept", "--json", *where)).stdout)
            listed = json.loads((await cli("history", "list", "kept", "--json", *where)).stdout)
            assert [v["id"] for v in listed["versions"]] == [made["version"]["id"]]
            shown = (await cli("history", "show", "kept", "now", *where)).stdout.decode()
            assert "ann's" in shown
            exported = json.loads((await cli("export", "kept", *where)).stdout)
            assert exported["roots"]["body"]["text"] == "ann's"
            content = tmp_path / "more.json"
            content.write_text(json.dumps({"roots": {"meta": {"type": "map", "value": {"k": 1}}}}))
            await cli("import", "kept", str(content), *where)
            meta = client.doc.get("meta", type=Map)
            await client.wait_for(lambda: meta.to_py() == {"k": 1.0})

        bob = mint(SECRET, user="bob", role=Role.OWNER)
        refused = await cli("history", "list", "kept", "--url", http, "--token", bob, check=False)
        assert refused.returncode == 1
        assert refused.stderr.decode().strip() == (
            "collab-engine: 403: bob may not read 'kept': it has grants, and none for "
            "user:bob; an owner can add one with PUT /api/documents/kept/grants/user:bob"
        )
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.wait()
