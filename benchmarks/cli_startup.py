"""How fast the `vfmtok` command answers `--help` and refuses bad arguments (goal: under 2 s each).

Usage:
    .venv/bin/python benchmarks/cli_startup.py              # every subcommand, median of 3 runs each
    .venv/bin/python benchmarks/cli_startup.py --repeats 5

Each case runs `python -m vfmtok ...` in a fresh process (import time included, as a user sees it) in an empty
temporary folder and checks the exit code it expects. Prints one line per case (seconds, exit code) and the
slowest case against the 2 s goal. Heavy imports (torch, timm) must come after argument validation for a bad
argument to be refused quickly.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

GOAL_S = 2.0
COMMANDS = ("prepare-data", "train-tokenizer", "extract-tokens", "train-ar", "sample", "evaluate", "demo-data")
# (label, arguments, expected exit code): bad arguments a user types by mistake
BAD_ARGUMENTS = [
    ("prepare-data, missing SRC folder", ["prepare-data", "no_such_folder", "out"], 2),
    ("train-tokenizer, missing DATA", ["train-tokenizer", "no_such_folder"], 2),
    ("train-tokenizer, missing --encoder-weights", ["train-tokenizer", ".", "--encoder-weights", "no_such.pth"], 2),
    ("extract-tokens, missing DATA", ["extract-tokens", "no_such_folder", "out", "--tokenizer", "no_such_run"], 2),
    ("train-ar, missing token store", ["train-ar", "--tokens", "no_such_store"], 2),
    ("sample, negative class id", ["sample", "--class", "-3", "-n", "4"], 2),
    ("sample, unknown option", ["sample", "--clas", "3"], 2),
    ("sample, bad --top-p", ["sample", "--top-p", "0"], 2),
    ("evaluate, missing samples", ["evaluate", "samples.npz", "--ref", "ref.npz"], 2),
]


def run_case(args: list[str], cwd: str) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vfmtok", *args], cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    cases = [("vfmtok --help", ["--help"], 0)]
    cases += [(f"{cmd} --help", [cmd, "--help"], 0) for cmd in COMMANDS]
    cases += BAD_ARGUMENTS
    worst = ("", 0.0)
    with tempfile.TemporaryDirectory() as cwd:
        for label, args, expected in cases:
            times, codes = [], set()
            for _ in range(opts.repeats):
                seconds, code = run_case(args, cwd)
                times.append(seconds)
                codes.add(code)
            median = statistics.median(times)
            status = "ok" if codes == {expected} else f"UNEXPECTED exit {sorted(codes)} (expected {expected})"
            print(f"{label:<40} {median:6.2f} s  {status}")
            if median > worst[1]:
                worst = (label, median)
    verdict = "meets" if worst[1] < GOAL_S else "MISSES"
    print(f"slowest: {worst[0]} {worst[1]:.2f} s -> {verdict} the {GOAL_S:.0f} s goal ({worst[1] / GOAL_S:.2f}x)")


if __name__ == "__main__":
    main()
