"""The `history`, `export` and `import` commands of `collab-engine`.

    collab-engine history list    DOC
    collab-engine history create  DOC [--label TEXT]
    collab-engine history show    DOC VERSION|now [--json]
    collab-engine history diff    DOC FROM TO|now [--json]
    collab-engine history restore DOC VERSION
    collab-engine export DOC [--format json|yjs] [-o FILE]
    collab-engine import DOC FILE            (.json: content; anything else: a Yjs update)

Each works in one of two places:

- `--url http://HOST:PORT`: through a running server's HTTP API, so that a restore
  or an import reaches connected clients at once, like any edit. With a secret,
  give `--token`, or the server's secret (`$COLLAB_SECRET`, `--secret-file` or
  `--secret`), from which an admin token is minted for the user "cli": owner of
  every document, whatever its grants.
- otherwise, on the database itself (`--db PATH`, default ./collab.db, or
  `--database-url`), with the server stopped: an engine is run in this process for
  the one command. Changes made so while a server runs reach its clients only when
  the document next loads there.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio

from collab_engine.content import fill
from collab_engine.engine import Engine, EngineConfig
from collab_engine.errors import CollabError, InvalidDocumentName, StorageError
from collab_engine.history import HistoryPolicy, VersionNotFound
from collab_engine.journal import describe_error
from collab_engine.names import document_name
from collab_engine.permissions import Role
from storage import SQLStore, sqlite_url

from . import secret
from .auth import mint

DEFAULT_DB = "collab.db"


def add_commands(commands: Any) -> None:
    """Add `history`, `export` and `import` to the `collab-engine` subcommands."""
    history = commands.add_parser(
        "history", help="versions of a document: list, show, diff, restore"
    )
    actions = history.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the versions, oldest first")
    listing.add_argument("document")
    create = actions.add_parser("create", help="name the document as it is now")
    create.add_argument("document")
    create.add_argument("--label", help="the version's label (default: none)")
    show = actions.add_parser("show", help="the content at a version (or now)")
    show.add_argument("document")
    show.add_argument("version", help="a version id, or now")
    diff = actions.add_parser("diff", help="what changed between two versions, and who did it")
    diff.add_argument("document")
    diff.add_argument("start", metavar="from", help="a version id")
    diff.add_argument("end", metavar="to", help="a version id, or now")
    restore = actions.add_parser(
        "restore", help="make the document equal to a version, as a new change"
    )
    restore.add_argument("document")
    restore.add_argument("version", help="a version id")
    export = commands.add_parser(
        "export", help="write a document out: JSON content or a Yjs update"
    )
    export.add_argument("document")
    export.add_argument(
        "--format",
        choices=["json", "yjs"],
        default="json",
        help="json: the content as JSON; yjs: the document as one binary Yjs update",
    )
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    imports = commands.add_parser(
        "import", help="merge a Yjs update into a document, or replace its roots with JSON content"
    )
    imports.add_argument("document")
    imports.add_argument("file", help="a .json file (as export gives) or a binary Yjs update")
    for parser in (listing, create, show, diff, restore, export, imports):
        parser.add_argument("--json", action="store_true", help="print JSON, not text")
        where = parser.add_mutually_exclusive_group()
        where.add_argument(
            "--db", metavar="PATH", default=DEFAULT_DB, help="the SQLite file (server stopped)"
        )
        where.add_argument(
            "--database-url", metavar="URL", help="a SQLAlchemy async URL instead of --db"
        )
        where.add_argument("--url", metavar="URL", help="a running server: http://host:port")
        parser.add_argument("--token", help="with --url: the bearer token")
        secret.add_options(parser, "with --url: mint an admin token with this key")
        parser.add_argument(
            "--author",
            help="who the change is by, in database mode (default: cli:<your login>)",
        )


def run(args: argparse.Namespace) -> None:
    """Run a `history`, `export` or `import` command; exit 1 with the reason on failure.
    The document name is taken as the server takes it (`names.document_name`: NFC)."""
    try:
        args.document = document_name(args.document)
    except InvalidDocumentName as error:
        print(f"collab-engine: {error.reason}", file=sys.stderr)
        sys.exit(1)
    try:
        target: _Target = _HTTP(args) if args.url else _Database(args)
        if args.command == "history":
            _history(target, args)
        elif args.command == "export":
            _export(target, args)
        else:
            _import(target, args)
    except _Failure as failure:
        print(f"collab-engine: {failure}", file=sys.stderr)
        sys.exit(1)


class _Failure(Exception):
    """What went wrong, to print."""


# -- the commands ------------------------------------------------------------------------


def _history(target: _Target, args: argparse.Namespace) -> None:
    name = args.document
    if args.action == "list":
        versions = target.call("GET", f"{name}/versions")["versions"]
        _print(args, {"document": name, "versions": versions}, _versions_text)
    elif args.action == "create":
        answer = target.call("POST", f"{name}/versions", {"label": args.label})
        _print(args, answer, lambda a: _versions_text({"versions": [a["version"]]}))
    elif args.action == "show":
        _print(args, target.call("GET", f"{name}/versions/{_id(args.version)}"), _content_text)
    elif args.action == "diff":
        path = f"{name}/versions/{_id(args.start, now=False)}/diff/{_id(args.end)}"
        _print(args, target.call("GET", path), _diff_text)
    else:
        answer = target.call("POST", f"{name}/versions/{_id(args.version, now=False)}/restore")
        _print(args, answer, lambda a: f"restored: {_versions_text({'versions': [a['version']]})}")


def _export(target: _Target, args: argparse.Namespace) -> None:
    if args.format == "yjs":
        data = target.update(args.document)
    else:
        content = target.call("GET", f"{args.document}/versions/now")
        data = (
            json.dumps({"roots": content["roots"]}, ensure_ascii=False, indent=2) + "\n"
        ).encode()
    if args.output:
        Path(args.output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)


def _import(target: _Target, args: argparse.Namespace) -> None:
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Failure(f"cannot read {args.file}: {exc.strerror}") from None
    if path.suffix == ".json":
        try:
            roots = json.loads(data).get("roots")
        except (ValueError, AttributeError):
            roots = None
        if not isinstance(roots, dict):
            raise _Failure(f'{args.file} is not {{"roots": {{...}}}} as export writes it')
        answer = target.call("PUT", f"{args.document}/content", {"roots": roots})
    else:
        answer = target.import_update(args.document, data)
    _print(
        args, answer, lambda a: f"imported into {a['document']!r}: stored up to update {a['seq']}"
    )


def _id(text: str, *, now: bool = True) -> str:
    if text == "now" and now:
        return "now"
    if not text.isdigit():
        raise _Failure(f"{text!r} is not a version id" + (" or now" if now else ""))
    return text


# -- where the commands run --------------------------------------------------------------


class _Target:
    """The HTTP API's answers, from a server or from an engine on the database."""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def update(self, name: str) -> bytes:
        raise NotImplementedError

    def import_update(self, name: str, update: bytes) -> dict[str, Any]:
        raise NotImplementedError


