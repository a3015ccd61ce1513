"""Update throughput through the permission and lock checks, in process: one peer
streaming small text updates into rooms of an `Engine` without a store, as the server's
connection reader hands them to `Room.receive`.

The `Workload` of a size is a base document (a `Text` "body" of that many KB, built
from 100-character inserts at random positions, seed 5, and a `Map` "notes" with the
key "intro") and the updates of a writer replica typing two characters per
transaction in the middle of "body". Each configuration (`CONFIGS`) is a peer: (a)
open mode, (b) an editor by its grants, (c) the same with a lease held by another
user on `LOCKED`, (d) a viewer, every update denied and rolled back. `run_once`
replays the updates into fresh rooms (at most the workload's per room, after
`warmup` unmeasured ones), drains the peer's outbox every `DRAIN_EVERY` updates as its
writer task would, and `check`s the text and the denials of every room.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pycrdt import Doc, Map, Text, TransactionEvent

from collab_engine import Engine, Peer
from collab_engine.identity import Identity
from collab_engine.permissions import Credentials, Grant, Role
from collab_engine.protocol import SyncUpdate
from collab_engine.room import Room
from harness.sampling import machine_busy_seconds

DENIED_PREFIX = b"\x02\x00"
"""The first bytes of a PermissionDenied frame (y-protocols auth, permission denied)."""
ALICE = Identity("alice", "Alice")
BOB = Identity("bob", "Bob")
CAROL = Identity("carol", "Carol")
GRANTS = (
    Grant("user:alice", Role.EDITOR),
    Grant("user:bob", Role.EDITOR),
    Grant("user:carol", Role.VIEWER),
)
"""The document's grants (stored with `Engine.grant`, or `server grants set`)."""
LOCKED = ("notes", "intro")
DRAIN_EVERY = 256

CONFIGS = {
    "a": "(a) checks off: open-mode peer (owner)",
    "b": "(b) editor with grants, no lease",
    "c": "(c) editor, lease held by another user elsewhere",
    "d": "(d) viewer: every update denied and rolled back",
}


