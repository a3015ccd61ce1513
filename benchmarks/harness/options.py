"""The command-line options the benchmarks share, and how a benchmark's `main` runs.

Each `add_*` adds one flag, with the same name, default and help in every script
that takes it; `given` picks a flag's value or its default (which often depends on
`--quick`); `from_args` fills a script's options dataclass from what was parsed;
`main` parses, sets the generator's scheduling policy, runs the benchmark and exits
with its status.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from harness import scheduling
from harness.servers import SPECS, parse_servers

T = TypeVar("T")


def add_output(parser: argparse.ArgumentParser, default: Path) -> None:
    parser.add_argument(
        "--output", type=Path, default=default, help="Markdown file to write the results to"
    )


def add_compression(parser: argparse.ArgumentParser) -> None:
    """`--compression deflate|none`; `deflate` and `websockets_compression` read it."""
    parser.add_argument(
        "--compression", choices=["deflate", "none"], default="deflate",
        help="offer permessage-deflate like browsers do (default) or not",
    )  # fmt: skip


def deflate(args: argparse.Namespace) -> bool:
    """Whether the clients offer permessage-deflate (`--compression`)."""
    return bool(args.compression == "deflate")


def websockets_compression(args: argparse.Namespace) -> str | None:
    """`--compression` as `websockets` takes it."""
    return "deflate" if deflate(args) else None


def add_servers(parser: argparse.ArgumentParser, default: Sequence[str] = tuple(SPECS)) -> None:
    """`--servers`, read back with `servers`."""
    everything = ",".join(SPECS)
    parser.add_argument(
        "--servers", default=",".join(default),
        help=f"comma-separated, from {everything} (default: "
        f"{'all' if ','.join(default) == everything else ','.join(default)})",
    )  # fmt: skip


def servers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, ...]:
    return parse_servers(parser, args.servers)


def add_connect_concurrency(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect-concurrency", type=int, default=50, help="handshakes at once")


def add_connect_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect-timeout", type=float, default=20.0, help="seconds to connect and sync a client"
    )


def add_quiet_wait(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument(
        "--quiet-wait", type=float, default=default,
        help="before each run, wait up to this many seconds for the machine to be quiet",
    )  # fmt: skip


def add_outbox_size(parser: argparse.ArgumentParser, servers: str = "the server") -> None:
    parser.add_argument(
        "--outbox-size", type=int,
        help=f"pass --outbox-size to {servers} (default: the server's own default)",
    )  # fmt: skip


def outbox_args(outbox_size: int | None) -> list[str]:
    """The `serve` arguments for `--outbox-size`, none when it was not given."""
    return [] if outbox_size is None else ["--outbox-size", str(outbox_size)]


def given(value: T | None, default: T) -> T:
    """A flag's value, or `default` when it was not given."""
    return default if value is None else value


def from_args(cls: Callable[..., T], args: argparse.Namespace, **values: Any) -> T:
    """The options dataclass `cls`, each field from `values` if there, else from the
    flag of the same name (else the field's default)."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return cls(
        **{
            f.name: values[f.name] if f.name in values else getattr(args, f.name)
            for f in fields
            if f.name in values or hasattr(args, f.name)
        }
    )


def main(
    parse: Callable[[Sequence[str]], T],
    benchmark: Callable[[T, Sequence[str]], Coroutine[Any, Any, int]],
) -> None:
    """Parse the command line, run as the `--generator-policy` asks (where the script
    has it), run the benchmark, and exit with its status."""
    options = parse(sys.argv[1:])
    policy = getattr(options, "generator_policy", None)
    if policy is not None:
        scheduling.apply(policy)
    sys.exit(asyncio.run(benchmark(options, sys.argv)))
