"""The `collab-engine` command line: `collab-engine serve --host 127.0.0.1 --port 1234`.

Documents are kept in the SQLite file `./collab.db` unless `--db PATH` names
another file or `--database-url` another database (`postgresql+asyncpg://...`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import anyio

from collab_engine.engine import EngineConfig
from collab_engine.errors import StorageError
from collab_engine.presence import PresencePolicy
from storage import sqlite_url

from .app import run
from .settings import Settings

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
    serve.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `collab-engine` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings(
        host=args.host,
        port=args.port,
        max_frame_size=args.max_frame_size,
        max_name_length=args.max_name_length,
        database_url=args.database_url or sqlite_url(args.db),
        engine=EngineConfig(
            max_awareness_state_size=args.max_awareness_size,
            outbox_size=args.outbox_size,
            unload_grace=args.unload_grace,
            compact_after_updates=args.compact_after_updates,
            compact_after_bytes=args.compact_after_bytes,
            journal_max_batch=args.journal_batch,
            presence=PresencePolicy(
                rate=args.presence_rate,
                burst=args.presence_burst,
                typing_timeout=args.typing_timeout,
                idle_timeout=args.idle_timeout,
                show_read_only=not args.hide_read_only_presence,
            ),
        ),
    )
    try:
        anyio.run(run, settings)
    except KeyboardInterrupt:
        sys.exit(130)
    except StorageError as error:
        print(f"collab-engine: {error.reason}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
