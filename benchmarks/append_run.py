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
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from harness import provenance, yjs
from harness.replay import OBSERVED, PYCRDT, TEXT, YJS, Mismatch, check_text, text_of
from harness.report import publish, say, table
from harness.stats import median
from pycrdt import Doc, Text, TransactionEvent

from collab_engine.peer import Peer
from collab_engine.room import Room
from collab_engine.types import DocumentName

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "append_run.md"
PARTS = 4
ENGINE = "engine"
IMPLEMENTATIONS = (PYCRDT, OBSERVED, ENGINE, YJS)


def history(count: int, writers: int) -> list[bytes]:
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
    return updates


def parts_of(times: Sequence[float]) -> list[float]:
    """Mean seconds per update in each of `PARTS` equal parts, in order."""
    size = len(times) // PARTS
    # The last part takes the remainder, as `yjs_replay.mjs stepwise` cuts them.
    bounds = [k * size for k in range(PARTS)] + [len(times)]
    return [statistics.fmean(times[start:end]) for start, end in pairwise(bounds)]


def replay_python(kind: str, name: str, updates: Sequence[bytes], typed: str) -> list[float]:
    """Mean seconds per update in each part, for one Python implementation."""
    clock = time.perf_counter
    times = []
    if kind == ENGINE:
        room = Room(DocumentName("append-run"))
        room.doc[TEXT] = Text()
        peer = Peer()
        room.join(peer)
        for update in updates:
            started = clock()
            room.apply(update)
            times.append(clock() - started)
            if not peer.drain():
                raise Mismatch(f"{name}, engine: an update reached nobody")
        check_text(f"{name}, engine", text_of(room.doc), typed)
        room.close()
        return parts_of(times)
    doc: Doc[Any] = Doc()
    doc[TEXT] = Text()
    seen: list[int] = []
    if kind == OBSERVED:

        def observer(event: TransactionEvent) -> None:
            seen.append(len(event.update))

        doc.observe(observer)
    for update in updates:
        started = clock()
        doc.apply_update(update)
        times.append(clock() - started)
    check_text(f"{name}, {kind}", text_of(doc), typed)
    if kind == OBSERVED and len(seen) != len(updates):
        raise Mismatch(f"{name}: the observer saw {len(seen)} of {len(updates)}")
    return parts_of(times)


def us(value: float) -> str:
    return f"{value * 1e6:.1f}"


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
    typed = "".join(f"#e{i}# " for i in range(options.updates))
    cases = {
        "one writer": history(options.updates, 1),
        "two writers": history(options.updates, 2),
    }
    samples: dict[tuple[str, str], list[list[float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(1, options.runs + 1):
                for name, updates in cases.items():
                    for kind in IMPLEMENTATIONS:
                        if kind != YJS:
                            parts = replay_python(kind, name, updates, typed)
                        elif node is None:
                            continue
                        else:
                            path = Path(tmp) / f"{name.replace(' ', '-')}.bin"
                            parts, text = yjs.stepwise(updates, path, PARTS)
                            check_text(f"{name}, Yjs", text, typed)
                        samples.setdefault((name, kind), []).append(parts)
                        say(
                            f"run {run}, {name}, {kind}: {' '.join(us(p) for p in parts)} µs per update"
                        )
    except Mismatch as error:
        say(f"FAILED: {error}")
        sys.exit(1)
    rows = []
    for (name, kind), runs in samples.items():
        parts = [median(run[k] for run in runs) for k in range(PARTS)]
        growth = parts[-1] / parts[0] if parts[0] else float("nan")
        rows.append([name, kind, *(us(p) for p in parts), f"{growth:.1f}"])
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
            f"{provenance.yjs_in_node(node)}; collab-engine commit {commit}",
            f"- {options.updates:,} updates per history, each one insert of `#e<i># ` at the "
            f"end of the text ({len(typed):,} characters in the end); {options.runs} "
            "runs, the median of each figure; method: the docstring of "
            "`benchmarks/append_run.py`",
            "",
            "Mean time to apply one update, in µs, in each quarter of the history (in order):",
            "",
            *table(
                ["history", "implementation", "part 1 (µs)", "part 2", "part 3", "part 4",
                 "part 4 / part 1"],
                "llrrrrr",
                rows,
            ),
            "",
        ]
    )  # fmt: skip
    publish(text, options.output)


if __name__ == "__main__":
    main()
