"""`collab-engine cluster status`: the nodes of a cluster and the documents each owns,
read from the cluster's PostgreSQL database, with the entries each node's inbox stream
keeps in Redis. A lease's time left is reckoned on this machine's clock.

    $ collab-engine cluster status --database-url postgresql+asyncpg://... --redis-url redis://...
    node   alive  lease    inbox  documents
    a      yes    4.1 s    0      3
    b      no     -2.0 s   12     1
    ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import create_async_engine

from collab_engine.errors import StorageError
from storage.ownership import SQLOwnership


def add_command(commands: Any, default_prefix: str) -> None:
    """Add `cluster status` to the `collab-engine` subcommands."""
    cluster = commands.add_parser("cluster", help="a cluster's nodes and what they own")
    actions = cluster.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="the nodes, their leases and their documents")
    status.add_argument(
        "--database-url",
        metavar="URL",
        required=True,
        help="the cluster's PostgreSQL database (postgresql+asyncpg://...)",
    )
    status.add_argument(
        "--redis-url",
        metavar="URL",
        help="the cluster's Redis, for the entries of each node's inbox",
    )
    status.add_argument(
        "--cluster-prefix",
        default=default_prefix,
        help="the prefix of the cluster's Redis keys (default %(default)s)",
    )
    status.add_argument("--json", action="store_true", help="print JSON, not text")


def run(args: argparse.Namespace) -> None:
    """Print the cluster's status; exit 1 with the reason when it cannot be read."""
    try:
        report = anyio.run(_status, args)
    except (StorageError, RedisError, OSError) as error:
        print(f"collab-engine: {getattr(error, 'reason', error)}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'node':<32} {'alive':<5} {'lease':>8} {'inbox':>6} documents")
    for node in report["nodes"]:
        inbox = "-" if node["inbox"] is None else str(node["inbox"])
        print(
            f"{node['id']:<32} {'yes' if node['alive'] else 'no':<5} "
            f"{node['lease_left']:>6.1f} s {inbox:>6} {len(node['documents'])}"
        )
    for lease in report["owners"]:
        print(f"  {lease['document']}  ->  {lease['node']} (epoch {lease['epoch']})")


async def _status(args: argparse.Namespace) -> dict[str, Any]:
    if not args.database_url.startswith("postgresql"):
        raise StorageError(
            "a cluster's ownership is kept in PostgreSQL: --database-url postgresql+asyncpg://..."
        )
    # An engine of its own, not SQLStore.connect: a status only reads, and must not
    # migrate the cluster's schema. (The ownership's errors are StorageError already.)
    engine = create_async_engine(args.database_url)
    try:
        reader = SQLOwnership(engine, "cluster-status", 1.0)
        nodes = await reader.nodes()
        owners = await reader.leases()
    finally:
        await engine.dispose()
    inboxes: dict[str, int | None] = {node.id: None for node in nodes}
    if args.redis_url:
        redis = Redis.from_url(args.redis_url, socket_connect_timeout=2.0)
        try:
            for node in nodes:
                inboxes[node.id] = int(await redis.xlen(f"{args.cluster_prefix}:inbox:{node.id}"))
        finally:
            await redis.aclose()
    now = time.time()
    return {
        "nodes": [
            {
                "id": node.id,
                "alive": node.alive,
                "lease_left": round(node.expires_at - now, 1),
                "inbox": inboxes[node.id],
                "documents": [lease.document for lease in owners if lease.node == node.id],
            }
            for node in nodes
        ],
        "owners": [
            {"document": lease.document, "node": lease.node, "epoch": lease.epoch}
            for lease in owners
        ],
    }
