"""Train a preset and record what it took: device, torch version, date, command, steps, wall
time and the final sample grid. Appends one row to benchmarks/RESULTS.md.

    python benchmarks/train_quality.py --preset demo --out runs/bench-demo
    python benchmarks/train_quality.py --preset cifar10 --data ../shared/data/cifar10/train.zip \\
        --out runs/bench-cifar10 --steps 20000

Extra arguments are passed to `sagan train` as dotted overrides (e.g. --train.batch_size 32).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from common import append_rows, device_name

from sagan.cli import main as sagan_main

HEADER = ["date", "device", "torch", "command", "steps", "wall time", "time/step", "final losses", "note"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--note", default="", help="free text for the results row")
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out} exists; a benchmark starts from scratch: choose a new --out")
    cmd = ["train", "--preset", args.preset, "--out", str(out)]
    if args.data:
        cmd += ["--data", args.data]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    cmd += extra
    t0 = time.perf_counter()
    rc = sagan_main(cmd)
    wall = time.perf_counter() - t0
    if rc:
        sys.exit(rc)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    grid = out / "samples" / "latest.png"
    row = [str(datetime.date.today()), device_name(), f"torch {torch.__version__}", f"`sagan {shlex.join(cmd)}`",
           str(last["step"]), f"{wall / 60:.1f} min", f"{wall / last['step']:.2f} s",
           f"d {last['d_loss']:.3f}, g {last['g_loss']:.3f}", args.note]
    append_rows("Training runs (`benchmarks/train_quality.py`)", HEADER, [row])
    print(" | ".join(row))
    print(f"final grid: {grid}")


if __name__ == "__main__":
    main()
