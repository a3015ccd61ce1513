"""Rollback: the update that undoes a denied one, so that nobody keeps its content.

When the server refuses a write (a viewer's, or one that touches a section locked by
someone else), dropping it would leave its author diverged: its editor shows the
change, nobody else has it, and its next edits build on it. Instead the server
computes the compensating update with pycrdt's `UndoManager` (inserted content
deleted, deleted content put back as new items), on a scratch copy of the document,
and applies the denied update and its compensation merged into one update: every
replica integrates both at once, so the denied content is never shown, and the
author's editor returns to what everyone else has.
"""

from __future__ import annotations

from typing import Any

from pycrdt import Doc, Text, TransactionEvent, UndoManager, merge_updates

from .blocks import clock_ends
from .errors import ProtocolError
from .protocol import decode_state_vector
from .types import Update

_DENIED = "collab-engine:denied"


def changes(doc: Doc[Any], update: Update) -> bool:
    """Whether applying `update` would change `doc` (a viewer's sync step 2, say,
    usually brings nothing new, and is no write at all).

    Raises:
        ProtocolError: `update` is not a valid Yjs update.
    """
    try:
        ends = clock_ends(update)
    except ProtocolError:
        raise
    known = decode_state_vector(doc.get_state())
    if any(known.get(client, 0) < end for client, end in ends.items()):
        return True
    base = doc.get_update()
    probe: Doc[Any] = Doc()
    try:
        probe.apply_update(base)
        probe.apply_update(update)
    except ValueError as exc:
        raise ProtocolError(f"invalid Yjs update: {exc}") from exc
    return probe.get_update() != base


def rollback(doc: Doc[Any], update: Update) -> Update | None:
    """The denied `update` merged with the update that undoes it, for `doc`.

    Returns None when the update is to be kept out rather than rolled back: it
    changes nothing in `doc`, cannot be integrated yet (it depends on updates `doc`
    lacks), or its change cannot be undone. The author is told either way.

    Raises:
        ProtocolError: `update` is not a valid Yjs update.
    """
    try:
        ends = clock_ends(update)
        base = doc.get_update()
        probe: Doc[Any] = Doc()
        probe.apply_update(base)
        before = decode_state_vector(probe.get_state())
        probe.apply_update(update)
    except ValueError as exc:
        raise ProtocolError(f"invalid Yjs update: {exc}") from exc
    after = decode_state_vector(probe.get_state())
    if any(after.get(client, 0) < end for client, end in ends.items()):
        return None  # not integrated: it waits for updates nobody sent
    if after == before and probe.get_update() == base:
        return None
    scratch: Doc[Any] = Doc()
    scratch.apply_update(base)
    # Every root the update may touch is in scope; the type given to a root here
    # does not matter to the undo manager, which works on items.
    scopes = [scratch.get(name, type=Text) for name in probe.keys()]
    manager = UndoManager(scopes=scopes, capture_timeout_millis=0)
    manager.include_origin(_DENIED)
    undone: list[Update] = []

    def capture(event: TransactionEvent) -> None:
        undone.append(event.update)

    with scratch.transaction(origin=_DENIED):
        scratch.apply_update(update)
    subscription = scratch.observe(capture)
    if manager.can_undo():
        manager.undo()
    scratch.unobserve(subscription)
    if not undone:
        return None  # nothing the undo manager could take back: keep it out entirely
    merged: Update = merge_updates(update, *undone)
    return merged