class StreamOptions(Protocol):
    """What `run_once` reads of a benchmark's options."""

    @property
    def duration(self) -> float: ...
    @property
    def warmup(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Workload:
    kilobytes: int
    base: bytes
    """The document's state before the run (`Doc.get_update()`)."""
    base_text: str
    updates: list[SyncUpdate]


def build_workload(kilobytes: int, count: int) -> Workload:
    """The base document of `kilobytes` KB of text, and `count` updates of a writer."""
    rng = random.Random(5)
    doc: Doc[Any] = Doc(client_id=1)
    body = doc.get("body", type=Text)
    notes = doc.get("notes", type=Map)
    notes["intro"] = "an introduction, locked by bob"
    target = kilobytes * 1024
    letters = "abcdefghijklmnopqrstuvwxyz "
    while len(body) < target:
        chunk = "".join(rng.choice(letters) for _ in range(min(100, target - len(body))))
        body.insert(rng.randint(0, len(body)), chunk)
    base = doc.get_update()
    base_text = str(body)

    writer: Doc[Any] = Doc(client_id=2)
    writer.apply_update(base)
    text = writer.get("body", type=Text)
    updates: list[SyncUpdate] = []

    def capture(event: TransactionEvent) -> None:
        updates.append(SyncUpdate(event.update))

    subscription = writer.observe(capture)
    position = len(text) // 2
    for index in range(count):
        with writer.transaction():
            text.insert(position, "xy" if index % 2 else "yz")
        position += 2
    writer.unobserve(subscription)
    return Workload(kilobytes, base, base_text, updates)


@dataclass(frozen=True, slots=True)
class RunResult:
    config: str
    kilobytes: int
    updates: int
    rooms: int
    """Fresh rooms the run went through (each takes at most `--per-room` updates)."""
    rate: float
    """Updates (denials for d) per second of wall time."""
    cpu_per_update: float
    """Seconds of this process's CPU per update."""
    other_cpu_share: float
    """CPU other processes used during the window, as a share of one core."""
    problems: tuple[str, ...]


async def make_peer(engine: Engine, room: Room, config: str) -> Peer:
    """The peer of configuration `config`, joined to `room` (with its grants and lease)."""
    size = engine.config.outbox_size
    if config == "a":
        peer = Peer(outbox_size=size, label="open")
    else:
        for grant in GRANTS:
            await engine.grant(room.name, grant)
        identity = CAROL if config == "d" else ALICE
        credentials = Credentials(identity, Role.EDITOR, "*", time.time() + 3600)
        role = await engine.role(room.name, credentials)
        assert role is not None
        peer = Peer(
            outbox_size=size,
            label=identity.user_id,
            identity=identity,
            role=role,
            expires_at=credentials.expires_at,
            credentials=credentials,
        )
        if config == "c":
            room.lock("acquire", LOCKED, identity=BOB, role=Role.EDITOR, ttl=3600)
    room.join(peer)
    peer.drain()
    return peer


def drained_denials(peer: Peer) -> int:
    return sum(frame.startswith(DENIED_PREFIX) for frame in peer.drain())


async def run_once(
    engine: Engine, workload: Workload, config: str, options: StreamOptions, index: int
) -> RunResult:
    """Stream the workload's updates into fresh rooms of `engine` as configuration
    `config`, until `options.duration` seconds are measured, and check the outcome."""
    problems: list[str] = []
    elapsed = own = other = 0.0
    measured = rooms = 0
    while elapsed < options.duration:
        rooms += 1
        name = f"bench-{workload.kilobytes}k-{config}-{index}-{rooms}"
        async with engine.room(name) as room:
            room.apply(workload.base)
            peer = await make_peer(engine, room, config)
            if config == "c" and len(room.locks.leases) != 1:
                problems.append(f"{name}: expected one lease, found {room.locks.leases}")
            messages = workload.updates
            denials = 0
            for message in messages[: options.warmup]:
                room.receive(peer, message)
            denials += drained_denials(peer)
            done = options.warmup
            busy0, own0 = machine_busy_seconds(), time.process_time()
            start = time.perf_counter()
            deadline = start + options.duration - elapsed
            for message in messages[options.warmup :]:
                room.receive(peer, message)
                done += 1
                if done % DRAIN_EVERY == 0:
                    denials += drained_denials(peer)
                if time.perf_counter() >= deadline:
                    break
            window = time.perf_counter() - start
            room_own = time.process_time() - own0
            other += machine_busy_seconds() - busy0 - room_own
            elapsed += window
            own += room_own
            measured += done - options.warmup
            denials += drained_denials(peer)
            problems.extend(check(room, peer, workload, config, done, denials))
            room.leave(peer)
        await asyncio.sleep(0)  # let the sweeper unload the rooms that are done
    return RunResult(
        config=config,
        kilobytes=workload.kilobytes,
        updates=measured,
        rooms=rooms,
        rate=measured / elapsed,
        cpu_per_update=own / measured,
        other_cpu_share=max(0.0, other) / elapsed,
        problems=tuple(problems),
    )


def check(
    room: Room, peer: Peer, workload: Workload, config: str, done: int, denials: int
) -> list[str]:
    """What went wrong in one room: updates denied or applied against expectations."""
    problems = []
    body = str(room.doc.get("body", type=Text))
    if peer.closed:
        problems.append(f"{room.name}: the peer was closed: {peer.error}")
    if config == "d":
        if denials != done:
            problems.append(f"{room.name}: {denials} PermissionDenied for {done} updates")
        if body != workload.base_text:
            problems.append(f"{room.name}: the viewer's text was not rolled back")
    else:
        if denials:
            problems.append(f"{room.name}: {denials} updates denied")
        if len(body) != len(workload.base_text) + 2 * done:
            problems.append(
                f"{room.name}: text of {len(body)} characters, expected "
                f"{len(workload.base_text) + 2 * done}"
            )
    return problems
