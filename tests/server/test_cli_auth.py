"""The command line's side of permissions, as a user runs it: `collab-engine token`,
`serve --secret` / COLLAB_SECRET, the open-mode warning, and `grants` on a database
file that a server started afterwards enforces. Every command is a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import anyio
import jwt
import pytest
from pycrdt import Text

from collab_engine import protocol
from collab_engine.permissions import Role
from server.auth import mint
from tests.server.test_cli import stop
from tests.yclient import YClient, yclient

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SECRET = "cli-secret-of-at-least-32-bytes-0123456789"
OPEN_MODE = "OPEN DEVELOPMENT MODE"


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without COLLAB_SECRET, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if key != "COLLAB_SECRET"}
    env.update(extra)
    return env


async def cli(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run `collab-engine ARGS` to its end (20 s at most); never raises on its status."""
    with anyio.fail_after(20):
        return await anyio.run_process(
            [sys.executable, "-m", "server", *args], env=env or environment(), check=False
        )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


async def serve(
    *args: str, env: Mapping[str, str] | None = None
) -> tuple[anyio.abc.Process, str, str]:
    """Run `collab-engine serve` on a free port (as `test_cli.start_server`, with an
    environment of its own); return the process, its ws:// URL and what it printed
    up to and including the `listening on` line."""
    process = await anyio.open_process(
        [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env or environment(),
    )
    assert process.stdout is not None
    buffer = b""
    try:
        with anyio.fail_after(20):
            while b"listening on " not in buffer or not buffer.endswith(b"\n"):
                buffer += await process.stdout.receive()
    except BaseException:
        process.kill()
        await process.aclose()
        raise
    output = buffer.decode()
    line = next(text for text in output.splitlines() if "listening on " in text)
    return process, line.split("listening on ")[1].strip(), output


async def refused(url: str, name: str) -> YClient:
    """Connect to `url/name` without syncing; return the client once it is closed."""
    async with yclient(url, name, sync=False) as client:
        with anyio.fail_after(5):
            await client.closed.wait()
    return client


async def wait_text(client: YClient, text: str) -> None:
    await client.wait_for(lambda: str(client.doc.get("t", type=Text)) == text)


def denials(client: YClient) -> list[str]:
    return [m.reason for m in client.received if isinstance(m, protocol.PermissionDenied)]


SECRET_WARNING = "the secret was given as --secret: every local user can read it"


async def mint_with_cli(*args: str, env: Mapping[str, str] | None = None) -> str:
    """A token printed by `collab-engine token ARGS`: one line; nothing on stderr but,
    with `--secret`, the one-line warning that it shows in the process list."""
    result = await cli("token", *args, env=env)
    assert result.returncode == 0, err(result)
    if "--secret" in args:
        assert err(result).splitlines() == [
            f"collab-engine: WARNING: {SECRET_WARNING} "
            "in the process list; set COLLAB_SECRET or use --secret-file instead"
        ], err(result)
    else:
        assert err(result) == ""
    lines = out(result).splitlines()
    assert len(lines) == 1, out(result)
    return lines[0]


# -- the tests ----------------------------------------------------------------------------


async def test_token_from_the_cli_is_accepted_by_serve_with_the_same_secret(tmp_path: Path) -> None:
    """`token --secret S` prints a token with the claims asked for; `serve` with S in
    COLLAB_SECRET lets it read and write its documents, closes a connection without a
    token with 4401 and one to a document outside its pattern with 4403, and denies
    a viewer token's writes. No open-mode warning with a secret."""
    editor = await mint_with_cli(
        "--user", "alice", "--name", "Alice", "--role", "editor", "--doc", "cli/*", "--ttl", "3600",
        "--secret", SECRET,
    )  # fmt: skip
    claims = jwt.decode(editor, SECRET, algorithms=["HS256"])
    assert {k: claims[k] for k in ("sub", "name", "role", "doc", "groups")} == {
        "sub": "alice",
        "name": "Alice",
        "role": "editor",
        "doc": "cli/*",
        "groups": [],
    }
    assert 3590 <= claims["exp"] - time.time() <= 3601
    # The secret from the environment instead, a viewer this time.
    viewer = await mint_with_cli(
        "--user", "vic", "--role", "viewer", env=environment(COLLAB_SECRET=SECRET)
    )

    process, url, startup = await serve(
        "--db",
        str(tmp_path / "collab.db"),
        "--log-level",
        "INFO",
        env=environment(COLLAB_SECRET=SECRET),
    )
    try:
        assert OPEN_MODE not in startup, startup
        async with (
            yclient(url, f"cli/doc?token={editor}") as a,
            yclient(url, f"cli/doc?token={editor}") as b,
            yclient(url, f"cli/doc?token={viewer}") as v,
        ):
            a.doc.get("t", type=Text).insert(0, "signed by the cli")
            await a.flush()
            for client in (b, v):
                await wait_text(client, "signed by the cli")
            v.doc.get("t", type=Text).insert(0, "DENIED ")
            await v.flush()
            await v.wait_for(lambda: len(denials(v)) == 1)
            await v.wait_for(lambda: str(v.doc.get("t", type=Text)) == "signed by the cli")
            b.doc.get("t", type=Text).insert(0, "> ")  # a barrier: after the denied write
            await b.flush()
            await a.wait_for(lambda: str(a.doc.get("t", type=Text)) == "> signed by the cli")
            assert denials(a) == [] and denials(b) == []

        none = await refused(url, "cli/doc")
        assert none.close_code == 4401 and none.received == []
        outside = await refused(url, f"notes/doc?token={editor}")
        assert outside.close_code == 4403 and outside.received == []
        forged = await mint_with_cli(
            "--user", "alice", "--secret", "another-secret-of-at-least-32-bytes!!"
        )
        other = await refused(url, f"cli/doc?token={forged}")
        assert other.close_code == 4401 and other.received == []
    finally:
        assert await stop(process) == 0


async def test_serve_without_a_secret_warns_of_the_open_mode(tmp_path: Path) -> None:
    """Without --secret nor COLLAB_SECRET, `serve` logs a loud warning before it
    listens, and anyone connects without a token."""
    process, url, startup = await serve(
        "--db", str(tmp_path / "collab.db"), "--log-level", "WARNING"
    )
    try:
        warnings = [line for line in startup.splitlines() if OPEN_MODE in line]
        assert len(warnings) == 1, startup
        assert "WARNING" in warnings[0] and "COLLAB_SECRET" in warnings[0], warnings
        async with yclient(url, "open/doc") as client:
            client.doc.get("t", type=Text).insert(0, "anyone")
            await client.flush()
            async with yclient(url, "open/doc") as other:
                await other.wait_for(lambda: str(other.doc.get("t", type=Text)) == "anyone")
    finally:
        assert await stop(process) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--user", "alice"), "no secret: set COLLAB_SECRET or pass --secret-file"),
        (("--user", "alice", "--secret", "too-short"), "the secret must be at least 32 bytes long"),
        (("--user", "alice", "--secret", SECRET, "--role", "boss"), "unknown role 'boss'"),
    ],
    ids=["no secret", "short secret", "unknown role"],
)
async def test_token_without_a_good_secret_or_role_fails_in_one_line(
    args: tuple[str, ...], message: str
) -> None:
    """No token printed, status 2, one line on stderr that says why; no traceback."""
    result = await cli("token", *args)
    assert result.returncode == 2, (out(result), err(result))
    assert out(result) == ""
    lines = [line for line in err(result).splitlines() if SECRET_WARNING not in line]
    assert len(lines) == 1, err(result)
    assert lines[0].startswith("collab-engine: ") and message in lines[0], lines


