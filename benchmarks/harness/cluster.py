"""A cluster under test: several server processes on one Redis (and, for ours, one
PostgreSQL database), started and stopped together and measured as one target.

* **ours**: `python -m server serve` per node, with `--database-url` (a fresh
  database per cluster, `stores.postgres_database`, dropped with the cluster),
  `--redis-url`, `--cluster-prefix` (a fresh one per cluster, its keys deleted
  afterwards) and `--node-id` a, b, ...;
* **hocuspocus-redis**: `peers/hocuspocus_redis_server.mjs` per instance, with
  REDIS_HOST, REDIS_PORT, REDIS_PREFIX (a fresh one per cluster, its keys deleted
  afterwards) and NODE_ID a, b, ... (it stores nothing: no database).

`ClusterNodes` is what `load.run_once` takes as a target: one port per node (the
clients of a room are spread over them), the nodes' CPU together, and by process in
`cpu_readings()`: each node, the Redis server and PostgreSQL (`sampling.ProcessTally`:
the redis-server process, whoever else uses it; the postgres processes that serve no
client, such as the WAL writer and the checkpointer, and the backends of the
cluster's database).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from redis.asyncio import Redis

from harness.sampling import ProcessTally
from harness.servers import HOST, SPECS, ServerProcess, ServerSpec
from harness.stores import POSTGRES_URL, postgres_database

REDIS_URL = "redis://127.0.0.1:6379/0"
"""The Redis the tests use."""
NODE_IDS = "abcdefgh"
STORE_ERROR = "Caught error during storeDocumentHooks"
LOCK_REFUSED = "Could not acquire lock, another instance locked it already."
"""What Hocuspocus logs, a few lines apart, when its Redis extension refuses an
instance the lock to store a document another instance is storing: the extension's
design (one instance stores at a time), not a fault. It stores nothing here anyway."""


def postgres_of(database: str | None) -> ProcessTally:
    """The postgres processes that serve no client, and the backends of `database`."""

    def wanted(comm: str, command: str) -> bool:
        if comm != "postgres":
            return False
        serves_a_client = "(" in command or "[local]" in command
        return not serves_a_client or (database is not None and f" {database} " in command)

    return ProcessTally(wanted)


class ClusterNodes:
    """`count` nodes of `spec` ("ours" or hocuspocus-redis) sharing `redis_url` (and
    a fresh database on `postgres_url`, for ours). Use `start()`, then `stop()`."""

    def __init__(
        self,
        spec: ServerSpec,
        count: int,
        tmp: Path,
        redis_url: str = REDIS_URL,
        postgres_url: str = POSTGRES_URL,
    ) -> None:
        if not 1 <= count <= len(NODE_IDS):
            raise ValueError(f"1 to {len(NODE_IDS)} nodes")
        self.node_spec = spec
        self.count = count
        self.name = f"{spec.name}-{count}"
        self.spec = dataclasses.replace(spec, name=self.name, label=self.label)
        """The nodes' spec (their framing), under the cluster's name (what results show)."""
        self.tmp = tmp
        self.redis_url = redis_url
        self.postgres_url = postgres_url
        self.prefix = ""
        self.database: str | None = None
        self.nodes: list[ServerProcess] = []
        self.redis = ProcessTally(lambda comm, _: comm == "redis-server")
        self.postgres = postgres_of(None)
        self._stack = contextlib.AsyncExitStack()

    @property
    def label(self) -> str:
        server = "ours" if self.node_spec.name == "ours" else self.node_spec.label
        return f"{server}, {self.count} node{'s' * (self.count > 1)}"

    async def start(self) -> None:
        self.prefix = f"bench-{self.name}-{uuid.uuid4().hex[:8]}"
        self._stack.push_async_callback(self._delete_keys)
        url = ""
        if self.node_spec.name == "ours":
            url = await self._stack.enter_async_context(postgres_database(self.postgres_url))
            self.database = url.rsplit("/", 1)[1]
            self.postgres = postgres_of(self.database)
        redis = urlsplit(self.redis_url)
        for node in NODE_IDS[: self.count]:
            directory = self.tmp / f"{self.name}-{node}"
            directory.mkdir(parents=True, exist_ok=True)
            if self.node_spec.name == "ours":
                extra = ["--database-url", url, "--redis-url", self.redis_url,
                         "--cluster-prefix", self.prefix, "--node-id", node]  # fmt: skip
                process = ServerProcess(SPECS["ours"], directory, extra=extra)
            else:
                environment = {
                    "REDIS_HOST": redis.hostname or "127.0.0.1",
                    "REDIS_PORT": str(redis.port or 6379),
                    "REDIS_PREFIX": self.prefix,
                    "NODE_ID": node,
                }
                process = ServerProcess(self.node_spec, directory, environment=environment)
            self.nodes.append(process)
            self._stack.push_async_callback(process.stop)
            await process.start()

    async def stop(self) -> None:
        """Stop every node, drop the database and delete the cluster's Redis keys."""
        await self._stack.aclose()

    async def restart(self) -> None:
        for node in self.nodes:
            await node.restart()

    async def _delete_keys(self) -> None:
        client = Redis.from_url(self.redis_url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    # -- as a target of `load.run_once` ------------------------------------------------

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(node.port for node in self.nodes)

    @property
    def alive(self) -> bool:
        return all(node.alive for node in self.nodes)

    def cpu_seconds(self) -> float:
        return sum(node.cpu_seconds() for node in self.nodes)

    def cpu_readings(self) -> dict[str, float]:
        """CPU seconds so far: each node's ("node a", ...), "Redis" and "PostgreSQL"."""
        readings = {f"node {NODE_IDS[i]}": node.cpu_seconds() for i, node in enumerate(self.nodes)}
        readings["Redis"] = self.redis.seconds()
        readings["PostgreSQL"] = self.postgres.seconds()
        return readings

    def rss(self) -> int:
        return sum(node.rss() for node in self.nodes)

    def preempted(self) -> int:
        return sum(node.preempted() for node in self.nodes)

    # -- for the report ----------------------------------------------------------------

    def display_commands(self) -> list[str]:
        """How each node was started, with the run's names left out."""
        commands = []
        for node in self.nodes:
            command = node.display_command().replace(self.prefix, "<prefix>")
            if self.database is not None:
                command = command.replace(self.database, "<fresh database>")
            commands.append(command)
        return commands

    async def owned(self) -> dict[str, int]:
        """How many documents each node of ours owns (its `/healthz`); nothing for
        Hocuspocus, where every instance holds every document its clients opened."""
        if self.node_spec.name != "ours":
            return {}

        def owns(port: int) -> int:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=10) as answer:
                return len(json.load(answer).get("owns", []))

        return {
            f"node {NODE_IDS[i]}": await asyncio.to_thread(owns, node.port)
            for i, node in enumerate(self.nodes)
        }

    def log_text(self) -> tuple[str, int]:
        """The nodes' logs, and how many lock refusals of Hocuspocus's Redis extension
        were taken out of them (see `LOCK_REFUSED`)."""
        kept: list[str] = []
        block: list[str] = []  # an error being read: up to its closing "}"
        refusals = 0
        for line in "\n".join(node.log_text() for node in self.nodes).splitlines():
            if block:
                block.append(line)
                if line.startswith("}") or len(block) > 20:
                    refused = line.startswith("}") and any(LOCK_REFUSED in b for b in block)
                    refusals += refused
                    kept += [] if refused else block
                    block = []
            elif line.startswith(STORE_ERROR):
                block = [line]
            else:
                kept.append(line)
        return "\n".join(kept + block), refusals

    @property
    def unclean_exits(self) -> bool:
        return any(node.unclean_exits for node in self.nodes)
