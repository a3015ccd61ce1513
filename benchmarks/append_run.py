"""Remote updates that extend one long run of text: what applying each one costs as
the run grows, in pycrdt (raw, and with the observer a server has), the engine's
`Room`, and Yjs.

Usage:

    python benchmarks/append_run.py                  # 16,000 updates, 3 runs
    python benchmarks/append_run.py --updates 4000 --runs 1

Method
------
Two histories of N updates (`--updates`), each one small insert at the end of the
text (`#e<i># `) in its own transaction, as a server receives them:

* **one writer**: a single client types all of them. Yjs and Yrs merge consecutive
  inserts of one client into one item, so the document is one run of text that
  grows with every update (a log, a transcript, a bot appending to a document);
* **two writers**: two clients take turns (each applies the other's last update
  before its own insert), so no two consecutive inserts share a client and no
  item grows. The control.

Each history is applied, one update at a time and each update timed on its own,
into a fresh replica by:

* **pycrdt**: `Doc.apply_update`, nothing observing;
* **pycrdt + observer**: the same with a `Doc.observe` callback that reads
  `event.update` (what a server broadcasts and stores);
* **engine**: `Room.apply` (`collab_engine.room`) in a room with one connected
  peer, as on a server (the room observes its document once someone takes the
  updates; the peer's outbox is emptied between updates, outside the clock);
* **Yjs**: `Y.applyUpdate` into a `Y.Doc` with an `update` listener, in Node
  (`benchmarks/peers/yjs_replay.mjs stepwise`, the npm `yjs` of tests/interop).

The updates are cut into four equal parts in order; the table gives the mean time
per update in each part (median over `--runs` runs) and the last part's over the
first's. Every replica's final text is checked against the text typed.

What it shows: whether the cost of one update depends on how long the run of text
it extends already is. For the editing traces of `merge_throughput.py` (real
typing, where runs are broken by moves and deletions) the remote path costs a few
µs an update throughout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from harness import provenance
from harness.yjs import run_replay, write_updates
from pycrdt import Doc, Text, TransactionEvent

from collab_engine.peer import Peer
from collab_engine.room import Room
from collab_engine.types import DocumentName

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "append_run.md"
TEXT = "text"
PARTS = 4
IMPLEMENTATIONS = ("pycrdt", "pycrdt + observer", "engine", "Yjs")


@dataclass(frozen=True, slots=True)
class History:
    name: str
    updates: list[bytes]
    text: str


def history(name: str, count: int, writers: int) -> History:
    """`count` appends at the end of one text, by `writers` clients taking turns,
    as the updates a server would receive."""
    docs = []
    for _ in range(writers):
        doc: Doc[Any] = Doc()
        doc[TEXT] = Text()
        docs.append(doc)
    updates: list[bytes] = []
    for i in range(count):
        doc = docs[i % writers]
        if writers > 1 and updates:
            doc.apply_update(updates[-1])
        got: list[bytes] = []
        subscription = doc.observe(lambda event, got=got: got.append(event.update))
        text = doc.get(TEXT, type=Text)
        text += f"#e{i}# "
        doc.unobserve(subscription)
        updates.append(got[0])
    return History(name, updates, "".join(f"#e{i}# " for i in range(count)))


def parts_of(times: Sequence[float]) -> list[float]:
    """Mean seconds per update in each of `PARTS` equal parts, in order."""
    size = len(times) // PARTS
    # The last part takes the remainder, as `yjs_replay.mjs stepwise` cuts them.
    bounds = [k * size for k in range(PARTS)] + [len(times)]
    return [statistics.fmean(times[start:end]) for start, end in pairwise(bounds)]


def timed(apply: Callable[[bytes], None], updates: Sequence[bytes]) -> list[float]:
    times = []
    clock = time.perf_counter
    for update in updates:
        started = clock()
        apply(update)
        times.append(clock() - started)
    return times


def check(label: str, got: str, expected: str) -> None:
    if got != expected:
        raise SystemExit(f"{label}: the final text differs from the text typed")


def replay_python(kind: str, case: History) -> list[float]:
    """Mean seconds per update in each part, for one Python implementation."""
    if kind == "engine":
        room = Room(DocumentName("append-run"))
        room.doc[TEXT] = Text()
        peer = Peer()
        room.join(peer)
        times = []
        clock = time.perf_counter
        for update in case.updates:
            started = clock()
            room.apply(update)
            times.append(clock() - started)
            if not peer.drain():
                raise SystemExit(f"{case.name}, engine: an update reached nobody")
        check(f"{case.name}, engine", str(room.doc.get(TEXT, type=Text)), case.text)
        room.close()
        return parts_of(times)
    doc: Doc[Any] = Doc()
    doc[TEXT] = Text()
    seen: list[int] = []
    if kind == "pycrdt + observer":

        def observer(event: TransactionEvent) -> None:
            seen.append(len(event.update))

        doc.observe(observer)
    times = timed(doc.apply_update, case.updates)
    check(f"{case.name}, {kind}", str(doc.get(TEXT, type=Text)), case.text)
    if kind == "pycrdt + observer" and len(seen) != len(case.updates):
        raise SystemExit(f"{case.name}: the observer saw {len(seen)} of {len(case.updates)}")
    return parts_of(times)


def replay_yjs(case: History, directory: Path) -> list[float]:
    path = directory / f"{case.name.replace(' ', '-')}.bin"
    write_updates(case.updates, path)
    answer = run_replay("stepwise", path, json.dumps({"parts": PARTS, "observe": True}), 600)
    check(f"{case.name}, Yjs", answer["text"], case.text)
    size = len(case.updates) // PARTS
    counts = [size] * (PARTS - 1) + [len(case.updates) - size * (PARTS - 1)]
    return [float(s) / n for s, n in zip(answer["part_seconds"], counts, strict=True)]


def us(value: float) -> str:
    return f"{value * 1e6:.1f}"


def table(cases: Sequence[History], medians: dict[tuple[str, str], list[float]]) -> str:
    lines = [
        "| history | implementation | part 1 (µs) | part 2 | part 3 | part 4 | part 4 / part 1 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        for kind in IMPLEMENTATIONS:
            parts = medians.get((case.name, kind))
            if parts is None:
                continue
            ratio = parts[-1] / parts[0] if parts[0] else float("nan")
            lines.append(
                f"| {case.name} | {kind} | "
                + " | ".join(us(p) for p in parts)
                + f" | {ratio:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=16_000, help="updates per history")
    parser.add_argument("--runs", type=int, default=3, help="runs (the median is reported)")
    parser.add_argument("--no-node", action="store_true", help="skip Yjs")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    options = parser.parse_args()
    if options.updates < PARTS or options.runs < 1:
        parser.error(f"--updates must be at least {PARTS} and --runs at least 1")
    node = None if options.no_node else provenance.node_version()
    started = time.time()
    cases = [
        history("one writer", options.updates, 1),
        history("two writers", options.updates, 2),
    ]
    samples: dict[tuple[str, str], list[list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(1, options.runs + 1):
            for case in cases:
                for kind in IMPLEMENTATIONS:
                    if kind == "Yjs":
                        if node is None:
                            continue
                        parts = replay_yjs(case, Path(tmp))
                    else:
                        parts = replay_python(kind, case)
                    samples.setdefault((case.name, kind), []).append(parts)
                    print(
                        f"run {run}, {case.name}, {kind}: "
                        + " ".join(us(p) for p in parts)
                        + " µs per update",
                        file=sys.stderr,
                        flush=True,
                    )
    medians = {
        key: [statistics.median(run[k] for run in runs) for k in range(PARTS)]
        for key, runs in samples.items()
    }
    commit = provenance.commit(
        ["collab_engine", "benchmarks/append_run.py"], "(with uncommitted changes)"
    )
    text = "\n".join(
        [
            "# Remote updates extending one run of text: the cost of each as the run grows",
            "",
            f"- command: `{provenance.command_line(sys.argv)}` "
            f"({(time.time() - started) / 60:.1f} min)",
            f"- date: {provenance.utc_now()}",
            f"- Python {sys.version.split()[0]}, pycrdt {provenance.version('pycrdt')}; "
            + (f"Node {node}, yjs {provenance.yjs_version()}" if node else "Yjs not run")
            + f"; collab-engine commit {commit}",
            f"- {options.updates:,} updates per history, each one insert of `#e<i># ` at the "
            f"end of the text ({len(cases[0].text):,} characters in the end); {options.runs} "
            "runs, the median of each figure; method: the docstring of "
            "`benchmarks/append_run.py`",
            "",
            "Mean time to apply one update, in µs, in each quarter of the history (in order):",
            "",
            table(cases, medians),
            "",
        ]
    )
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