async def test_serve_refuses_a_short_secret_before_listening(tmp_path: Path) -> None:
    env = environment(COLLAB_SECRET="short")
    result = await cli("serve", "--port", "0", "--db", str(tmp_path / "c.db"), env=env)
    assert result.returncode == 2
    assert err(result).strip() == "collab-engine: the secret must be at least 32 bytes long"
    assert "listening" not in out(result)


async def test_a_secret_on_the_command_line_is_warned_of_and_a_secret_file_works(
    tmp_path: Path,
) -> None:
    """`serve --secret` logs a WARNING that the key shows in the process list;
    COLLAB_SECRET and `--secret-file` (one trailing newline dropped) give none, and
    a server started with the file accepts tokens signed with its key only."""
    key = tmp_path / "secret"
    key.write_text(SECRET + "\n")
    token = await mint_with_cli("--user", "ann", "--secret-file", str(key))
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["sub"] == "ann"
    db = ("--db", str(tmp_path / "c.db"), "--log-level", "INFO")
    ways = {
        "argument": (("--secret", SECRET), environment()),
        "environment": ((), environment(COLLAB_SECRET=SECRET)),
        "file": (("--secret-file", str(key)), environment()),
    }
    for way, (args, env) in ways.items():
        process, url, startup = await serve(*db, *args, env=env)
        try:
            warned = [line for line in startup.splitlines() if SECRET_WARNING in line]
            if way == "argument":
                assert len(warned) == 1 and "WARNING" in warned[0], startup
            else:
                assert warned == [], (way, startup)
            assert OPEN_MODE not in startup, (way, startup)
            async with yclient(url, f"doc?token={token}") as client:
                client.doc.get("t", type=Text).insert(0, way)
                await client.flush()
            none = await refused(url, "doc")
            assert none.close_code == 4401, way
        finally:
            assert await stop(process) == 0
    empty = tmp_path / "empty"
    empty.write_text("")
    for path, message in ((empty, "at least 32 bytes"), (tmp_path / "missing", "cannot read")):
        result = await cli("serve", *db, "--secret-file", str(path))
        assert result.returncode == 2 and message in err(result), err(result)
        assert len(err(result).splitlines()) == 1, err(result)


