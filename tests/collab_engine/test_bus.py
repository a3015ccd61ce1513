"""The bus's bookkeeping (`Sequencing`): whatever batches a link loses, the receiver
notices at the next one; on a link that loses nothing it notices nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from collab_engine.bus import Sequencing


@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(1, 3))
def test_a_loss_is_noticed_at_the_next_batch_and_only_then(
    delivered: list[bool], senders: int
) -> None:
    """Each sender sends len(delivered) batches to one receiver; batch i of every
    sender is lost unless delivered[i]. The receiver's check fails exactly for the
    delivered batches that follow a loss (or open the link, when the first is lost)."""
    sending = {f"s{n}": Sequencing() for n in range(senders)}
    receiver = Sequencing()
    for name, sender in sending.items():
        lost_since_last = False
        for index, arrives in enumerate(delivered):
            stamp = sender.stamp("r")
            if not arrives:
                lost_since_last = True
                continue
            intact = receiver.check(name, stamp)
            assert intact is not lost_since_last, (index, delivered)
            lost_since_last = False


def test_a_new_generation_is_a_reset_unless_it_was_announced() -> None:
    sender, receiver = Sequencing(), Sequencing()
    assert receiver.check("s", sender.stamp("r"))
    sender.restart("r")  # lost what it had queued
    assert not receiver.check("s", sender.stamp("r"))
    assert receiver.check("s", sender.stamp("r"))
    receiver.follow("s", sender.announce("r"))  # a reset entry, then its batches
    assert receiver.check("s", sender.stamp("r"))
