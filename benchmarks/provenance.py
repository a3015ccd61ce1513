"""Where a benchmark figure comes from: package versions and the commit measured."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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


def command_line(argv: Sequence[str]) -> str:
    """The command that produced a result, as a user would type it from the repository."""
    return shlex.join(["python", os.path.relpath(argv[0], REPO), *argv[1:]])


def utc_now() -> str:
    """The time of a result, to the second, in UTC."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def load_average() -> str:
    """The 1-minute load average (runnable tasks, all cores together)."""
    return Path("/proc/loadavg").read_text().split()[0]
