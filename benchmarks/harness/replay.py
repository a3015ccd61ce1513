"""Replaying an editing trace in this process, timed: raw pycrdt, with and without an
observer, and our engine's embedding API (in memory, with one peer, with SQLite); and
the concurrent traces with one pycrdt replica per agent. Every replay's final text is
checked against the trace's (`Mismatch` otherwise); the method is in the docstring of
`benchmarks/merge_throughput.py`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from pycrdt import Doc, Text, TransactionEvent

from collab_engine import Engine
from collab_engine.peer import Peer
from collab_engine.protocol import SyncUpdate, decode
from collab_engine.store import rebuild
from harness.traces import Concurrent, Patch, Sequential, Step, unit_offsets
from storage.sql import SQLStore, sqlite_url

TEXT = "text"
"""The `Text` root every replay edits."""
YIELD_EVERY = 1_000
"""The engine's replay yields to the event loop this often (an embedding program would)."""
DRAIN_EVERY = 256
"""The one peer's outbox is drained this often (its writer would; the outbox holds 1,024)."""

# The implementations replaying a sequential trace, in the tables' order.
PYCRDT, OBSERVED, ENGINE, ENGINE_PEER, ENGINE_SQL, YJS = (
    "pycrdt",
    "pycrdt + observer",
    "engine (memory)",
    "engine (memory, 1 peer)",
    "engine (SQLite)",
    "Yjs",
)
IMPLEMENTATIONS = (PYCRDT, OBSERVED, ENGINE, ENGINE_PEER, ENGINE_SQL, YJS)

Timing = tuple[float, float]
"""Wall-clock and CPU seconds (this process's, all its threads; Node's for Yjs)."""


class Mismatch(Exception):
    """A replay's final text is not the one expected (the trace's `endContent`)."""


def check_text(what: str, actual: str, expected: str) -> None:
    """`Mismatch`, naming the first difference, unless `actual` is `expected`."""
    if actual == expected:
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(actual, expected, strict=False)) if a != b),
        min(len(actual), len(expected)),
    )
    raise Mismatch(
        f"{what}: the final text differs from endContent ({len(actual):,} characters "
        f"against {len(expected):,}; first difference at {at:,}: "
        f"{actual[at : at + 30]!r} instead of {expected[at : at + 30]!r})"
    )


def text_of(doc: Doc[Any]) -> str:
    return str(doc.get(TEXT, type=Text))


def apply_patch(text: Text, patch: Patch) -> None:
    position, deleted, inserted = patch
    if deleted:
        del text[position : position + deleted]
    if inserted:
        text.insert(position, inserted)


def replay_pycrdt(trace: Sequential, observe: bool) -> Timing:
    """One `Doc`, each patch its own transaction; with `observe`, a `Doc.observe`
    callback keeps every transaction's update (the first such replay's become
    `trace.updates`)."""
    doc: Doc[Any] = Doc()
    text = doc.get(TEXT, type=Text)
    updates: list[bytes] = []
    if observe:

        def keep(event: TransactionEvent) -> None:
            updates.append(event.update)

        doc.observe(keep)
    transaction = doc.transaction
    cpu = time.process_time()
    started = time.perf_counter()
    for position, deleted, inserted in trace.utf8:
        with transaction():
            if deleted:
                del text[position : position + deleted]
            if inserted:
                text.insert(position, inserted)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    check_text(f"{trace.name}, {OBSERVED if observe else PYCRDT}", str(text), trace.expected)
    if observe:
        if len(updates) != len(trace.utf8):
            raise Mismatch(f"{trace.name}: {len(updates)} updates for {len(trace.utf8)} patches")
        if not trace.updates:
            # The first run's: every run of the remote path, pycrdt's and Yjs's,
            # applies these same bytes (each new `Doc` has its own random client id,
            # and so updates of slightly different sizes).
            trace.updates = updates
    return elapsed, cpu


