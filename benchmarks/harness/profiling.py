"""Profiles: of our server, py-spy attached during a run or cProfile for a whole
process, each summarised as Markdown tables next to the raw output; and cProfile of
calls in the benchmark's own process."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.sampling import thread_cpu
from harness.servers import ServerProcess

REPO = Path(__file__).resolve().parents[2]


@dataclass(slots=True)
class Profiler:
    process: asyncio.subprocess.Process
    raw: Path
    summary: Path
    pid: int
    threads: dict[int, tuple[str, float]]
    started: float


async def start_profiler(server: ServerProcess, directory: Path, stem: str) -> Profiler | None:
    """py-spy, sampling our server's process for the rest of the run: raw stacks in
    `directory/stem.txt`, their summary in `directory/stem.md` when it stops."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    assert server.process is not None
    os.makedirs(directory, exist_ok=True)
    raw = directory / f"{stem}.txt"
    process = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(server.process.pid), "--rate", "200", "--format", "raw",
        "--output", str(raw), "--nonblocking",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.5)
    if process.returncode is not None:
        err = await process.stderr.read() if process.stderr else b""
        print(f"py-spy could not attach: {err.decode(errors='replace')}", file=sys.stderr)
        return None
    pid = server.process.pid
    return Profiler(
        process, raw, directory / f"{stem}.md", pid, thread_cpu(pid), time.perf_counter()
    )


async def stop_profiler(profiler: Profiler) -> None:
    elapsed = time.perf_counter() - profiler.started
    after = thread_cpu(profiler.pid)
    threads = [
        (name, cpu - profiler.threads.get(tid, (name, 0.0))[1], tid == profiler.pid)
        for tid, (name, cpu) in after.items()
    ]
    profiler.process.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(profiler.process.wait(), 30)
    except TimeoutError:
        profiler.process.kill()
        await profiler.process.wait()
    if profiler.raw.exists():
        cpu = [
            f"CPU by thread over the {elapsed:.1f} s profiled (from /proc, exact): "
            + ", ".join(
                f"{'event loop' if main else name} {seconds:.2f} s ({seconds / elapsed:.0%})"
                for name, seconds, main in sorted(threads, key=lambda t: -t[1])
                if seconds >= 0.01 or main
            )
            + ".",
        ]
        profiler.summary.write_text(summarise_profile(profiler.raw, cpu))


ENTRY_FRAMES = ("<frozen runpy>", "server/__main__.py", "anyio/_core/_eventloop.py",
                "AsyncIOBackend.run ", "Runner.run ", "threading.py")  # fmt: skip
"""Frames every stack passes through: left out of the cumulative table."""


def summarise_profile(raw: Path, preamble: Sequence[str] = (), top: int = 30) -> str:
    """Top functions by self and by cumulative (inclusive) samples, from py-spy's raw
    (collapsed) stacks: `frame;frame;...;leaf count` per line, root first. Frames are
    `function (file:line)`; they are counted per function here (lines merged)."""
    line_number = re.compile(r":\d+\)$")
    self_counts: Counter[str] = Counter()
    self_lines: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        functions = [line_number.sub(")", f) for f in frames]
        self_counts[functions[-1]] += count
        self_lines[frames[-1]] += count
        for function in set(functions):
            inclusive[function] += count
    share = max(1, total)
    lines = [
        f"# py-spy profile: {raw.name}",
        "",
        *preamble,
        "",
        f"{total} samples at 200 Hz over all threads (the event loop's and aiosqlite's "
        "worker; py-spy leaves out samples of threads it sees idle). Self samples in "
        "`Runner.run` are uvloop's own C loop. Caveat: SQLAlchemy runs its async calls in "
        "greenlets, and py-spy may show a greenlet's suspended stack (ending in "
        "`Connection._execute (aiosqlite/core.py:158)`, an `await`) for the event-loop "
        "thread while that thread is in fact elsewhere or idle; the CPU by thread above is "
        "the exact account.",
        "",
        "## Top functions by self time",
        "",
        "| self % | samples | function (file) |",
        "|---:|---:|---|",
    ]
    lines += [f"| {c / share:.1%} | {c} | `{f}` |" for f, c in self_counts.most_common(top)]
    lines += ["", "## Top lines by self time", "", "| self % | samples | line |", "|---:|---:|---|"]
    lines += [f"| {c / share:.1%} | {c} | `{f}` |" for f, c in self_lines.most_common(15)]
    lines += ["", "## Top functions by cumulative time", "",
              "| cumulative % | samples | function (file) |", "|---:|---:|---|"]  # fmt: skip
    kept = [(f, c) for f, c in inclusive.most_common() if not any(e in f for e in ENTRY_FRAMES)]
    lines += [f"| {c / share:.1%} | {c} | `{f}` |" for f, c in kept[:top]]
    return "\n".join(lines) + "\n"


def summarise_cprofile(path: Path, top: int = 30) -> str:
    """Top functions by own (tottime) and cumulative time, from cProfile's statistics."""
    import io
    import pstats

    out = [f"# cProfile: {path.name}", "",
           "Our server's whole process (start, the runs, shutdown), event-loop thread only; "
           "cProfile slows the process down, so shares matter, not absolute times.", ""]  # fmt: skip
    for key, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        buffer = io.StringIO()
        stats = pstats.Stats(str(path), stream=buffer)
        stats.sort_stats(key).print_stats(top)
        text = buffer.getvalue()
        body = text[text.find("   ncalls") :] if "   ncalls" in text else text
        out += [f"## Top {top} by {title}", "", "```", body.rstrip(), "```", ""]
    return "\n".join(out)


def cprofile_calls(targets: Sequence[tuple[str, Callable[[], object], str | None]]) -> str:
    """cProfile of each call in this process, a Markdown section per label: the top 14
    functions by own time and, when the target names a path pattern, the functions of
    files that match it by cumulative time; paths relative to site-packages and to the
    repository."""
    import cProfile
    import io
    import pstats
    import sysconfig

    prefixes = (sysconfig.get_paths()["purelib"] + "/", str(REPO) + "/")
    sections: list[str] = []
    for label, target, focus in targets:
        profiler = cProfile.Profile()
        profiler.enable()
        target()
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(14)
        if focus is not None:
            stats.sort_stats("cumulative").print_stats(focus, 12)
        lines = [
            line
            for line in out.getvalue().splitlines()
            if line.strip() and not line.startswith(("   Ordered by", "   List reduced"))
        ]
        for prefix in prefixes:
            lines = [line.replace(prefix, "") for line in lines]
        sections += [f"### {label}", "", "```", *lines, "```", ""]
    return "\n".join(sections)
