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
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from sagan.cli import main as sagan_main

RESULTS = Path(__file__).with_name("RESULTS.md")


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or "CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


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
    row = (
        f"| {datetime.date.today()} | {device_name()} | torch {torch.__version__} | `sagan {shlex.join(cmd)}` | "
        f"{last['step']} | {wall / 60:.1f} min | {wall / last['step']:.2f} s | "
        f"d {last['d_loss']:.3f}, g {last['g_loss']:.3f} | {args.note} |"
    )
    if not RESULTS.exists():
        RESULTS.write_text("# Results\n\n")
    with open(RESULTS, "a") as f:
        f.write(row + "\n")
    print(row)
    print(f"final grid: {grid}")


if __name__ == "__main__":
    main()
