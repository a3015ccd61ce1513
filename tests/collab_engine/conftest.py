"""Fixtures for the core: peers that are closed when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from collab_engine.peer import Peer


@pytest.fixture
def new_peer() -> Iterator[Callable[..., Peer]]:
    """A factory of peers; every peer it made is closed at teardown."""
    made: list[Peer] = []

    def factory(**kwargs: int) -> Peer:
        peer = Peer(**kwargs)  # type: ignore[arg-type]
        made.append(peer)
        return peer

    yield factory
    for peer in made:
        peer.close()
