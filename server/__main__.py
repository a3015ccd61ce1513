"""The `collab-engine` command line: `collab-engine serve --host 127.0.0.1 --port 1234`.

Documents are kept in the SQLite file `./collab.db` unless `--db PATH` names
another file or `--database-url` another database (`postgresql+asyncpg://...`).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import anyio

from collab_engine.engine import EngineConfig
from collab_engine.errors import InvalidDocumentName, StorageError
from collab_engine.history import HistoryPolicy
from collab_engine.journal import describe_error
from collab_engine.locks import LockLimits
from collab_engine.names import document_name
from collab_engine.permissions import Grant, Role
from collab_engine.presence import PresencePolicy
from storage import SQLStore, sqlite_url

from . import history, secret, status
from .app import CannotListen, run
from .auth import mint
from .settings import MAX_BUFFERED, Settings

DEFAULT_DB = "collab.db"


def _parser() -> argparse.ArgumentParser:
    defaults = Settings()
    engine = EngineConfig()
    parser = argparse.ArgumentParser(prog="collab-engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the y-websocket sync server")
    serve.add_argument(
        "--host", default=defaults.host, help="address to bind (default %(default)s)"
    )
    serve.add_argument("--port", type=int, default=defaults.port, help="port (0 picks a free one)")
    serve.add_argument(
        "--max-frame-size",
        type=int,
        default=defaults.max_frame_size,
        help="largest WebSocket message in bytes; larger closes with 1009 (default %(default)s)",
    )
    serve.add_argument(
        "--max-name-length",
        type=int,
        default=defaults.max_name_length,
        help="longest document name in bytes; longer closes with 4400 (default %(default)s)",
    )
    serve.add_argument(
        "--max-awareness-size",
        type=int,
        default=engine.max_awareness_state_size,
        help="largest awareness state in bytes; larger closes with 1009 (default %(default)s)",
    )
    serve.add_argument(
        "--outbox-size",
        type=int,
        default=engine.outbox_size,
        help="frames queued for one client before it is closed with 1013 (default %(default)s)",
    )
    serve.add_argument(
        "--unload-grace",
        type=float,
        default=engine.unload_grace,
        help="seconds a room stays loaded after its last client leaves (default %(default)s)",
    )
    where = serve.add_mutually_exclusive_group()
    where.add_argument(
        "--db",
        metavar="PATH",
        default=DEFAULT_DB,
        help="the SQLite file documents are kept in (default ./%(default)s)",
    )
    where.add_argument(
        "--database-url",
        metavar="URL",
        help="a SQLAlchemy async URL instead, e.g. postgresql+asyncpg://user@host/db",
    )
    where.add_argument(
        "--memory",
        action="store_true",
        help="store nothing: a document lives in memory until --unload-grace seconds "
        "after its last client left, there is no version history, grants last until "
        "exit (as the Node y-websocket server without YPERSISTENCE; for trials and "
        "benchmarks)",
    )
    serve.add_argument(
        "--compact-after-updates",
        type=int,
        default=engine.compact_after_updates,
        help="write a snapshot after this many updates since the last (default %(default)s)",
    )
    serve.add_argument(
        "--compact-after-bytes",
        type=int,
        default=engine.compact_after_bytes,
        help="... or after this many bytes of updates (default %(default)s)",
    )
    serve.add_argument(
        "--journal-batch",
        type=int,
        default=engine.journal_max_batch,
        help="most updates written in one transaction; 1 commits each (default %(default)s)",
    )
    serve.add_argument(
        "--journal-linger",
        type=float,
        default=engine.journal_linger,
        metavar="SECONDS",
        help="wait up to this long for more updates before a commit (a pause ends the wait "
        "while a client awaits an acknowledgement): fewer commits under load, "
        "acknowledgements a little later (default %(default)s)",
    )
    presence = engine.presence
    serve.add_argument(
        "--presence-rate",
        type=float,
        default=presence.rate,
        help="awareness messages per second per connection before coalescing (default %(default)s)",
    )
    serve.add_argument(
        "--presence-burst",
        type=int,
        default=presence.burst,
        help="awareness messages a connection may send at once (default %(default)s)",
    )
    serve.add_argument(
        "--typing-timeout",
        type=float,
        default=presence.typing_timeout,
        help="seconds without activity before `typing` is cleared (default %(default)s)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=presence.idle_timeout,
        help="seconds without activity before a client is shown away (default %(default)s)",
    )
    serve.add_argument(
        "--hide-read-only-presence",
        action="store_true",
        help="do not show read-only connections' presence to the others",
    )
    serve.add_argument(
        "--lock-ttl",
        type=float,
        default=engine.lock_ttl,
        help="seconds a lock lasts unless renewed (default %(default)s)",
    )
    serve.add_argument(
        "--lock-grace",
        type=float,
        default=engine.lock_grace,
        help="seconds a lock outlives its holder's connection (default %(default)s)",
    )
    limits = engine.lock_limits
    serve.add_argument(
        "--lock-max-key-length",
        type=int,
        default=limits.max_key_length,
        metavar="BYTES",
        help="longest key of a locked section, in UTF-8 bytes (default %(default)s)",
    )
    serve.add_argument(
        "--lock-max-section-length",
        type=int,
        default=limits.max_section_length,
        metavar="BYTES",
        help="most UTF-8 bytes of a locked section's keys together (default %(default)s)",
    )
    serve.add_argument(
        "--locks-per-user",
        type=int,
        default=limits.per_user,
        help="most locks one user may hold on one document (default %(default)s)",
    )
    serve.add_argument(
        "--locks-per-document",
        type=int,
        default=limits.per_document,
        help="most locks one document may have (default %(default)s)",
    )
    serve.add_argument(
        "--lock-summary-size",
        type=int,
        default=limits.summary_size,
        metavar="BYTES",
        help="most bytes of JSON the locks take in the server's awareness entry; beyond, "
        "it counts how many more there are (default %(default)s)",
    )
    serve.add_argument(
        "--lock-mirror-interval",
        type=float,
        default=presence.server_interval,
        metavar="SECONDS",
        help="least time between two changes of the server's awareness entry (the locks) "
        "sent to the clients; changes in between wait, the latest wins (default %(default)s)",
    )
    serve.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop" if _has_uvloop() else "asyncio",
        help="the event loop: uvloop (faster sends and wake-ups) where installed, "
        "else asyncio's own (default %(default)s)",
    )
    serve.add_argument(
        "--asgi",
        "--asgi-send",
        dest="asgi",
        action="store_true",
        help="read and send every frame through ASGI, as any ASGI server takes it, "
        "instead of parsing and writing them at the socket (slower: for comparison and "
        "diagnosis; --asgi-send is its old name)",
    )
    serve.add_argument(
        "--max-buffered",
        type=int,
        default=MAX_BUFFERED,
        metavar="BYTES",
        help="bytes sent to a client and not yet read by it above which it is closed "
        "with 1013 (default %(default)s)",
    )
    serve.add_argument(
        "--websocket-compression",
        action="store_true",
        help="accept permessage-deflate from clients that offer it (off by default: it "
        "costs CPU per frame and receiver)",
    )
    policy = engine.history
    serve.add_argument(
        "--version-after-quiet",
        type=float,
        default=policy.quiet,
        help="seconds without edits before a document gets an automatic version "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--version-min-interval",
        type=float,
        default=policy.min_interval,
        help="seconds between two automatic versions of a document (default %(default)s)",
    )
    serve.add_argument(
        "--keep-versions",
        type=int,
        default=policy.keep,
        help="automatic versions kept per document, newest first (default %(default)s)",
    )
    serve.add_argument(
        "--keep-version-days",
        type=float,
        default=policy.keep_days,
        help="days an automatic version is kept; 0 keeps them forever (default %(default)s)",
    )
    serve.add_argument(
        "--no-automatic-versions", action="store_true", help="make no automatic versions"
    )
    serve.add_argument(
        "--redis-url",
        metavar="URL",
        help="make this process a node of a cluster: the nodes share this Redis and the "
        "PostgreSQL database of --database-url (see docs/cluster.md)",
    )
    serve.add_argument(
        "--node-id",
        help="this node's id, unique in the cluster (default: host name, process id and "
        "a random part)",
    )
    serve.add_argument(
        "--cluster-prefix",
        default=defaults.cluster_prefix,
        help="prefix of the cluster's Redis keys: clusters sharing a Redis need "
        "different ones (default %(default)s)",
    )
    serve.add_argument(
        "--lease-ttl",
        type=float,
        default=defaults.lease_ttl,
        help="seconds a node's lease lasts without renewal: how long a dead node's "
        "documents wait before another node takes them (default %(default)s)",
    )
    serve.add_argument(
        "--relay-backlog",
        type=int,
        default=defaults.relay_backlog,
        help="frames of a relayed client that may wait on its document's node behind one "
        "that must wait; more closes it with 1013 (default %(default)s)",
    )
    serve.add_argument(
        "--bus-queue-size",
        type=int,
        default=defaults.bus_queue_size,
        metavar="BYTES",
        help="bytes waiting to be sent to one other node before they are dropped and the "
        "link reset: its relayed clients reconnect (default %(default)s)",
    )
    serve.add_argument(
        "--bus-stream-length",
        type=int,
        default=defaults.bus_stream_length,
        help="entries a node's inbox keeps in Redis; a node further behind resets the "
        "links the lost entries came on (default %(default)s)",
    )
    secret.add_options(serve, "the HS256 key tokens are signed with (none: open mode)")
    serve.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")

    token = commands.add_parser("token", help="print a signed token")
    token.add_argument("--user", required=True, help="the user's id (the `sub` claim)")
    token.add_argument("--name", help="display name (default: the id)")
    token.add_argument("--group", action="append", default=[], help="a group (repeatable)")
    token.add_argument("--role", default="editor", help="viewer, editor or owner (default editor)")
    token.add_argument(
        "--doc",
        default="**",
        help="pattern of the documents it is for: * within one /-separated segment, ** across "
        "them (default **: every document)",
    )
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds it is good for")
    token.add_argument(
        "--admin",
        action="store_true",
        help="owner of every document --doc covers, whatever its grants (the `admin` claim)",
    )
    secret.add_options(token, "the signing key")

    grants = commands.add_parser(
        "grants",
        help="read or change a document's grants in the database (server stopped; "
        "use the HTTP API on a running server for live effect)",
    )
    grants.add_argument(
        "action", choices=["list", "set", "revoke"], help="list, set or revoke a grant"
    )
    grants.add_argument("document", help="the document's name")
    grants.add_argument("principal", nargs="?", help="user:<id>, group:<name> or *")
    grants.add_argument("role", nargs="?", help="viewer, editor or owner (for set)")
    where = grants.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="PATH", default=DEFAULT_DB, help="the SQLite file")
    where.add_argument(
        "--database-url", metavar="URL", help="a SQLAlchemy async URL instead of --db"
    )
    history.add_commands(commands)
    status.add_command(commands, defaults.cluster_prefix)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `collab-engine` console script."""
    args = _parser().parse_args(argv)
    if args.command != "serve":
        # `serve` sets up its own logging; the others print warnings (a secret given
        # on the command line) as one line each.
        logging.basicConfig(format="collab-engine: %(levelname)s: %(message)s")
    if args.command == "token":
        _token(args)
    elif args.command == "grants":
        _grants(args)
    elif args.command in ("history", "export", "import"):
        history.run(args)
    elif args.command == "cluster":
        status.run(args)
    else:
        _serve(args)


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def _secret(args: argparse.Namespace) -> str | None:
    try:
        return secret.read(args)
    except ValueError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    print(f"collab-engine: {message}", file=sys.stderr)
    sys.exit(2)


