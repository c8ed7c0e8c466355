"""Start-up time of the command line: `comptune --help`, a sub-command's help and argument errors.

Each command runs in a fresh process (what a user waits for), `--repeats` times; the median wall
time is reported against the goal of 2 s. Only commands that stop before doing work are timed:
they must not import torch, transformers or peft.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 5]

Writes benchmarks/results/startup_time.json (config, versions, per-command times, whether torch was imported).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from comptune._io import versions, write_json_atomic

RESULTS = Path(__file__).parent / "results" / "startup_time.json"
GOAL_S = 2.0
COMMANDS = {
    "help": ["--help"],
    "tune --help": ["tune", "--help"],
    "tune without arguments (argument error)": ["tune"],
    "unknown command (argument error)": ["no-such-command"],
}
# the same entry point as the `comptune` script, plus a check of what it imported
PROBE = ("import sys; from comptune.cli import main\n"
         "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\nprint('torch imported:', 'torch' in sys.modules, file=sys.stderr)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rows = {}
    for name, argv in COMMANDS.items():
        times, imported = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            imported = "torch imported: True" in done.stderr
        rows[name] = {"argv": argv, "median_s": statistics.median(times), "all_s": times, "imported_torch": imported}
        print(f"{name:42s} {rows[name]['median_s']:.2f} s   imported torch: {imported}")
    worst = max(r["median_s"] for r in rows.values())
    write_json_atomic(args.out, {
        "benchmark": "comptune start-up: help and argument errors, fresh process each",
        "config": vars(args) | {"out": str(args.out), "python": sys.executable, "comptune_script": shutil.which("comptune")},
        "seed": None,
        "results": rows,
        "goal_s": GOAL_S,
        "goal_met": worst < GOAL_S and not any(r["imported_torch"] for r in rows.values()),
        "versions": versions(),
    })


if __name__ == "__main__":
    main()
