"""Node's `yjs` (the npm package of tests/interop), driven through
`benchmarks/peers/yjs_replay.mjs`: the input in a file, the answer as JSON. One mode
per function: `local` and `concurrent` replays of a trace, the `remote` path of its
updates, and `stepwise` (each update timed on its own); a fresh Node process each."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.replay import Mismatch, Timing, check_text
from harness.traces import Concurrent, Patch, Sequential

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


def write_patches(patches: Sequence[Patch], path: Path) -> None:
    """A sequential trace's patches (in UTF-16 code units) as `local` reads them."""
    path.write_text(json.dumps({"patches": patches}))


def replay_local(trace: Sequential, patches_file: Path) -> Timing:
    """`doc.transact` per patch of `patches_file` (`write_patches`), checked."""
    answer = run_replay("local", patches_file)
    if answer["patches"] != len(trace.utf16):
        raise Mismatch(f"{trace.name}, Yjs: {answer['patches']} patches replayed")
    check_text(f"{trace.name}, Yjs", answer["text"], trace.expected)
    return float(answer["seconds"]), float(answer["cpu_seconds"])


def write_schedule(trace: Concurrent, path: Path) -> None:
    """A concurrent trace's steps (in UTF-16 code units) as `concurrent` reads them."""
    path.write_text(
        json.dumps(
            {
                "clientIds": [agent + 1 for agent in range(trace.agents)],
                "steps": [
                    {"agent": s.agent, "deliver": s.deliver, "patches": s.utf16}
                    for s in trace.steps
                ],
                "final": trace.final,
            }
        )
    )


def replay_concurrent(trace: Concurrent, schedule: Path) -> tuple[float, float]:
    """One `Y.Doc` per agent (`write_schedule`), checked; (replay, convergence) seconds."""
    answer = run_replay("concurrent", schedule)
    for agent, text in enumerate(answer["texts"]):
        check_text(f"{trace.name}, Yjs replica of agent {agent}", text, trace.expected)
    return float(answer["replay_seconds"]), float(answer["converge_seconds"])


def remote(
    updates_file: Path, fan_in: int, sample: int, cap: float, everything: bool
) -> dict[str, Any]:
    """Updates applied one by one, tree-merged and, with `everything`, merged all at
    once (unless estimated over `cap` seconds); the answer unchecked."""
    options = {"fanIn": fan_in, "sample": sample, "cap": cap, "all": everything}
    return run_replay("remote", updates_file, json.dumps(options))


def stepwise(updates: Sequence[bytes], path: Path, parts: int) -> tuple[list[float], str]:
    """Mean seconds per update in each of `parts` equal parts of `updates` (the last
    takes the remainder), applied one by one to a `Y.Doc` with an `update` listener;
    and the final text."""
    write_updates(updates, path)
    answer = run_replay("stepwise", path, json.dumps({"parts": parts, "observe": True}), 600)
    size = len(updates) // parts
    counts = [size] * (parts - 1) + [len(updates) - size * (parts - 1)]
    means = [float(s) / n for s, n in zip(answer["part_seconds"], counts, strict=True)]
    return means, str(answer["text"])
