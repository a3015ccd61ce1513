"""Diff: what changed in a document between two points of its log, and who changed it.

`diff(before, steps, kinds)` replays the log entries (`steps`: author and update,
in log order) on `before`, the document at the first point, and watches each
root's events:

- Text: ranges inserted and deleted, each with its author, positioned in the text
  at the second point and counted in UTF-16 code units (as Yjs counts).
  Text inserted and deleted again between the two points is not a change.
- Array: elements inserted and deleted the same way, and elements whose content
  changed in place (a nested Map edited, say).
- Map: keys added, changed and removed, with the author of the last change of each.
- XmlFragment: the XML before and after, and who changed it.

Consecutive entries of one author are applied in one transaction, so a diff costs
one event per run of an author's edits (the automerge-paper trace, one author, is
one transaction), not one per keystroke. Pure: documents and updates in, JSON out.
Yrs reports text positions in UTF-8 bytes; they are kept so inside and converted to
UTF-16 on the way out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from pycrdt import Array, Doc, Map, Text, XmlFragment

from .content import EMBED, jsonable, typed_roots, utf16_length, xml_of
from .types import Update

_EMBED_BYTE = b"\x00"
"""An embed in text, one position in Yrs's byte count (shown as U+FFFC)."""


@dataclass(slots=True)
class _Run:
    kind: str
    """'keep' (there at both points), 'insert' or 'delete'."""
    data: Any
    """Text: UTF-8 bytes. Array: a list of elements (None for inserted ones)."""
    author: str | None = None


@dataclass(slots=True)
class _Sequence:
    """The runs of a Text or Array at the second point, deleted runs included."""

    runs: list[_Run] = field(default_factory=list)

    def apply(self, delta: list[dict[str, Any]], author: str | None, text: bool) -> None:
        out: list[_Run] = []
        pending = list(reversed(self.runs))  # a stack: the next run is last

        def take(count: int, deleting: bool) -> None:
            while count > 0 and pending:
                run = pending.pop()
                if run.kind == "delete":
                    out.append(run)  # already deleted: takes no position
                    continue
                if len(run.data) > count:
                    pending.append(_Run(run.kind, run.data[count:], run.author))
                    run = _Run(run.kind, run.data[:count], run.author)
                count -= len(run.data)
                if not deleting:
                    out.append(run)
                elif run.kind == "keep":
                    out.append(_Run("delete", run.data, author))
                # an insert deleted again is no change at all

        for op in delta:
            if "retain" in op:
                take(op["retain"], deleting=False)
            elif "delete" in op:
                take(op["delete"], deleting=True)
            elif "insert" in op:
                inserted = op["insert"]
                data: Any
                if text:
                    data = inserted.encode("utf-8") if isinstance(inserted, str) else _EMBED_BYTE
                else:
                    data = [None] * len(inserted)
                out.append(_Run("insert", data, author))
        out.extend(reversed(pending))
        self.runs = out


def diff(
    before: Doc[Any], steps: Sequence[tuple[str | None, Update]], kinds: dict[str, str]
) -> dict[str, Any]:
    """The changes `steps` make to `before`, root by root (`before` is changed: it
    ends at the second point). `kinds` gives the kind of each root to compare."""
    roots = typed_roots(before, kinds)
    old = {name: _value(root) for name, root in roots.items()}
    sequences: dict[str, _Sequence] = {}
    map_authors: dict[str, dict[str, str | None]] = {}
    authors: dict[str, list[str | None]] = {name: [] for name in roots}
    events: list[tuple[str, Any]] = []
    subscriptions: list[tuple[Any, Any]] = []
    for name, root in roots.items():
        if isinstance(root, Text | Array):
            initial: Any = _text_bytes(root) if isinstance(root, Text) else list(old[name])
            sequences[name] = _Sequence([_Run("keep", initial)] if initial else [])
            subscriptions.append((root, root.observe(_recorder(events, name))))
        if isinstance(root, Map | Array | XmlFragment):
            subscriptions.append((root, root.observe_deep(_deep_recorder(events, name))))
    try:
        for author, group in groupby(steps, key=lambda step: step[0]):
            with before.transaction():
                for _, update in group:
                    before.apply_update(update)
            for name, event in events:
                if author not in authors[name]:
                    authors[name].append(author)
                if event[0] == "delta":
                    sequences[name].apply(event[1], author, isinstance(roots[name], Text))
                elif event[0] == "keys":
                    for key in event[1]:
                        map_authors.setdefault(name, {})[key] = author
            events.clear()
    finally:
        for root, subscription in subscriptions:
            root.unobserve(subscription)
    result: dict[str, Any] = {}
    for name, root in roots.items():
        new = _value(root)
        changes: dict[str, Any]
        if isinstance(root, Text):
            changes = {"type": "text", "changes": _text_changes(sequences[name])}
        elif isinstance(root, Array):
            changes = {"type": "array", "changes": _array_changes(sequences[name], new)}
        elif isinstance(root, Map):
            changes = {
                "type": "map",
                "changes": _map_changes(old[name], new, map_authors.get(name, {})),
            }
        else:
            changes = {
                "type": "xml",
                "changed": old[name] != new,
                "before": old[name],
                "after": new,
            }
        changes["authors"] = authors[name] if old[name] != new else []
        result[name] = changes
    return result


