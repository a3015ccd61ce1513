"""Document names: what a name may be, how it is read from a URL path, and how a
token's pattern of names matches it. Pure.

A name is Unicode text, and one document has exactly one name:

- it is normalized to NFC, wherever it enters (`café` typed as one code point or as
  `e` and a combining accent is one document), and its length is measured after;
- it has no control characters (Unicode category Cc: C0, DEL and C1; PostgreSQL
  cannot store NUL, and the others are invisible in logs and lists), nor lone
  surrogates (Cs: not encodable as UTF-8, so not storable);
- in a URL it is percent-encoded UTF-8, read strictly: bytes that are not UTF-8 are
  refused, never replaced by U+FFFD, which would give `%FF`, `%FE` and `%EF%BF%BD`
  (U+FFFD itself, a name of its own) one document.

A pattern (a token's `doc` claim) matches names segment by segment, `/` separating
them: `*` is any run of characters but `/`, `**` any run at all (`/` included, or
none), `?` one character but `/`; every other character, `[` included, stands for
itself (no character classes). `notes/*` matches `notes/a` but not `notes/a/b`;
`notes/**` matches both; `**` matches every name. Patterns are normalized to NFC too.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from .errors import InvalidDocumentName
from .types import DocumentName


def document_name(text: str, max_length: int | None = None) -> DocumentName:
    """`text` as a document name: normalized to NFC, and checked.

    Raises:
        InvalidDocumentName: `text` is empty, holds a control character or a lone
            surrogate, or its NFC
            form is longer than `max_length` UTF-8 bytes (None: no limit).
    """
    name = normalized(text)
    if not name:
        raise InvalidDocumentName("no document name")
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cs"):
            kind = "control character" if unicodedata.category(char) == "Cc" else "lone surrogate"
            raise InvalidDocumentName(f"{kind} U+{ord(char):04X} in a document name")
    if max_length is not None and len(name.encode()) > max_length:
        raise InvalidDocumentName(f"document name longer than {max_length} bytes")
    return DocumentName(name)


def normalized(text: str) -> str:
    """`text` in NFC, the one form names and patterns are compared in (unchecked)."""
    # A cheap test first: nearly every name is already in NFC (every ASCII one is).
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def url_path(raw_path: bytes) -> str:
    """A URL path as text: percent-escapes decoded, then the bytes read as UTF-8,
    strictly (what ASGI's `scope["path"]` would be, without replacement characters).

    Raises:
        InvalidDocumentName: the decoded bytes are not UTF-8.
    """
    try:
        return unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidDocumentName("the path is not UTF-8 once percent-decoded") from None


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether the name pattern `pattern` (see the module's docstring) matches all of
    `name`. Both are compared in NFC."""
    return _compiled(normalized(pattern)).fullmatch(normalized(name)) is not None


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    # Tokens repeat (every connection of a user carries the same one): compile once.
    parts = []
    for piece in re.split(r"(\*\*|\*|\?)", pattern):
        if piece == "**":
            parts.append(".*")
        elif piece == "*":
            parts.append("[^/]*")
        elif piece == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts), re.DOTALL)