async def replay_engine(
    trace: Sequential, database: Path | None, verify: bool, with_peer: bool = False
) -> Timing:
    """The engine's embedding API, in memory or on a new SQLite file at `database`
    (removed afterwards); with `with_peer`, one `Peer` joined to the room (its outbox
    drained every `DRAIN_EVERY` patches, the frames kept). With `verify`, the peer's
    frames and the stored log are checked afterwards, untimed: one update per patch,
    giving the text."""
    store = None if database is None else await SQLStore.connect(sqlite_url(str(database)))
    label = ENGINE_PEER if with_peer else ENGINE if database is None else ENGINE_SQL
    try:
        async with Engine(store=store) as engine:
            async with engine.room(trace.name) as room:
                peer = Peer(outbox_size=engine.config.outbox_size) if with_peer else None
                if peer is not None:
                    room.join(peer)
                    peer.drain()  # sync step 1 and awareness: not part of the replay
                frames: list[bytes] = []
                doc = room.doc
                text = doc.get(TEXT, type=Text)
                transaction = doc.transaction
                journal = engine.journal
                cpu = time.process_time()
                started = time.perf_counter()
                for count, (position, deleted, inserted) in enumerate(trace.utf8, 1):
                    with transaction():
                        if deleted:
                            del text[position : position + deleted]
                        if inserted:
                            text.insert(position, inserted)
                    if peer is not None and count % DRAIN_EVERY == 0:
                        frames += peer.drain()
                    if count % YIELD_EVERY == 0:
                        await anyio.lowlevel.checkpoint()
                        if journal is not None:
                            await journal.room_for_more()
                if peer is not None:
                    frames += peer.drain()
                await room.flush()
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu
                check_text(f"{trace.name}, {label}", str(text), trace.expected)
                if peer is not None:
                    if peer.closed:
                        raise Mismatch(f"{trace.name}, {label}: the peer was closed")
                    room.leave(peer)
                if peer is not None and verify:
                    check_frames(trace, label, frames)
        if store is not None and verify:
            await check_stored(trace, label, store)
    finally:
        if store is not None:
            await store.aclose()
            for suffix in ("", "-wal", "-shm"):
                await anyio.Path(f"{database}{suffix}").unlink(missing_ok=True)
    return elapsed, cpu


def check_frames(trace: Sequential, label: str, frames: Sequence[bytes]) -> None:
    """The frames a peer got: one sync update per patch, which give the text."""
    received: Doc[Any] = Doc()
    updates = 0
    for frame in frames:
        message = decode(frame)
        if isinstance(message, SyncUpdate):
            updates += 1
            received.apply_update(message.update)
    if updates != len(trace.utf8):
        raise Mismatch(f"{trace.name}, {label}: {updates} update frames for {len(trace.utf8)}")
    check_text(f"{trace.name}, {label} (what the peer received)", text_of(received),
               trace.expected)  # fmt: skip


async def check_stored(trace: Sequential, label: str, store: SQLStore) -> None:
    """The stored log: one update per patch (unless compacted), rebuilt into the text."""
    stored = await store.load(trace.name)
    if stored.snapshot is None and len(stored.updates) != len(trace.utf8):
        raise Mismatch(
            f"{trace.name}, {label}: {len(stored.updates)} stored updates for "
            f"{len(trace.utf8)} patches"
        )
    if stored.last_seq != len(trace.utf8):
        raise Mismatch(
            f"{trace.name}, {label}: the last stored seq is {stored.last_seq}, "
            f"expected {len(trace.utf8)}"
        )
    rebuilt = await anyio.to_thread.run_sync(rebuild, trace.name, stored)
    check_text(f"{trace.name}, {label} (stored, rebuilt)", text_of(rebuilt), trace.expected)


def prepare_concurrent(trace: Concurrent) -> None:
    """Fill in every step's UTF-8 and UTF-16 patches. The identity for an ASCII trace;
    otherwise a pycrdt replay (untimed) reads each replica's text before each patch."""
    if not trace.non_ascii:
        for step in trace.steps:
            step.utf8 = step.utf16 = step.patches
        return

    def convert(text: Text, step: Step) -> None:
        current = str(text)
        for position, deleted, inserted in step.patches:
            (p8, d8, _), (p16, d16, _) = unit_offsets(current, position, deleted)
            step.utf8.append((p8, d8, inserted))
            step.utf16.append((p16, d16, inserted))
            current = current[:position] + inserted + current[position + deleted :]
            apply_patch(text, (p8, d8, inserted))

    replay_concurrent(trace, convert)


def replay_concurrent(
    trace: Concurrent, edit: Callable[[Text, Step], None] | None = None
) -> tuple[float, float]:
    """pycrdt: one replica per agent; returns (replay seconds, convergence seconds)."""
    docs: list[Doc[Any]] = [Doc(client_id=agent + 1) for agent in range(trace.agents)]
    texts = [doc.get(TEXT, type=Text) for doc in docs]
    last: list[bytes | None] = [None]

    def keep(event: TransactionEvent) -> None:
        last[0] = event.update

    for doc in docs:
        doc.observe(keep)
    updates: list[bytes | None] = []
    started = time.perf_counter()
    for step in trace.steps:
        doc = docs[step.agent]
        for index in step.deliver:
            update = updates[index]
            if update is not None:
                doc.apply_update(update)
        last[0] = None
        text = texts[step.agent]
        with doc.transaction():
            if edit is None:
                for position, deleted, inserted in step.utf8:
                    if deleted:
                        del text[position : position + deleted]
                    if inserted:
                        text.insert(position, inserted)
            else:
                edit(text, step)
        updates.append(last[0])
    replayed = time.perf_counter() - started
    started = time.perf_counter()
    for agent, missing in enumerate(trace.final):
        for index in missing:
            update = updates[index]
            if update is not None:
                docs[agent].apply_update(update)
    converged = time.perf_counter() - started
    for agent, text in enumerate(texts):
        check_text(f"{trace.name}, pycrdt replica of agent {agent}", str(text), trace.expected)
    return replayed, converged