def _token(args: argparse.Namespace) -> None:
    secret = _secret(args)
    if secret is None:
        _fail("no secret: set COLLAB_SECRET or pass --secret-file (or --secret)")
    try:
        role = Role.parse(args.role)
    except ValueError as exc:
        _fail(str(exc))
    print(
        mint(
            secret,
            user=args.user,
            name=args.name,
            groups=args.group,
            role=role,
            documents=args.doc,
            ttl=args.ttl,
            admin=args.admin,
        )
    )


def _grants(args: argparse.Namespace) -> None:
    try:
        args.document = document_name(args.document)  # as the server takes it: NFC
    except InvalidDocumentName as error:
        _fail(error.reason)
    url = args.database_url or sqlite_url(args.db)
    if args.action != "set" and args.database_url is None and not Path(args.db).is_file():
        # Reading or revoking never creates an empty database out of a mistyped path.
        _fail(f"no database at {args.db!r}")
    try:
        anyio.run(_change_grants, url, args)
    except (ValueError, StorageError) as exc:
        _fail(exc.reason if isinstance(exc, StorageError) else str(exc))


async def _change_grants(url: str, args: argparse.Namespace) -> None:
    try:
        store = await SQLStore.connect(url)
    except Exception as exc:
        raise StorageError(f"cannot open the database: {describe_error(exc)}") from exc
    try:
        if args.action == "set":
            if not args.principal or not args.role:
                raise ValueError("set needs a principal and a role")
            await store.grant(args.document, Grant(args.principal, Role.parse(args.role)))
        elif args.action == "revoke":
            if not args.principal:
                raise ValueError("revoke needs a principal")
            if not await store.revoke(args.document, args.principal):
                raise ValueError(f"{args.principal} has no grant on {args.document!r}")
        for grant in await store.grants(args.document):
            print(f"{grant.principal}\t{grant.role}")
    finally:
        await store.aclose()


