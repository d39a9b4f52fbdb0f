"""How long the command takes to answer, and how much memory sampling at evaluation scale takes.

    python benchmarks/startup.py --record                       # start-up of sagan --help and friends
    python benchmarks/startup.py --sample demo --n 50000 --record   # peak memory of sagan sample --n 50000

Each command runs in a fresh process (``--repeats`` times, the best and the median kept): wall
time and CPU time (user + system, from ``os.wait4``), and for sampling the peak resident memory
of the process. ``--python`` runs another interpreter or checkout (``PYTHONPATH`` to compare
versions).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from common import append_rows, command_line, device_name, print_table

SECTION = "Start-up and sampling memory (`benchmarks/startup.py`)"
HEADER = ["date", "device", "torch", "command measured", "wall s (best / median)", "CPU s (median)", "peak memory",
          "code", "benchmark command"]


TIME = "/usr/bin/time"  # GNU time: measures the peak of a process it forks itself


def run(cmd: list[str], env: dict) -> tuple[float, float, int | None]:
    """(wall seconds, CPU seconds, peak RSS bytes) of one fresh process. The peak comes from GNU
    time when it is installed: a child forked from this process (which has imported torch)
    would report this process's resident memory as its own high-water mark."""
    timed = os.path.exists(TIME)
    full = [TIME, "-f", "PEAK_KB %M", *cmd] if timed else cmd
    t0 = time.perf_counter()
    p = subprocess.Popen(full, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    peaks = [int(line.split()[1]) for line in err.splitlines() if line.startswith("PEAK_KB ")]
    return wall, usage.ru_utime + usage.ru_stime, peaks[-1] * 1024 if peaks else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--code", default="this checkout", help="what to call the code measured, for the table")
    ap.add_argument("--sample", default=None, help="measure sagan sample SOURCE --n N --out DIR instead")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.sample:
        out = tempfile.mkdtemp()
        cmds = [["-m", "sagan", "sample", args.sample, "--n", str(args.n), "--out", f"{out}/x", "--device", "cpu"]]
        repeats = 1
    else:
        cmds = [["-m", "sagan", "--help"], ["-m", "sagan", "--version"], ["-m", "sagan", "train", "--help"],
                ["-m", "sagan", "sample", "--help"], ["-c", "import sagan"]]
        repeats = args.repeats
    rows = []
    for cmd in cmds:
        results = []
        for _ in range(repeats):
            if args.sample:
                shutil.rmtree(f"{out}/x", ignore_errors=True)
            results.append(run([args.python, *cmd], env))
        walls, cpus, peaks = zip(*results)
        shown = " ".join(c if c != "-m" else "python -m" for c in cmd).replace("python -m sagan", "sagan")
        rows.append([str(datetime.date.today()), device_name(), f"torch {torch.__version__}", f"`{shown}`",
                     f"{min(walls):.2f} / {statistics.median(walls):.2f}", f"{statistics.median(cpus):.2f}",
                     f"{max(peaks) / 2**30:.2f} GiB" if args.sample and None not in peaks else "", args.code,
                     f"`{command_line('startup.py')}`"])
        peak = f"{max(peaks) / 2**20:.0f} MiB" if None not in peaks else "not measured (no GNU time)"
        print(f"{shown}: wall {min(walls):.2f} s best, CPU {statistics.median(cpus):.2f} s, peak {peak}",
              file=sys.stderr)
    if args.sample:
        shutil.rmtree(out, ignore_errors=True)
    print_table(HEADER, rows)
    if args.record:
        append_rows(SECTION, HEADER, rows)


if __name__ == "__main__":
    main()
