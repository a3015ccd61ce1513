"""The peer's outbox: batches of what is queued, with runs of updates merged."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pycrdt import Doc, Text

from collab_engine import protocol
from collab_engine.peer import CACHED_TAKE, MAX_MERGED, Peer, coalesce

pytestmark = pytest.mark.anyio


def updates(count: int, size: int = 3) -> tuple[Doc[Any], list[bytes]]:
    doc: Doc[Any] = Doc()
    text = doc.get("t", type=Text)
    frames = []
    for i in range(count):
        before = doc.get_state()
        text.insert(len(str(text)), str(i % 10) * size)
        frames.append(protocol.encode_sync_update(doc.get_update(before)))
    return doc, frames


def replay(frames: list[bytes]) -> str:
    doc: Doc[Any] = Doc()
    for frame in frames:
        message = protocol.decode(frame)
        if isinstance(message, protocol.SyncUpdate):
            doc.apply_update(message.update)
    return str(doc.get("t", type=Text))


def test_runs_of_updates_merge_and_other_frames_keep_their_place() -> None:
    source, frames = updates(5)
    awareness = protocol.encode_awareness([])
    batch = [frames[0], frames[1], awareness, frames[2], frames[3], frames[4]]
    out = coalesce(batch)
    assert len(out) == 3 and out[1] == awareness
    assert [type(protocol.decode(f)).__name__ for f in out] == [
        "SyncUpdate",
        "AwarenessUpdate",
        "SyncUpdate",
    ]
    assert replay(out) == str(source.get("t", type=Text))
    assert coalesce(batch)[0] is out[0]  # merged once for every peer with that run
    assert coalesce([frames[0]]) == [frames[0]]


def test_receivers_of_the_same_frames_take_one_coalesced_batch() -> None:
    """A room's broadcasts queue the same frames for each receiver: the first take
    coalesces them, the others get that result; a take over `CACHED_TAKE` bytes is
    coalesced on its own (a large sync step 2 is not kept)."""
    _, frames = updates(3)
    awareness = protocol.encode_awareness([])
    peers = [Peer(), Peer()]
    for peer in peers:
        for frame in (frames[0], frames[1], awareness):
            peer.send(frame)
    first, second = (peer.take() for peer in peers)
    assert list(first) == coalesce([frames[0], frames[1], awareness])
    assert second is first
    large = protocol.encode_sync_update(b"\x00" * CACHED_TAKE)
    for peer in peers:
        peer.send(awareness)
        peer.send(large)
    first, second = (peer.take() for peer in peers)
    assert list(first) == [awareness, large] == list(second)
    assert second is not first


def test_large_updates_are_sent_as_they_are() -> None:
    _, frames = updates(3, size=MAX_MERGED // 2)
    out = coalesce(frames)
    assert out == frames  # no two of them fit in one merge


async def test_a_writer_that_fell_behind_gets_one_batch() -> None:
    source, frames = updates(20)
    peer = Peer(outbox_size=64)
    for frame in frames:
        peer.send(frame)
    peer.send(protocol.encode_persisted(3))
    batches = []
    with anyio.fail_after(5):
        async for batch in peer.batches():
            batches.append(batch)
            peer.close()
    assert len(batches) == 1 and len(batches[0]) == 2
    assert replay(batches[0]) == str(source.get("t", type=Text))
    assert protocol.decode(batches[0][1]) == protocol.Persisted(3)
