"""The load generator's scheduling policy, and the server's.

A benchmark's load generator stands for clients on other machines, but here it
shares the server's two cores. Under the normal policy, a server's write to a
sleeping client wakes the generator onto the server's own core, where the kernel
lets it preempt the server mid-broadcast: at 1,000 clients over 100 rooms,
`perf record -e sched:sched_switch` counted 9,730 preemptions of our server's event
loop in two runs, and a packet capture put 110 and 66 µs gaps after the first
write of a broadcast (see `server_fanout.py`, "Scheduling"). A remote client's
wake-up never takes the server's CPU.

So the generators run as batch tasks (`SCHED_BATCH`: the same CPU share at nice 0,
but no preemption when they wake), and the servers they start run under the normal
policy, as any server would.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

POLICIES = ("batch", "normal")
"""What `--generator-policy` takes."""


def add_option(parser: argparse.ArgumentParser) -> None:
    """`--generator-policy` (default batch), the same for every benchmark: pass what
    it parsed to `apply`."""
    parser.add_argument(
        "--generator-policy", choices=POLICIES, default="batch",
        help="this process's scheduling policy: batch (default, where the system has it), "
        "so that the clients it stands for do not preempt the server under test when "
        "its writes wake them (see benchmarks/harness/scheduling.py), or normal",
    )  # fmt: skip


_NORMAL_POLICY = (
    "import os, sys; os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0)); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)
"""`python -c` code that runs its arguments as a command under the normal policy."""


def apply(policy: str) -> None:
    """Run this process (and every thread it makes from now on) as `policy`: "batch"
    where the system has it, else nothing changes. Call before the event loop
    starts."""
    if policy == "batch" and hasattr(os, "SCHED_BATCH"):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def current() -> str:
    """This process's policy, as a results header names it."""
    if not hasattr(os, "sched_getscheduler"):
        return "the system's default"
    policy = os.sched_getscheduler(0)
    return {os.SCHED_BATCH: "batch", os.SCHED_OTHER: "normal"}.get(policy, str(policy))


def normal(argv: Sequence[str]) -> list[str]:
    """`argv` to start a server under the normal policy, whatever this process's is
    (a child inherits its parent's policy)."""
    if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) != os.SCHED_OTHER:
        return [sys.executable, "-c", _NORMAL_POLICY, *argv]
    return list(argv)
