"""The editing traces of /work/shared/traces (josephg/editing-traces, CC BY 4.0): reading
them, and their patches in the units each library counts.

Trace positions are Unicode code points. pycrdt indexes `Text` by UTF-8 bytes and Yjs
by UTF-16 code units, so every patch is converted once per unit before anything is
timed (the identity while the text before the position is ASCII; `Units` tracks only
the text's non-ASCII characters, so the conversion costs no copy of the text)."""

from __future__ import annotations

import bisect
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO.parent / "shared" / "traces"
"""The sequential traces at its top level, the concurrent ones in `concurrent/`."""
AUTOMERGE_PAPER = TRACES / "automerge-paper.json.gz"
"""The 259,778-edit history of the Automerge paper's text."""

Patch = tuple[int, int, str]
"""Position, characters deleted there, text inserted there."""


def read_trace(path: Path) -> dict[str, Any]:
    """A trace as its JSON says: `startContent`, `endContent`, `txns` of `patches`
    (position and deleted in code points, inserted text)."""
    with gzip.open(path, "rt", encoding="utf-8") as file:
        trace: dict[str, Any] = json.load(file)
    return trace


def name_of(path: Path) -> str:
    return path.name.removesuffix(".json.gz")


def available() -> tuple[list[Path], list[Path]]:
    """The sequential traces and the concurrent ones, by name."""
    return sorted(TRACES.glob("*.json.gz")), sorted((TRACES / "concurrent").glob("*.json.gz"))


class Units:
    """Converts code-point positions in a text that changes to UTF-8 and UTF-16
    offsets, tracking only the text's non-ASCII characters (their indexes, kept
    sorted, and their extra bytes / code units), so a patch costs no copy of the text."""

    def __init__(self) -> None:
        self.index: list[int] = []
        self.extra8: list[int] = []
        self.extra16: list[int] = []

    def convert(self, position: int, deleted: int, inserted: str) -> tuple[Patch, Patch]:
        start = bisect.bisect_left(self.index, position)
        end = bisect.bisect_left(self.index, position + deleted)
        before8, before16 = sum(self.extra8[:start]), sum(self.extra16[:start])
        gone8, gone16 = sum(self.extra8[start:end]), sum(self.extra16[start:end])
        shift = len(inserted) - deleted
        new = [(position + i, c) for i, c in enumerate(inserted) if not c.isascii()]
        self.index[start:] = [i for i, _ in new] + [i + shift for i in self.index[end:]]
        self.extra8[start:] = [len(c.encode()) - 1 for _, c in new] + self.extra8[end:]
        self.extra16[start:] = [1 if ord(c) > 0xFFFF else 0 for _, c in new] + self.extra16[end:]
        return (
            (position + before8, deleted + gone8, inserted),
            (position + before16, deleted + gone16, inserted),
        )


def unit_offsets(text: str, position: int, deleted: int) -> tuple[Patch, Patch]:
    """`position` and `deleted` (code points in `text`) in UTF-8 and in UTF-16."""
    prefix, gone = text[:position], text[position : position + deleted]

    def u16(s: str) -> int:
        return len(s.encode("utf-16-le", "surrogatepass")) // 2

    return (len(prefix.encode()), len(gone.encode()), ""), (u16(prefix), u16(gone), "")


@dataclass(slots=True)
class Sequential:
    """A trace of one author: its patches in order, in each unit."""

    name: str
    txns: int
    patches: list[Patch]
    """In code points, as the trace has them."""
    utf8: list[Patch]
    utf16: list[Patch]
    expected: str
    non_ascii: int
    """Patches that insert non-ASCII text."""
    updates: list[bytes] = field(default_factory=list)
    """One update per patch, as pycrdt emitted them (filled in by the first replay that
    keeps them)."""


def load_sequential(path: Path) -> Sequential:
    trace = read_trace(path)
    if trace.get("startContent", "") != "":
        raise ValueError(f"{path.name}: the trace does not start from an empty text")
    patches = [(int(p), int(d), str(s)) for txn in trace["txns"] for p, d, s in txn["patches"]]
    non_ascii = sum(1 for _, _, s in patches if not s.isascii())
    if non_ascii:
        units = Units()
        pairs = [units.convert(*patch) for patch in patches]
        utf8, utf16 = [a for a, _ in pairs], [b for _, b in pairs]
    else:
        utf8 = utf16 = patches
    return Sequential(
        name=name_of(path),
        txns=len(trace["txns"]),
        patches=patches,
        utf8=utf8,
        utf16=utf16,
        expected=trace["endContent"],
        non_ascii=non_ascii,
    )


@dataclass(slots=True)
class Step:
    """One transaction of a concurrent trace, and what its agent's replica must
    receive before it."""

    agent: int
    deliver: list[int]
    """Transactions (indexes) the agent's replica applies before this one."""
    patches: list[Patch]
    """In code points."""
    utf8: list[Patch] = field(default_factory=list)
    utf16: list[Patch] = field(default_factory=list)
    """Filled in by `replay.prepare_concurrent` (they depend on each replica's text)."""


@dataclass(slots=True)
class Concurrent:
    """A trace of several agents, as steps of one replica per agent."""

    name: str
    agents: int
    steps: list[Step]
    final: list[list[int]]
    """Per agent, what its replica misses after the replay."""
    expected: str
    patches: int
    merges: int
    """Transactions preceded by at least one delivery."""
    delivered: int
    non_ascii: int


def load_concurrent(path: Path) -> Concurrent:
    """Read a concurrent trace and work out, per transaction, what its agent's replica
    must receive first; checks that replicas never hold more than a transaction's
    parents (each agent's transactions form a chain)."""
    trace = read_trace(path)
    agents = int(trace["numAgents"])
    txns = trace["txns"]
    # The history of a transaction, as how many of each agent's transactions it holds.
    clocks: list[list[int]] = []
    by_agent: list[list[int]] = [[] for _ in range(agents)]
    held = [[0] * agents for _ in range(agents)]  # each replica's clock
    steps: list[Step] = []
    for index, txn in enumerate(txns):
        agent = int(txn["agent"])
        need = [0] * agents
        for parent in txn["parents"]:
            if not 0 <= parent < index:
                raise ValueError(f"{path.name}: transaction {index} has parent {parent}")
            need = [max(a, b) for a, b in zip(need, clocks[parent], strict=True)]
        if need[agent] != len(by_agent[agent]) or any(
            h > n for h, n in zip(held[agent], need, strict=True)
        ):
            raise ValueError(
                f"{path.name}: transaction {index} of agent {agent} does not descend from "
                "everything its replica holds; this replay cannot place its positions"
            )
        missing = sorted(
            i for other in range(agents) for i in by_agent[other][held[agent][other] : need[other]]
        )
        by_agent[agent].append(index)
        need[agent] += 1
        clocks.append(need)
        held[agent] = list(need)
        patches = [(int(p), int(d), str(s)) for p, d, s in txn["patches"]]
        steps.append(Step(agent, missing, patches))
    final = [
        sorted(i for other in range(agents) for i in by_agent[other][held[agent][other] :])
        for agent in range(agents)
    ]
    return Concurrent(
        name=name_of(path),
        agents=agents,
        steps=steps,
        final=final,
        expected=trace["endContent"],
        patches=sum(len(step.patches) for step in steps),
        merges=sum(1 for step in steps if step.deliver),
        delivered=sum(len(step.deliver) for step in steps),
        non_ascii=sum(1 for step in steps for _, _, s in step.patches if not s.isascii()),
    )
