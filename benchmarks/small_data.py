"""Small-data training on real photographs, with and without differentiable augmentation.

CIFAR-10 reduced to 10% (5,000 training images, 500 of every class, a fixed random choice), a
CPU-sized conditional SAGAN (the cifar10 preset at width 16, one D step, batch 32, TTUR
2e-4/4e-4, betas (0, 0.999), EMA 0.999), trained to the same number of steps with and without
``train.diffaug color,translation,cutout``, two seeds each. Scored at every checkpoint by a
CIFAR-10 classifier trained for the purpose on the full training set (cached; its accuracy on
the test set is printed): class accuracy, FD and within-class spread against the 10,000 test
images (see ``classifier_scores.py``). Look at the grids too: ``OUT/<run>/samples/``.

    python benchmarks/small_data.py --cifar ../shared/data/cifar10 --out runs/small-data --steps 4000
    python benchmarks/small_data.py --cifar ../shared/data/cifar10 --out runs/small-data --score_only --record

Runs go two at a time, one thread each (``--jobs``). The GPU variant is the same command with
``--set model.g_ch=64 model.d_ch=32 train.n_dis=5 train.batch_size=64`` (the preset's size).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import classifier_scores as cs  # noqa: E402
from common import append_rows, command_line, print_table  # noqa: E402

import sagan  # noqa: E402

SECTION = "Small data: CIFAR-10 at 10% (`benchmarks/small_data.py`)"
POLICY = "color,translation,cutout"
CPU_SIZE = ["--model.ch", "16", "--train.n_dis", "1", "--train.batch_size", "32", "--train.lr_g", "2e-4",
            "--train.lr_d", "4e-4", "--train.betas_g", "[0.0, 0.999]", "--train.betas_d", "[0.0, 0.999]",
            "--train.ema_decay", "0.999", "--train.ema_start", "500"]


def make_subset(train_zip: Path, out: Path, per_class: int = 500, seed: int = 0) -> Path:
    """A zip of ``per_class`` images of every class of ``train_zip`` (stored, class folders kept)."""
    if out.exists():
        return out
    with zipfile.ZipFile(train_zip) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        by_class: dict[str, list[str]] = {}
        for n in names:
            parts = n.split("/")
            by_class.setdefault(parts[-2], []).append(n)
        rng = random.Random(seed)
        tmp = out.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
            for cls in sorted(by_class):
                for n in sorted(rng.sample(sorted(by_class[cls]), per_class)):
                    dst.writestr(f"{cls}/{Path(n).name}", z.read(n))
    tmp.replace(out)
    return out


def train_runs(subset: Path, out: Path, steps: int, seeds: list[int], jobs: int, extra: list[str]) -> list[Path]:
    """Train every (augmentation, seed) run, ``jobs`` at a time, one thread each."""
    runs, procs = [], []
    every = max(1, steps // 4)
    for seed in seeds:
        for aug in ("none", "diffaug"):
            run = out / f"{aug}-s{seed}"
            runs.append(run)
            if (run / "checkpoints" / f"ckpt_{steps:08d}.pt").exists():
                continue
            cmd = [sys.executable, "-m", "sagan", "train", "--preset", "cifar10", "--data", str(subset), "--out",
                   str(run), "--steps", str(steps), "--train.seed", str(seed), "--train.ckpt_every", str(every),
                   "--train.keep_ckpts", "10", "--train.sample_every", str(every), "--no_progress", *CPU_SIZE, *extra]
            if aug == "diffaug":
                cmd += ["--train.diffaug", POLICY]
            procs.append((subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                           stderr=open(out / f"{run.name}.log", "w")), run))
            print(f"started {run.name}: sagan {shlex.join(cmd[3:])}", file=sys.stderr)
            while len([p for p, _ in procs if p.poll() is None]) >= jobs:
                procs[[p.poll() for p, _ in procs].index(None)][0].wait()
    for p, run in procs:
        if p.wait() != 0:
            sys.exit(f"{run.name} failed; see {out / (run.name + '.log')}")
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar", type=Path, default=cs.DATA / "cifar10", help="folder with train.zip and test.zip")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--n", type=int, default=5000, help="samples scored per checkpoint")
    ap.add_argument("--set", nargs="*", default=[], help="extra sagan train options, e.g. --set model.ch=64")
    ap.add_argument("--score_only", action="store_true")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    extra = [a for kv in args.set for a in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
    subset = make_subset(args.cifar / "train.zip", args.out / "cifar10-5k.zip")
    net = cs.load_or_train(cs.CACHE / "cifar10_cnn32.pt", args.cifar / "train.zip", channels=3, epochs=5, flip=True)
    ref = cs.Reference(net, sagan.open_dataset(str(args.cifar / "test.zip"), 32, 3, progress=False))
    print(f"classifier accuracy on the CIFAR-10 test set: {ref.accuracy:.4f}", file=sys.stderr)
    runs = [args.out / f"{a}-s{s}" for s in args.seeds for a in ("none", "diffaug")] if args.score_only else \
        train_runs(subset, args.out, args.steps, args.seeds, args.jobs, extra)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows, command = [], command_line("small_data.py")
    every = max(1, args.steps // 4)
    for run in runs:
        for step in range(every, args.steps + 1, every):
            images, labels, at = cs.generate(str(run), args.n, 0, step=step)
            res = cs.score(net, ref, images, labels)
            rows.append(cs.row(run.name, at, res, len(labels), command, args.note))
            print(cs.line(run.name, at, res))
    print_table(cs.HEADER, rows)
    if args.record:
        append_rows(SECTION, cs.HEADER, rows)


if __name__ == "__main__":
    main()