def _value(root: Any) -> Any:
    if isinstance(root, Text):
        return "".join(chunk if isinstance(chunk, str) else EMBED for chunk, _ in root.diff())
    if isinstance(root, XmlFragment):
        return xml_of(root)
    return jsonable(root.to_py())


def _text_bytes(root: Text) -> bytes:
    return b"".join(
        chunk.encode("utf-8") if isinstance(chunk, str) else _EMBED_BYTE for chunk, _ in root.diff()
    )


def _recorder(events: list[tuple[str, Any]], name: str) -> Any:
    def record(event: Any) -> None:
        # Read inside the callback: the event is only valid during the transaction.
        events.append((name, ("delta", list(event.delta))))

    return record


def _deep_recorder(events: list[tuple[str, Any]], name: str) -> Any:
    def record(deep: list[Any]) -> None:
        for event in deep:
            path = list(event.path)
            if path and isinstance(path[0], str):
                events.append((name, ("keys", [path[0]])))  # inside the value of a key
            elif not path and hasattr(event, "keys") and not hasattr(event, "delta"):
                events.append((name, ("keys", list(event.keys))))
            else:
                events.append((name, ("touched", None)))

    return record


def _text_changes(sequence: _Sequence) -> list[dict[str, Any]]:
    changes: list[dict[str, Any]] = []
    index = 0
    for run in _merged(sequence.runs):
        if run.kind == "keep":
            index += utf16_length(run.data.decode("utf-8"))
            continue
        text = run.data.decode("utf-8").replace("\x00", EMBED)
        length = utf16_length(text)
        changes.append(
            {"op": run.kind, "index": index, "length": length, "text": text, "author": run.author}
        )
        if run.kind == "insert":
            index += length
    return changes


def _array_changes(sequence: _Sequence, new: list[Any]) -> list[dict[str, Any]]:
    changes: list[dict[str, Any]] = []
    index = 0
    for run in _merged(sequence.runs):
        if run.kind == "keep":
            for offset, value in enumerate(run.data):
                if new[index + offset] != value:
                    changes.append(
                        {
                            "op": "change",
                            "index": index + offset,
                            "before": value,
                            "after": new[index + offset],
                        }
                    )
            index += len(run.data)
        elif run.kind == "insert":
            count = len(run.data)
            changes.append(
                {
                    "op": "insert",
                    "index": index,
                    "values": new[index : index + count],
                    "author": run.author,
                }
            )
            index += count
        else:
            changes.append(
                {"op": "delete", "index": index, "values": run.data, "author": run.author}
            )
    return changes


def _map_changes(
    old: dict[str, Any], new: dict[str, Any], authors: dict[str, str | None]
) -> list[dict[str, Any]]:
    changes: list[dict[str, Any]] = []
    for key in sorted({*old, *new}):
        if key not in old:
            change = {"op": "add", "key": key, "after": new[key]}
        elif key not in new:
            change = {"op": "remove", "key": key, "before": old[key]}
        elif old[key] != new[key]:
            change = {"op": "change", "key": key, "before": old[key], "after": new[key]}
        else:
            continue
        changes.append({**change, "author": authors.get(key)})
    return changes


def _merged(runs: list[_Run]) -> list[_Run]:
    merged: list[_Run] = []
    for run in runs:
        if not run.data:
            continue
        last = merged[-1] if merged else None
        if last is not None and last.kind == run.kind and last.author == run.author:
            last.data = last.data + run.data
        else:
            merged.append(_Run(run.kind, run.data, run.author))
    return merged
