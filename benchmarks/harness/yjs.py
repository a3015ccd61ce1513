"""Node's `yjs` (the npm package of tests/interop), driven through
`benchmarks/peers/yjs_replay.mjs`: updates in a file, the answer as JSON."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
REPLAY = REPO / "benchmarks" / "peers" / "yjs_replay.mjs"


def write_updates(updates: Sequence[bytes], path: Path) -> None:
    """Updates as `yjs_replay.mjs` reads them: each a 4-byte little-endian length, then
    its bytes."""
    with path.open("wb") as file:
        for update in updates:
            file.write(len(update).to_bytes(4, "little"))
            file.write(update)


def run_replay(mode: str, path: Path, options: str = "{}", timeout: float = 900) -> dict[str, Any]:
    """`node yjs_replay.mjs MODE PATH OPTIONS`, its JSON answer; RuntimeError if it fails."""
    result = subprocess.run(
        ["node", str(REPLAY), mode, str(path), options],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"node {mode} {path.name} failed: {result.stderr.decode()[-800:]}")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer
