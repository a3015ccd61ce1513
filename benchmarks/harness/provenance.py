"""Where a benchmark figure comes from: package versions and the commit measured."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INTEROP = REPO / "tests" / "interop"
"""Where the tests' npm packages (yjs, y-websocket) are installed."""


def version(package: str) -> str:
    """The installed version of `package`, or "?"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def git(*args: str) -> str:
    """The output of `git ARGS` in the repository, or "?" when git cannot tell."""
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def commit(paths: Sequence[str], dirty: str) -> str:
    """The short commit measured, with `dirty` appended when `paths` have uncommitted
    changes (what was measured is then not exactly that commit)."""
    label = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--", *paths):
        label += f" {dirty}"
    return label


def server_commit(storage: bool = False) -> str:
    """`commit` of the server's sources (and the storage's, if it is measured too)."""
    paths = ["collab_engine", "server", *(["storage"] if storage else [])]
    return commit(paths, "plus uncommitted changes to the server")


def software(*packages: str) -> str:
    """Python's version and each package's, as a results header lists them."""
    return ", ".join([f"Python {sys.version.split()[0]}", *(f"{p} {version(p)}" for p in packages)])


def command_line(argv: Sequence[str]) -> str:
    """The command that produced a result, as a user would type it from the repository."""
    return shlex.join(["python", os.path.relpath(argv[0], REPO), *argv[1:]])


def utc_now() -> str:
    """The time of a result, to the second, in UTC."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def load_average() -> str:
    """The 1-minute load average (runnable tasks, all cores together)."""
    return Path("/proc/loadavg").read_text().split()[0]


def node_version() -> str | None:
    """Node's version, or None when Node or the tests' npm `yjs` is missing."""
    node = shutil.which("node")
    if node is None or not (INTEROP / "node_modules" / "yjs").is_dir():
        return None
    try:
        return subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def yjs_version() -> str:
    """The version of the tests' npm `yjs`, or "?"."""
    try:
        package = INTEROP / "node_modules" / "yjs" / "package.json"
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def peer_versions(yjs: bool = False) -> str:
    """Node's version and the peers' npm packages, as a results header lists them."""
    node = shutil.which("node")
    found = "?" if node is None else subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=10
    ).stdout.strip()  # fmt: skip
    packages = "@y/websocket-server 0.1.1, @hocuspocus/server 3.4.4" + (", yjs 13.6.33" * yjs)
    return f"Node {found}, {packages} (benchmarks/peers/package-lock.json)"


def machine() -> str:
    """The CPUs this process may use and the kernel, as a results header names them."""
    uname = os.uname()
    return f"nproc = {len(os.sched_getaffinity(0))}, {uname.sysname} {uname.release}"


def filesystem_of(path: str) -> str:
    """The type of the file system `path` is on, from /proc/mounts (longest mount prefix)."""
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
                best
            ):
                best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def storage_lines(argv: Sequence[str], load: tuple[str, str], commit: str, extra: str) -> list[str]:
    """The header lines of a result measured in one process on the engine and its SQL
    stores: the command, the date, the machine (the load average before and after,
    where temporary files go) and the versions, `extra` after SQLite's."""
    tmp = tempfile.gettempdir()
    return [
        f"- command: `{command_line(argv)}`",
        f"- date: {utc_now()}",
        f"- machine: {machine()}; 1-minute load average {load[0]} before, {load[1]} after; "
        f"temporary files in {tmp} ({filesystem_of(os.path.realpath(tmp))})",
        f"- Python {sys.version.split()[0]}, pycrdt {version('pycrdt')}, SQLAlchemy "
        f"{version('sqlalchemy')}, aiosqlite {version('aiosqlite')} (SQLite "
        f"{sqlite3.sqlite_version}){extra}, collab-engine commit {commit}",
    ]


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo, or "?"."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "?"


def uptime() -> str:
    """What `uptime` prints (load averages over 1, 5 and 15 minutes), or "?"."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def yjs_in_node(node: str | None) -> str:
    """Which Yjs a result measured, given `node_version()`, or why none was."""
    if node is None:
        return "Yjs not run (no node, or no tests/interop/node_modules/yjs, or --no-node)"
    return f"Node {node} with yjs {yjs_version()} (tests/interop/node_modules)"
