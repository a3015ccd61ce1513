"""The signing key as the command line takes it: `--secret`, `--secret-file`, or
`$COLLAB_SECRET`, in that order.

A key given as `--secret KEY` is readable by every local user in the process list
(`ps`), so it is logged as a warning; `COLLAB_SECRET` or a file readable by the
server's user alone keep it private.
"""

from __future__ import annotations

import argparse
import logging
import os

from .auth import MIN_SECRET_BYTES

log = logging.getLogger("server")

ENVIRONMENT = "COLLAB_SECRET"


def add_options(parser: argparse.ArgumentParser, purpose: str) -> None:
    """Add `--secret KEY` and `--secret-file PATH` (mutually exclusive) to `parser`;
    `purpose` says what the key is for, in the help."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--secret",
        help=f"{purpose} (default: ${ENVIRONMENT}); visible to every local user in the "
        f"process list: prefer ${ENVIRONMENT} or --secret-file",
    )
    where.add_argument(
        "--secret-file",
        metavar="PATH",
        help="read the key from this file (one trailing newline is dropped)",
    )


def read(args: argparse.Namespace) -> str | None:
    """The key `args` give (`--secret`, then `--secret-file`, then $COLLAB_SECRET);
    None when there is none. Warns when it came as `--secret`.

    Raises:
        ValueError: the file cannot be read, or the key is shorter than
            `MIN_SECRET_BYTES`; the message says which.
    """
    secret: str | None = args.secret
    if secret:
        log.warning(
            "the secret was given as --secret: every local user can read it in the "
            "process list; set %s or use --secret-file instead",
            ENVIRONMENT,
        )
    elif args.secret_file:
        try:
            with open(args.secret_file, encoding="utf-8") as file:
                secret = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the secret file {args.secret_file}: {exc}") from None
        # Editors and `echo` end a file with a newline that is no part of the key.
        secret = secret.removesuffix("\n").removesuffix("\r")
    else:
        secret = os.environ.get(ENVIRONMENT)
    if not secret and not args.secret_file:
        return None
    assert secret is not None
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes long")
    return secret
