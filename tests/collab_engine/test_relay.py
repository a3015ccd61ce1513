"""The relay messages: every one survives encode and decode; anything else is a
`ProtocolError`, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collab_engine.errors import ProtocolError
from collab_engine.identity import Identity
from collab_engine.permissions import Credentials, Role
from collab_engine.relay import Deliver, Frame, Leave, Open, Shut, decode, encode

ids = st.integers(min_value=0, max_value=2**53 - 1)
texts = st.text(max_size=40)
credentials = st.none() | st.builds(
    Credentials,
    identity=st.builds(
        Identity,
        user_id=texts,
        name=texts,
        groups=st.lists(texts, max_size=3).map(tuple),
        anonymous=st.booleans(),
    ),
    role=st.sampled_from(Role),
    documents=texts,
    expires_at=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    admin=st.booleans(),
)
messages = st.one_of(
    st.builds(Open, ids, texts, credentials, texts),
    st.builds(Frame, ids, st.binary(max_size=200)),
    st.builds(Leave, ids),
    st.builds(
        Deliver,
        st.lists(ids, max_size=5).map(tuple),
        st.lists(st.binary(max_size=50), max_size=5).map(tuple),
    ),
    st.builds(Shut, ids, st.integers(min_value=1000, max_value=4999), texts),
)


@given(messages)
def test_every_message_round_trips(message: object) -> None:
    assert decode(encode(message)) == message  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_anything_else_is_a_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        pass


def test_trailing_bytes_and_unknown_types_are_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(encode(Leave(1)) + b"\x00")
    with pytest.raises(ProtocolError):
        decode(b"\x09\x01")
