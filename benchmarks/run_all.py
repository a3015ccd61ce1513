"""Run every benchmark, one after the other, into one results folder.

    python benchmarks/run_all.py                      # everything, into benchmarks/results/
    python benchmarks/run_all.py --quick              # smoke runs, into a temporary folder
    python benchmarks/run_all.py --only server_fanout merge_throughput --out /tmp/r

Each script is run as its own process (the servers it starts are its own), with
`--output <folder>/<script>.md`; scripts that draw PNG plots put them next to
their table. One after the other, never side by side: these machines have two
cores, and a benchmark sharing them with another measures both. A script that
fails is reported, and the others still run; the exit status says whether all
passed. `summary.md` in the folder lists what ran, for how long, and its status.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent

SCRIPTS = [
    "merge_throughput",
    "append_run",
    "server_fanout",
    "cluster_fanout",
    "memory",
    "connection_churn",
    "fanout_latency",
    "awareness_fanout",
    "durable_storage",
    "permission_checks",
    "version_history",
]
"""In order: the comparisons with the peers first."""

QUICK = {
    "merge_throughput": ["--quick"],
    "append_run": ["--updates", "2000", "--runs", "1"],
    "server_fanout": ["--quick"],
    "cluster_fanout": ["--quick"],
    "memory": ["--quick"],
    "connection_churn": ["--clients", "100", "--documents", "10", "--rounds", "2"],
    "fanout_latency": ["--sizes", "10", "--runs", "1", "--edits", "50"],
    "awareness_fanout": ["--quick"],
    "durable_storage": ["--quick"],
    "permission_checks": ["--quick"],
    "version_history": ["--quick"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke runs of every script")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run only these scripts")
    parser.add_argument(
        "--out",
        type=Path,
        help="results folder (default: benchmarks/results/, or a temporary one with --quick)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out or (
        Path(tempfile.mkdtemp(prefix="collab-bench-")) if args.quick else HERE / "results"
    )
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    failed = 0
    for name in args.only or SCRIPTS:
        command = [sys.executable, str(HERE / f"{name}.py"), "--output", str(out / f"{name}.md")]
        if args.quick:
            command += QUICK[name]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        status = subprocess.run(command, cwd=REPO).returncode
        seconds = time.monotonic() - started
        failed += status != 0
        rows.append(f"| `{name}` | {seconds:.0f} | {'ok' if status == 0 else f'exit {status}'} |")
        print(
            f"== {name}: {'ok' if status == 0 else f'exit {status}'} in {seconds:.0f} s", flush=True
        )
    summary = [
        "# Benchmark run",
        "",
        f"- command: `python benchmarks/run_all.py {' '.join(argv or sys.argv[1:])}`".rstrip(),
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        "",
        "| script | seconds | status |",
        "|---|---:|---|",
        *rows,
        "",
    ]
    (out / "summary.md").write_text("\n".join(summary))
    print(f"results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