async def test_grants_set_list_revoke_then_a_server_enforces_them(tmp_path: Path) -> None:
    """`grants set/list/revoke` change and print a document's grants in the database
    file; a server started on it afterwards enforces them: a user with no matching
    grant gets 4403, a group viewer is denied writes, a granted user writes, and a
    document without grants follows the token alone."""
    db = str(tmp_path / "grants.db")
    doc = "team/plan"

    result = await cli("grants", "set", doc, "user:alice", "owner", "--db", db)
    assert result.returncode == 0, err(result)
    assert out(result).splitlines() == ["user:alice\towner"]
    for principal, role in (("group:staff", "viewer"), ("user:mallory", "editor")):
        result = await cli("grants", "set", doc, principal, role, "--db", db)
        assert result.returncode == 0, err(result)
    result = await cli("grants", "set", doc, "user:mallory", "owner", "--db", db)  # replaces
    assert sorted(out(result).splitlines()) == [
        "group:staff\tviewer",
        "user:alice\towner",
        "user:mallory\towner",
    ]
    result = await cli("grants", "revoke", doc, "user:mallory", "--db", db)
    assert result.returncode == 0, err(result)
    assert sorted(out(result).splitlines()) == ["group:staff\tviewer", "user:alice\towner"]
    result = await cli("grants", "list", doc, "--db", db)
    assert result.returncode == 0, err(result)
    assert sorted(out(result).splitlines()) == ["group:staff\tviewer", "user:alice\towner"]
    assert err(result) == ""
    # Mistakes (run side by side): one line on stderr, status 2, nothing changed.
    mistakes = {
        ("revoke", doc, "user:nobody"): "user:nobody has no grant on 'team/plan'",
        ("set", doc, "user:bob", "boss"): "unknown role 'boss'",
        ("set", doc, "bob", "editor"): "bad principal 'bob'",
        ("set", doc, "user:bob"): "set needs a principal and a role",
    }
    results: dict[tuple[str, ...], subprocess.CompletedProcess[bytes]] = {}

    async def attempt(args: tuple[str, ...]) -> None:
        results[args] = await cli("grants", *args, "--db", db)

    async with anyio.create_task_group() as tg:
        for args in mistakes:
            tg.start_soon(attempt, args)
    for args, message in mistakes.items():
        result = results[args]
        assert result.returncode == 2, (args, out(result), err(result))
        assert len(err(result).splitlines()) == 1 and message in err(result), (args, err(result))
    result = await cli("grants", "list", doc, "--db", db)
    assert sorted(out(result).splitlines()) == ["group:staff\tviewer", "user:alice\towner"]

    # Tokens minted in-process (the `token` command has its own test above).
    alice = mint(SECRET, user="alice", role=Role.EDITOR)
    carol = mint(SECRET, user="carol", groups=["staff"], role=Role.EDITOR)
    bob = mint(SECRET, user="bob", role=Role.OWNER)
    mallory = mint(SECRET, user="mallory", role=Role.OWNER)
    env = environment(COLLAB_SECRET=SECRET)
    process, url, _ = await serve("--db", db, "--log-level", "WARNING", env=env)
    try:
        for name, token in (("bob", bob), ("mallory", mallory)):
            client = await refused(url, f"{doc}?token={token}")
            assert client.close_code == 4403, name
            assert client.received == [], name
        async with (
            yclient(url, f"{doc}?token={alice}") as a,
            yclient(url, f"{doc}?token={carol}") as c,
        ):
            a.doc.get("t", type=Text).insert(0, "alice writes")
            await a.flush()
            await c.wait_for(lambda: str(c.doc.get("t", type=Text)) == "alice writes")
            c.doc.get("t", type=Text).insert(0, "DENIED ")
            await c.flush()
            await c.wait_for(lambda: len(denials(c)) == 1)
            await c.wait_for(lambda: str(c.doc.get("t", type=Text)) == "alice writes")
            a.doc.get("t", type=Text).insert(0, "> ")
            await a.flush()
            await c.wait_for(lambda: str(c.doc.get("t", type=Text)) == "> alice writes")
            assert str(a.doc.get("t", type=Text)) == "> alice writes"
        # Grants are per document: where there are none, bob's token is enough.
        async with yclient(url, f"team/other?token={bob}") as b:
            b.doc.get("t", type=Text).insert(0, "bob writes")
            await b.flush()
            async with yclient(url, f"team/other?token={alice}") as a:
                await a.wait_for(lambda: str(a.doc.get("t", type=Text)) == "bob writes")
    finally:
        assert await stop(process) == 0


async def test_grants_on_an_unusable_database_fails_in_one_line(tmp_path: Path) -> None:
    """As `serve` does (one line: `cannot open the database ...`), `grants` on a
    database it cannot open says so in one line, with status 2."""
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a SQLite database" * 100)
    for db in (str(tmp_path / "missing" / "collab.db"), str(garbage)):
        result = await cli("grants", "list", "team/plan", "--db", db)
        assert "Traceback" not in err(result), err(result)
        assert result.returncode == 2 and len(err(result).splitlines()) == 1, err(result)


async def test_grants_take_the_name_in_nfc_and_refuse_control_characters(tmp_path: Path) -> None:
    """The CLI takes a document name as the server does: set on `café` spelled in NFD,
    listed through NFC; a control character in the name is refused."""
    db = str(tmp_path / "grants.db")
    result = await cli("grants", "set", "cafe\u0301", "user:alice", "owner", "--db", db)
    assert result.returncode == 0, err(result)
    result = await cli("grants", "list", "caf\u00e9", "--db", db)
    assert out(result).splitlines() == ["user:alice\towner"]
    result = await cli("grants", "set", "tab\tname", "user:alice", "owner", "--db", db)
    assert result.returncode == 2
    assert "control character U+0009" in err(result)
