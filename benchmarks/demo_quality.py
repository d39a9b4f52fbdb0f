"""Score class-conditional MNIST generators (the demo preset) with a digit classifier trained
for the purpose.

The demo trains on the bundled MNIST test set; Inception features say little about 32x32
digits, so this benchmark trains a small CNN once on the MNIST *training* set (60,000 digits the
generator never saw; about 2.5 minutes on 2 CPU cores, cached in ``$SAGAN_CACHE/bench``) and
scores class accuracy, FD and within-class spread against the bundled digits as prepared for
training (see ``classifier_scores.py``).

    python benchmarks/demo_quality.py runs/demo                       # a run (its EMA generator)
    python benchmarks/demo_quality.py runs/demo --step 500 1000 1500  # checkpoints of a run
    python benchmarks/demo_quality.py runs/demo --standing_stats 16   # BN statistics re-estimated
    python benchmarks/demo_quality.py --samples peer/step_00001500/eval   # PNGs named *_class<k>.png
    python benchmarks/demo_quality.py runs/a runs/b --record --note "..."  # rows into RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import classifier_scores as cs  # noqa: E402
from common import append_rows, command_line, print_table  # noqa: E402

import sagan  # noqa: E402

DEFAULT_CLASSIFIER = cs.CACHE / "mnist_cnn32.pt"
DEFAULT_TRAIN = cs.DATA / "mnist" / "train.zip"
SECTION = "Demo quality (`benchmarks/demo_quality.py`)"


def classifier(path: Path = DEFAULT_CLASSIFIER, train: Path = DEFAULT_TRAIN) -> cs.SmallCNN:
    return cs.load_or_train(path, train, channels=1, epochs=3, flip=False)


def reference(net: cs.SmallCNN) -> cs.Reference:
    """The bundled digits at 32 px, as the demo trains on them."""
    return cs.Reference(net, sagan.open_dataset(None, 32, 1, progress=False, verbose=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="run directories (or checkpoints) to score")
    ap.add_argument("--samples", nargs="*", default=[], help="folders of *_class<k>.png samples to score")
    ap.add_argument("--step", type=int, nargs="*", default=None, help="score these checkpoint steps of each run")
    ap.add_argument("--n", type=int, default=5000, help="samples per run (spread evenly over the 10 classes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--raw", action="store_true", help="score the raw generator instead of its EMA")
    ap.add_argument("--standing_stats", type=int, default=0,
                    help="re-estimate the EMA generator's BN statistics from this many batches first")
    ap.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    ap.add_argument("--mnist_train", type=Path, default=DEFAULT_TRAIN)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--record", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    net = classifier(args.classifier, args.mnist_train)
    ref = reference(net)
    print(f"classifier accuracy on the real digits (bundled test set): {ref.accuracy:.4f}", file=sys.stderr)
    rows, command = [], command_line("demo_quality.py")
    jobs = [(r, s) for r in args.runs for s in (args.step or [None])] + [(s, "samples") for s in args.samples]
    for what, step in jobs:
        if step == "samples":
            images, labels = cs.load_samples(Path(what))
            at = ""
        else:
            images, labels, at = cs.generate(what, args.n, args.seed, args.raw, args.standing_stats, step)
        res = cs.score(net, ref, images, labels)
        tag = what + (" (raw G)" if args.raw else "") + (f" (standing stats {args.standing_stats})"
                                                          if args.standing_stats and step != "samples" else "")
        rows.append(cs.row(tag, at, res, len(labels), command, args.note))
        print(cs.line(tag, at, res))
    print_table(cs.HEADER, rows)
    if args.record:
        append_rows(SECTION, cs.HEADER, rows)


if __name__ == "__main__":
    main()
