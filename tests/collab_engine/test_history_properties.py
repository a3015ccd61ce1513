"""Properties of diff and revert over random edit histories (Hypothesis):

- applying a Text diff's changes to the text at the first point gives the text at
  the second, and each change names the author of the edit that made it;
- Map and Array diffs account for every key and element that differ;
- reverting to any earlier point gives exactly that point's content, and a replica
  with a concurrent edit converges with the reverted document.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from collab_engine.content import content_of, kinds_of
from collab_engine.diff import diff
from collab_engine.rollback import revert

AUTHORS = ["ann", "bob", "cyd"]
ALPHABET = st.sampled_from(list("ab é😀中\n"))

edits = st.lists(
    st.tuples(
        st.sampled_from(AUTHORS),
        st.sampled_from(["insert", "delete", "format", "set", "unset", "push", "remove"]),
        st.integers(min_value=0, max_value=10_000),
        st.text(ALPHABET, min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=25,
)


def apply(doc: Doc[Any], kind: str, at: int, word: str) -> None:
    text = doc.get("text", type=Text)
    plain = str(text)
    index = at % (len(plain) + 1)
    offset = len(plain[:index].encode())  # pycrdt positions count UTF-8 bytes
    if kind == "insert":
        text.insert(offset, word)
    elif kind == "delete" and plain:
        index = min(index, len(plain) - 1)
        start = len(plain[:index].encode())
        end = len(plain[: index + len(word)].encode())
        del text[start:end]
    elif kind == "format" and plain:
        text.format(0, len(plain[: index or 1].encode()), {"bold": True})
    elif kind == "set":
        doc.get("map", type=Map)[word[:1]] = at
    elif kind == "unset":
        doc.get("map", type=Map).pop(word[:1], None)
    elif kind == "push":
        items = doc.get("list", type=Array)
        items.insert(at % (len(items) + 1), word)
    elif kind == "remove":
        items = doc.get("list", type=Array)
        if len(items):
            del items[at % len(items)]


def history(steps: list[tuple[str, str, int, str]]) -> tuple[Doc[Any], list[tuple[str, bytes]]]:
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, "start")
    doc.get("map", type=Map)["k"] = 0
    doc.get("list", type=Array).append("first")
    log: list[tuple[str, bytes]] = [("ann", doc.get_update())]
    for author, kind, at, word in steps:
        before = doc.get_state()
        apply(doc, kind, at, word)
        update = doc.get_update(before)
        if update != b"\x00\x00":
            log.append((author, update))
    return doc, log


def replay(log: list[tuple[str, bytes]]) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    for _, update in log:
        doc.apply_update(update)
    return doc


def utf16_index(text: str, units: int) -> int:
    """The Python index in `text` of the UTF-16 offset `units`."""
    count = 0
    for index, char in enumerate(text):
        if count >= units:
            return index
        count += 2 if ord(char) > 0xFFFF else 1
    return len(text)


@settings(max_examples=60, deadline=None)
@given(edits, st.integers(min_value=1, max_value=30))
def test_a_text_diff_turns_the_first_text_into_the_second(
    steps: list[tuple[str, str, int, str]], cut: int
) -> None:
    final, log = history(steps)
    point = min(cut, len(log))
    before = replay(log[:point])
    # A root emptied at one point has no type left to read there; the other tells
    # (the server gives the current document's kinds the same way).
    kinds = {**kinds_of(final), **kinds_of(before)}
    old = content_of(before, kinds)
    changes = diff(before, log[point:], kinds)
    new = content_of(final, kinds)
    # Rebuild the second text from the first and the changes (positions are in
    # the second text, UTF-16): walk them in order.
    text = old["text"].get("text", "")
    for change in changes.get("text", {}).get("changes", []):
        at = utf16_index(text, change["index"])
        if change["op"] == "insert":
            text = text[:at] + change["text"] + text[at:]
        else:
            assert text[at : at + len(change["text"])] == change["text"]
            text = text[:at] + text[at + len(change["text"]) :]
    assert text == new["text"].get("text", "")
    authors = {author for author, _ in log[point:]}
    assert {c["author"] for c in changes.get("text", {}).get("changes", [])} <= authors
    # A root empty at both points may have no kind left to read ({"type": None}):
    # it has no changes either.
    keys = {c["key"] for c in changes.get("map", {}).get("changes", [])}
    old_map, new_map = old["map"].get("value", {}), new["map"].get("value", {})
    assert keys == {k for k in {*old_map, *new_map} if old_map.get(k) != new_map.get(k)}
    values = list(old["list"].get("value", []))
    for change in changes.get("list", {}).get("changes", []):
        if change["op"] == "insert":
            values[change["index"] : change["index"]] = change["values"]
        elif change["op"] == "delete":
            del values[change["index"] : change["index"] + len(change["values"])]
    assert values == new["list"].get("value", [])


@settings(max_examples=60, deadline=None)
@given(edits, st.integers(min_value=1, max_value=30), st.text(ALPHABET, min_size=1, max_size=3))
def test_revert_gives_the_earlier_content_and_merges_with_concurrent_edits(
    steps: list[tuple[str, str, int, str]], cut: int, late: str
) -> None:
    final, log = history(steps)
    point = min(cut, len(log))
    kinds = {**kinds_of(final), **kinds_of(replay(log[:point]))}
    expected = content_of(replay(log[:point]), kinds)
    # A replica that has everything, and edits concurrently with the revert.
    replica: Doc[Any] = Doc()
    replica.apply_update(final.get_update())
    replica.get("map", type=Map)["late"] = late
    update = revert(replay(log[:point]), final.get_update(), kinds)
    final.apply_update(update)
    assert content_of(final, kinds) == expected
    final.apply_update(replica.get_update(final.get_state()))
    replica.apply_update(update)
    assert content_of(final, kinds) == content_of(replica, kinds)
    merged = content_of(final, kinds)
    assert merged["map"]["value"] == {**expected["map"].get("value", {}), "late": late}
    assert merged["text"] == expected["text"]
