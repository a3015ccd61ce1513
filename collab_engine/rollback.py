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

from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Text, TransactionEvent, UndoManager, merge_updates

from .blocks import clock_ends, root_names
from .content import typed_roots
from .errors import ProtocolError
from .protocol import decode_state_vector
from .types import Update

_DENIED = "collab-engine:denied"


@dataclass(frozen=True, slots=True)
class Rollback:
    """What to do with a write that is refused."""

    changed: bool
    """Whether the write would change the document at all (a viewer's sync step 2,
    say, usually brings nothing new, and is no write)."""
    merged: Update | None
    """The write merged with the update that undoes it, to apply in its place; None
    when it is to be kept out instead: it cannot be integrated yet (it depends on
    updates the document lacks), or its change cannot be undone."""


def rollback(doc: Doc[Any], update: Update) -> Rollback:
    """How to refuse `update` in `doc`, computed on one scratch copy of `doc`.

    Raises:
        ProtocolError: `update` is not a valid Yjs update.
    """
    ends = clock_ends(update)
    names = root_names(update)
    scratch: Doc[Any] = Doc()
    scratch.apply_update(doc.get_update())
    # Every root the update may touch is in scope: those the document has, and those
    # the update creates. The type given to a root here does not matter to the undo
    # manager, which works on items.
    scopes = [scratch.get(name, type=Text) for name in {*scratch.keys(), *names}]
    manager = UndoManager(scopes=scopes, capture_timeout_millis=0)
    manager.include_origin(_DENIED)
    try:
        with scratch.transaction(origin=_DENIED):
            scratch.apply_update(update)
    except ValueError as exc:
        raise ProtocolError(f"invalid Yjs update: {exc}") from exc
    known = decode_state_vector(scratch.get_state())
    if any(known.get(client, 0) < end for client, end in ends.items()):
        return Rollback(changed=True, merged=None)  # waits for updates nobody sent
    if not manager.can_undo():
        return Rollback(changed=False, merged=None)  # nothing new: no write at all
    undone = _undo(scratch, manager)
    if not undone:
        return Rollback(changed=True, merged=None)  # nothing the undo could take back
    return Rollback(changed=True, merged=merge_updates(update, *undone))


_RESTORED = "collab-engine:restored"


def revert(version: Doc[Any], current: Update, kinds: dict[str, str]) -> Update:
    """The update that makes a document whose state is `current` equal to `version`
    (an earlier point of its history), as a new change on top of it.

    It is the undo of everything `current` has that `version` lacks, computed on
    `version` itself (changed by this call): content inserted since is deleted,
    content deleted since is inserted again as new items, map keys take back their
    values, formatting its attributes. Applied to a replica that has edits
    `current` lacks, it merges with them by the usual CRDT rules. `kinds` names the
    roots in scope and their kind (see `content.kinds_of`); the empty update
    `b"\\x00\\x00"` means nothing differs.

    Raises:
        ValueError: `current` is not a valid Yjs update.
    """
    names = {*kinds, *root_names(current)}
    scopes = list(typed_roots(version, {name: kinds.get(name, "text") for name in names}).values())
    manager = UndoManager(scopes=scopes, capture_timeout_millis=0)
    manager.include_origin(_RESTORED)
    with version.transaction(origin=_RESTORED):
        version.apply_update(current)
    undone = _undo(version, manager) if manager.can_undo() else []
    if not undone:
        return b"\x00\x00"
    return merge_updates(*undone) if len(undone) > 1 else undone[0]


def _undo(doc: Doc[Any], manager: UndoManager) -> list[Update]:
    """Undo the last change `manager` tracked in `doc`; the updates that made."""
    undone: list[Update] = []

    def capture(event: TransactionEvent) -> None:
        undone.append(event.update)

    subscription = doc.observe(capture)
    manager.undo()
    doc.unobserve(subscription)
    return undone
