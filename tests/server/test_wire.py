"""The wire's frames are the bytes wsproto (hypercorn's encoder) would have sent."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from server.wire import _framed, _header


@given(st.binary(max_size=300) | st.integers(0, 70_000).map(bytes))
def test_frames_match_wsproto(payload: bytes) -> None:
    """Header and payload, for every length class (7, 16 and 64 bits), as a server's
    unmasked, final, binary frame."""
    expected = FrameProtocol(client=False, extensions=[]).send_data(payload, fin=True)
    assert _framed(payload) == expected
    assert _header(len(payload)) + payload == expected
