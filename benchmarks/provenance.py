"""Where a benchmark figure comes from: package versions and the commit measured."""

from __future__ import annotations

import importlib.metadata
import subprocess
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