def _serve(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.redis_url is not None and (
        args.memory or not (args.database_url or "").startswith("postgresql")
    ):
        _fail(
            "--redis-url makes a node of a cluster, whose nodes share a PostgreSQL "
            "database: give it --database-url postgresql+asyncpg://... (not SQLite or --memory)"
        )
    if not args.lease_ttl > 0:
        _fail("--lease-ttl must be a positive number of seconds")
    if min(args.relay_backlog, args.bus_queue_size, args.bus_stream_length) < 1:
        _fail("--relay-backlog, --bus-queue-size and --bus-stream-length must be positive")
    settings = Settings(
        host=args.host,
        port=args.port,
        max_frame_size=args.max_frame_size,
        max_name_length=args.max_name_length,
        database_url=None if args.memory else args.database_url or sqlite_url(args.db),
        secret=_secret(args),
        websocket_compression=args.websocket_compression,
        wire=not args.asgi,
        max_buffered=args.max_buffered,
        redis_url=args.redis_url,
        node_id=args.node_id,
        cluster_prefix=args.cluster_prefix,
        lease_ttl=args.lease_ttl,
        relay_backlog=args.relay_backlog,
        bus_queue_size=args.bus_queue_size,
        bus_stream_length=args.bus_stream_length,
        engine=EngineConfig(
            max_awareness_state_size=args.max_awareness_size,
            outbox_size=args.outbox_size,
            unload_grace=args.unload_grace,
            compact_after_updates=args.compact_after_updates,
            compact_after_bytes=args.compact_after_bytes,
            journal_max_batch=args.journal_batch,
            journal_linger=args.journal_linger,
            lock_ttl=args.lock_ttl,
            lock_grace=args.lock_grace,
            lock_limits=LockLimits(
                max_key_length=args.lock_max_key_length,
                max_section_length=args.lock_max_section_length,
                per_user=args.locks_per_user,
                per_document=args.locks_per_document,
                summary_size=args.lock_summary_size,
            ),
            history=HistoryPolicy(
                quiet=args.version_after_quiet,
                min_interval=args.version_min_interval,
                keep=args.keep_versions,
                keep_days=args.keep_version_days or None,
                enabled=not args.no_automatic_versions,
            ),
            presence=PresencePolicy(
                rate=args.presence_rate,
                burst=args.presence_burst,
                typing_timeout=args.typing_timeout,
                idle_timeout=args.idle_timeout,
                show_read_only=not args.hide_read_only_presence,
                server_interval=args.lock_mirror_interval,
            ),
        ),
    )
    try:
        anyio.run(run, settings, backend_options={"use_uvloop": args.loop == "uvloop"})
    except KeyboardInterrupt:
        sys.exit(130)
    except StorageError as error:
        print(f"collab-engine: {error.reason}", file=sys.stderr)
        sys.exit(1)
    except CannotListen as error:
        print(f"collab-engine: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