class _HTTP(_Target):
    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.url.rstrip("/") + "/api/documents/"
        token = args.token
        if token is None:
            try:
                key = secret.read(args)
            except ValueError as exc:
                raise _Failure(str(exc)) from None
            if key is not None:
                token = mint(key, user="cli", role=Role.OWNER, documents="*", ttl=300, admin=True)
        self.headers = {} if token is None else {"authorization": f"Bearer {token}"}

    def _send(self, method: str, path: str, data: bytes | None, kind: str) -> bytes:
        name, _, rest = path.partition("/")
        request = urllib.request.Request(
            self.base + quote(name, safe="/") + "/" + rest,
            data=data,
            method=method,
            headers={**self.headers, "content-type": kind},
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                answer: bytes = response.read()
                return answer
        except urllib.error.HTTPError as error:
            try:
                reason = json.loads(error.read())["error"]
            except (ValueError, KeyError):
                reason = error.reason
            raise _Failure(f"{error.code}: {reason}") from None
        except urllib.error.URLError as error:
            raise _Failure(f"cannot reach {self.base}: {error.reason}") from None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        answer: dict[str, Any] = json.loads(self._send(method, path, data, "application/json"))
        return answer

    def update(self, name: str) -> bytes:
        return self._send("GET", f"{name}/update", None, "application/octet-stream")

    def import_update(self, name: str, update: bytes) -> dict[str, Any]:
        answer = self._send("POST", f"{name}/update", update, "application/octet-stream")
        result: dict[str, Any] = json.loads(answer)
        return result


class _Database(_Target):
    def __init__(self, args: argparse.Namespace) -> None:
        if args.database_url is None and not Path(args.db).is_file():
            raise SystemExit(f"collab-engine: no database at {args.db!r}")
        self.url = args.database_url or sqlite_url(args.db)
        self.author = args.author or f"cli:{getpass.getuser()}"

    def _run(self, work: Any) -> Any:
        async def main() -> Any:
            try:
                store = await SQLStore.connect(self.url)
            except Exception as exc:
                raise _Failure(f"cannot open the database: {describe_error(exc)}") from exc
            try:
                config = EngineConfig(history=HistoryPolicy(enabled=False))
                async with Engine(config, store) as engine:
                    return await work(engine)
            finally:
                await store.aclose()

        try:
            return anyio.run(main)
        except VersionNotFound as error:
            raise _Failure(str(error)) from None
        except (StorageError, CollabError) as error:
            raise _Failure(error.reason) from None
        except ValueError as error:
            raise _Failure(str(error)) from None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        name, _, rest = path.rpartition("/versions")
        author = self.author

        async def work(engine: Engine) -> dict[str, Any]:
            history = engine.history
            if path.endswith("/content"):
                return await _fill(engine, path[: -len("/content")], (body or {})["roots"], author)
            pieces = [piece for piece in rest.split("/") if piece]
            if not pieces:
                if method == "GET":
                    versions = await history.versions(name)
                    return {"document": name, "versions": [v.to_json() for v in versions]}
                label = (body or {}).get("label")
                version = await history.create(name, label=label, author=author)
                return {"document": name, "version": version.to_json()}
            at = None if pieces[0] == "now" else int(pieces[0])
            if len(pieces) == 1:
                return await history.content(name, at)
            assert at is not None
            if pieces[1] == "restore":
                version = await history.restore(name, at, author=author)
                return {"document": name, "version": version.to_json()}
            end = None if pieces[2] == "now" else int(pieces[2])
            return await history.diff(name, at, end)

        result: dict[str, Any] = self._run(work)
        return result

    def update(self, name: str) -> bytes:
        async def work(engine: Engine) -> bytes:
            async with engine.room(name) as room:
                state: bytes = room.doc.get_update()
                return state

        data: bytes = self._run(work)
        return data

    def import_update(self, name: str, update: bytes) -> dict[str, Any]:
        author = self.author

        async def work(engine: Engine) -> dict[str, Any]:
            async with engine.room(name) as room:
                room.apply(update, origin="collab-engine:import", author=author)
                await room.flush()
                return {"document": name, "seq": room.stored_seq}

        result: dict[str, Any] = self._run(work)
        return result


async def _fill(engine: Engine, name: str, roots: dict[str, Any], author: str) -> dict[str, Any]:
    async with engine.room(name) as room:
        room.author = author
        try:
            fill(room.doc, roots)
        finally:
            room.author = None
        await room.flush()
        return {"document": name, "seq": room.stored_seq}


# -- printing ----------------------------------------------------------------------------


def _print(args: argparse.Namespace, answer: dict[str, Any], text: Any) -> None:
    if args.json:
        print(json.dumps(answer, ensure_ascii=False, indent=2))
    else:
        print(text(answer))


def _versions_text(answer: dict[str, Any]) -> str:
    lines = []
    for v in answer["versions"]:
        kind = "auto " if v["automatic"] else "named"
        label = v["label"] or ""
        editors = ", ".join(v["editors"]) or "-"
        lines.append(
            f"{v['id']:>5}  {kind}  seq {v['seq']:<8} {_when(v['createdAt'])}  "
            f"by {v['author'] or '-'}  edited by {editors}  {label}".rstrip()
        )
    return "\n".join(lines) if lines else "(no versions)"


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def _content_text(answer: dict[str, Any]) -> str:
    version = answer["version"]
    head = "now" if version is None else f"version {version['id']}"
    lines = [f"{answer['document']} at {head} (update {answer['seq']})"]
    for name, root in answer["roots"].items():
        lines.append(f"--- {name} ({root['type']})")
        if root["type"] == "text":
            lines.append(root["text"])
        elif root["type"] == "xml":
            lines.append(root["xml"])
        elif root["type"] in ("map", "array"):
            lines.append(json.dumps(root["value"], ensure_ascii=False, indent=2))
    return "\n".join(lines)


def _diff_text(answer: dict[str, Any]) -> str:
    end = answer["to"]
    lines = [
        f"{answer['document']}: version {answer['from']['id']} -> "
        f"{'now' if end is None else 'version ' + str(end['id'])}; "
        f"edited by {', '.join(answer['editors']) or 'nobody'}"
    ]
    for name, root in answer["roots"].items():
        if root["type"] == "xml":
            if root["changed"]:
                lines += [f"--- {name} (xml)", f"- {root['before']}", f"+ {root['after']}"]
            continue
        if not root["changes"]:
            continue
        lines.append(f"--- {name} ({root['type']})")
        for change in root["changes"]:
            lines.append(_change_text(root["type"], change))
    return "\n".join(lines)


def _change_text(kind: str, change: dict[str, Any]) -> str:
    who = f"  ({change['author']})" if change.get("author") else ""
    sign = {"insert": "+", "add": "+", "delete": "-", "remove": "-", "change": "~"}[change["op"]]
    if kind == "text":
        return f"{sign} @{change['index']} {json.dumps(change['text'], ensure_ascii=False)}{who}"
    if kind == "array":
        if change["op"] == "change":
            return f"~ [{change['index']}] {_j(change['before'])} -> {_j(change['after'])}"
        return f"{sign} [{change['index']}] {_j(change['values'])}{who}"
    if change["op"] == "change":
        return f"~ {change['key']}: {_j(change['before'])} -> {_j(change['after'])}{who}"
    value = change["after"] if change["op"] == "add" else change["before"]
    return f"{sign} {change['key']}: {_j(value)}{who}"


def _j(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
