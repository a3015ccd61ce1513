"""The editing traces of /work/shared/traces (josephg/editing-traces, CC BY 4.0)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO.parent / "shared" / "traces"
"""The sequential traces at its top level, the concurrent ones in `concurrent/`."""
AUTOMERGE_PAPER = TRACES / "automerge-paper.json.gz"
"""The 259,778-edit history of the Automerge paper's text."""


def read_trace(path: Path) -> dict[str, Any]:
    """A trace as its JSON says: `startContent`, `endContent`, `txns` of `patches`
    (position and deleted in code points, inserted text)."""
    with gzip.open(path, "rt", encoding="utf-8") as file:
        trace: dict[str, Any] = json.load(file)
    return trace
