"""The bookkeeping of the bus's links, without a transport: the receiver's verdicts on
any pattern of losses, restarts and interleavings, and two nodes keeping the reset rules
over lossy streams (every loss heard on both sides, nothing heard on a clean run)."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from collab_engine.bus import Continuity, Links, Numbering, Stamp, Verdict


def counter() -> itertools.count[int]:
    return itertools.count(1)


# -- the receiver's verdicts ------------------------------------------------------------

SENDERS = ["a", "b", "c"]

STREAMS = st.lists(
    st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40),  # (restart first, lost)
    min_size=len(SENDERS),
    max_size=len(SENDERS),
)


@dataclass(frozen=True)
class _Sent:
    sender: str
    stamp: Stamp
    lost: bool


def _streams(
    plan: list[list[tuple[bool, bool]]], restarts: bool, losses: bool
) -> list[list[_Sent]]:
    numbering = Numbering(counter().__next__)
    streams = []
    for sender, entries in zip(SENDERS, plan, strict=True):
        stream = []
        for restart, lost in entries:
            if restart and restarts:
                numbering.restart(sender)
            stream.append(_Sent(sender, numbering.stamp(sender), lost and losses))
        streams.append(stream)
    return streams


def _interleave(streams: list[list[_Sent]], order: list[int]) -> list[_Sent]:
    """The entries of every stream, each stream in its own order, senders mixed as
    `order` says."""
    queues = [deque(stream) for stream in streams]
    merged: list[_Sent] = []
    for pick in itertools.chain(order, itertools.cycle(range(len(queues)))):
        if not any(queues):
            return merged
        queue = queues[pick % len(queues)]
        if queue:
            merged.append(queue.popleft())
    raise AssertionError("unreachable")


@settings(max_examples=300, deadline=None)
@given(STREAMS, st.lists(st.integers(0, 2), max_size=200), st.booleans(), st.booleans())
def test_every_loss_is_detected_and_nothing_else(
    plan: list[list[tuple[bool, bool]]], order: list[int], restarts: bool, losses: bool
) -> None:
    """Any pattern of losses and generation restarts, senders interleaved in any way:
    an entry is judged IN_ORDER exactly when nothing of its sender was lost since the
    entry before it and it does not begin a restarted generation; GAP or JOINED exactly
    when an earlier entry of its own generation was lost (the sender does not know);
    JOINED only for a sender's first entry seen. A clean stream is all IN_ORDER."""
    continuity = Continuity()
    previous: dict[str, _Sent] = {}
    missing: dict[str, list[_Sent]] = {sender: [] for sender in SENDERS}
    for sent in _interleave(_streams(plan, restarts, losses), order):
        if sent.lost:
            missing[sent.sender].append(sent)
            continue
        verdict = continuity.check(sent.sender, sent.stamp)
        lost = missing[sent.sender]
        unknown_to_sender = [m for m in lost if m.stamp.generation == sent.stamp.generation]
        if not lost and not sent.stamp.reset:
            assert verdict is Verdict.IN_ORDER
        elif unknown_to_sender:
            first = sent.sender not in previous
            assert verdict is (Verdict.JOINED if first else Verdict.GAP)
        else:
            assert verdict is Verdict.RESTARTED
        if not restarts and not losses:
            assert verdict is Verdict.IN_ORDER
        previous[sent.sender] = sent
        missing[sent.sender] = []


def test_a_new_generation_always_differs_from_the_old() -> None:
    """Even from a source that repeats itself."""
    values = iter([7, 7, 7, 8])
    numbering = Numbering(lambda: next(values))
    first = numbering.stamp("b")
    numbering.restart("b")
    second = numbering.stamp("b")
    assert (first.generation, second.generation) == (7, 8)
    assert second == Stamp(8, 1, reset=True)
    assert numbering.stamp("b") == Stamp(8, 2)
    assert not numbering.unannounced


def test_a_restarted_link_is_owed_an_entry_until_one_is_stamped() -> None:
    numbering = Numbering(counter().__next__)
    numbering.restart("b")
    assert numbering.unannounced == {"b"}
    numbering.stamp("b")
    assert numbering.unannounced == set()


# -- two nodes keeping the reset rules over lossy streams -------------------------------


@dataclass
class _Node:
    """A node as the Redis bus runs it: a queue to its peer, `Links`, and a log."""

    name: str
    peer: str
    links: Links
    capacity: int
    queue: list[int] = field(default_factory=list)
    sent: dict[int, int] = field(default_factory=dict)
    """Body -> when it was sent."""
    delivered: list[tuple[int, int]] = field(default_factory=list)
    """(when, body) of each body received from the peer."""
    resets: list[tuple[int, bool]] = field(default_factory=list)
    """(when, whether the node began a new generation with it)."""

    def reset(self, now: int, restarted: bool) -> None:
        self.resets.append((now, restarted))


