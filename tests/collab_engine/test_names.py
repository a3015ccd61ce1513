"""Document names and the patterns tokens carry: NFC, no control characters, strict
UTF-8 in URLs, and globs whose `*` stays within one `/`-separated segment."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collab_engine.errors import InvalidDocumentName
from collab_engine.names import document_name, pattern_matches, url_path

segment = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/*?"), min_size=1
)
names = st.lists(segment, min_size=1, max_size=4).map("/".join)


@given(names)
def test_a_clean_name_is_kept_in_nfc_and_nfc_is_stable(text: str) -> None:
    name = document_name(text)
    assert name == unicodedata.normalize("NFC", text)
    assert document_name(unicodedata.normalize("NFD", text)) == name
    assert document_name(name) == name


@given(names, st.characters(whitelist_categories=("Cc",)), st.integers(min_value=0))
def test_any_control_character_is_refused(text: str, control: str, at: int) -> None:
    at %= len(text) + 1
    with pytest.raises(InvalidDocumentName, match="control character"):
        document_name(text[:at] + control + text[at:])


def test_the_length_limit_applies_to_the_nfc_name() -> None:
    nfd = unicodedata.normalize("NFD", "é" * 10)  # 30 bytes in NFD, 20 in NFC
    assert document_name(nfd, max_length=20) == "é" * 10
    with pytest.raises(InvalidDocumentName, match="longer than 19 bytes"):
        document_name(nfd, max_length=19)
    with pytest.raises(InvalidDocumentName, match="no document name"):
        document_name("")


@given(st.binary())
def test_url_paths_are_strict_utf8(raw: bytes) -> None:
    encoded = "".join(f"%{byte:02X}" for byte in raw).encode()
    try:
        expected = raw.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(InvalidDocumentName, match="not UTF-8"):
            url_path(encoded)
    else:
        assert url_path(encoded) == expected


@given(names, names)
def test_star_never_matches_a_slash(prefix: str, rest: str) -> None:
    assert pattern_matches(f"{prefix}/*", f"{prefix}/{rest}") == ("/" not in rest)
    assert not pattern_matches("*", f"{prefix}/{rest}")
    assert pattern_matches("*/*", f"{prefix}/{rest}") == ("/" not in prefix + rest)


@given(names, st.text(st.characters(blacklist_categories=("Cc", "Cs"))))
def test_double_star_matches_any_name_with_the_prefix(prefix: str, rest: str) -> None:
    assert pattern_matches(f"{prefix}/**", f"{prefix}/{rest}")
    assert pattern_matches("**", f"{prefix}/{rest}")
    assert not pattern_matches(f"{prefix}/**", prefix)


@given(names)
def test_a_pattern_without_wildcards_matches_only_itself_in_nfc(name: str) -> None:
    assert pattern_matches(name, name)
    assert pattern_matches(unicodedata.normalize("NFD", name), unicodedata.normalize("NFC", name))
    assert not pattern_matches(name, name + "x")


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("notes/*", "notes/a", True),
        ("notes/*", "notes/a/b", False),
        ("notes/**", "notes/a/b", True),
        ("notes/**", "notes/", True),
        ("notes/**", "notes", False),
        ("notes/?", "notes/a", True),
        ("notes/?", "notes/ab", False),
        ("a?b", "a/b", False),
        ("*/x", "team/x", True),
        ("**/x", "a/b/x", True),
        ("[ab]", "a", False),  # no character classes: `[` is itself
        ("[ab]", "[ab]", True),
        ("n.+", "nxx", False),  # nor regular expressions
    ],
)
def test_patterns(pattern: str, name: str, matches: bool) -> None:
    assert pattern_matches(pattern, name) is matches