class _Cluster:
    """Two nodes, a stream each way, a clock that ticks with every event."""

    def __init__(self, capacity: int) -> None:
        generations = counter()
        self.nodes = {
            name: _Node(name, peer, Links(generations.__next__), capacity)
            for name, peer in (("a", "b"), ("b", "a"))
        }
        self.streams: dict[str, deque[tuple[str, Stamp, list[int]]]] = {"a": deque(), "b": deque()}
        self.bodies = itertools.count(1)
        self.now = 0

    def tick(self) -> int:
        self.now += 1
        return self.now

    def send(self, node: _Node) -> None:
        body = next(self.bodies)
        node.sent[body] = self.tick()
        if len(node.queue) >= node.capacity:
            node.queue.clear()
            node.links.restart(node.peer)
            node.reset(self.tick(), True)
        else:
            node.queue.append(body)

    def flush(self, node: _Node, failed: bool = False, landed: bool = False) -> None:
        if not node.queue and node.peer not in node.links.unannounced:
            return
        entry = (node.name, node.links.stamp(node.peer), list(node.queue))
        node.queue.clear()
        if not failed or landed:
            self.streams[node.peer].append(entry)
        if failed:
            node.links.restart(node.peer)
            if entry[2]:
                node.reset(self.tick(), True)

    def deliver(self, node: _Node, lose: bool = False) -> None:
        stream = self.streams[node.name]
        if not stream:
            return
        sender, stamp, bodies = stream.popleft()
        if lose:
            return
        verdict = node.links.arrived(sender, stamp)
        if verdict is not Verdict.IN_ORDER:
            restarted = verdict in (Verdict.GAP, Verdict.JOINED)
            if restarted:
                node.queue.clear()
            node.reset(self.tick(), restarted)
        for body in bodies:
            node.delivered.append((self.tick(), body))

    def reconnect(self, node: _Node) -> None:
        for _ in node.links.reconnected():
            node.queue.clear()
            node.reset(self.tick(), True)

    def settle(self) -> int:
        """No more faults: flush and deliver until nothing is owed or in flight, each
        node sending one more body per round (a loss shows at the next entry); returns
        the rounds it took to end with a round without resets."""
        for rounds in range(1, 20):
            before = sum(len(node.resets) for node in self.nodes.values())
            for node in self.nodes.values():
                self.send(node)
            for _ in range(10):
                for node in self.nodes.values():
                    self.flush(node)
                for node in self.nodes.values():
                    while self.streams[node.name]:
                        self.deliver(node)
            if sum(len(node.resets) for node in self.nodes.values()) == before:
                return rounds
        raise AssertionError("the links did not settle")


STEPS = ["send", "send", "send", "flush", "flush", "deliver", "deliver"]
FAULTS = ["lose", "fail", "fail-landed", "reconnect"]


def _ops(steps: list[str]) -> st.SearchStrategy[list[tuple[str, str]]]:
    return st.lists(st.tuples(st.sampled_from(steps), st.sampled_from(["a", "b"])), max_size=80)


def _run(cluster: _Cluster, ops: list[tuple[str, str]]) -> None:
    for op, name in ops:
        node = cluster.nodes[name]
        if op == "send":
            cluster.send(node)
        elif op == "flush":
            cluster.flush(node)
        elif op == "deliver":
            cluster.deliver(node)
        elif op == "lose":
            cluster.deliver(node, lose=True)
        elif op.startswith("fail"):
            cluster.flush(node, failed=True, landed=op == "fail-landed")
        else:
            cluster.reconnect(node)
    assert cluster.settle() <= 4


def _between(resets: list[tuple[int, bool]], start: int, end: int) -> bool:
    return any(start < when < end for when, _ in resets)


@settings(max_examples=1000, deadline=None)
@given(_ops(STEPS + FAULTS), st.integers(1, 4))
def test_two_nodes_hear_every_loss_on_both_sides(ops: list[tuple[str, str]], capacity: int) -> None:
    """Two nodes send to each other over streams that lose entries (a reader left
    behind), through writes that fail (the entry lost, or written after all), with
    queues that overflow and readers that are cut off. Once the faults stop the links
    settle, and:
    - bodies arrive in the order they were sent;
    - a body that did not arrive is reported by its receiver where it is missing
      (a reset between the bodies around it) and by its sender after it sent it;
    - after a reset that began a new generation, nothing the sender sends later is
      received before the receiver has reset too."""
    cluster = _Cluster(capacity)
    _run(cluster, ops)
    for sender in cluster.nodes.values():
        receiver = cluster.nodes[sender.peer]
        received = [body for _, body in receiver.delivered]
        assert received == sorted(received)
        assert set(received) <= set(sender.sent)
        at = {body: when for when, body in receiver.delivered}
        marks = [(0, 0), *receiver.delivered]
        for (before, first), (after, second) in itertools.pairwise(marks):
            if any(first < body < second and body not in at for body in sender.sent):
                assert _between(receiver.resets, before, after), (first, second)
        for body, when in sender.sent.items():
            if body not in at:
                assert _between(sender.resets, when, cluster.now + 1), body
        for reset_at, restarted in sender.resets:
            if not restarted:
                continue
            earlier = [at[b] for b, when in sender.sent.items() if when < reset_at and b in at]
            for body, when in sender.sent.items():
                if when > reset_at and body in at:
                    assert _between(receiver.resets, max(earlier, default=0), at[body])


@settings(max_examples=200, deadline=None)
@given(_ops(STEPS))
def test_without_a_fault_nobody_hears_a_reset(ops: list[tuple[str, str]]) -> None:
    """Queues large enough, nothing lost, no write failed, no reader cut off: every body
    arrives, in order, and no reset is heard."""
    cluster = _Cluster(capacity=len(ops) + 2)
    _run(cluster, ops)
    for sender in cluster.nodes.values():
        received = [body for _, body in cluster.nodes[sender.peer].delivered]
        assert received == sorted(sender.sent)
        assert not sender.resets
