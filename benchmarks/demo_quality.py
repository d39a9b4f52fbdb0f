"""Score class-conditional MNIST generators with a classifier trained for the purpose.

The demo preset trains on the bundled MNIST test set; Inception features say little about
32x32 digits, so this benchmark trains a small CNN once on the MNIST *training* set (60,000
digits the generator never saw; its weights are cached outside the package) and scores:

* **class accuracy**: the share of samples that the classifier assigns to the class they were
  drawn for (per class too: the weakest row of the demo grid is the lowest of these);
* **FD**: the Frechet distance between generated and real digits (the bundled test set, as
  prepared for training) in the classifier's 128-d penultimate features, like FID;
* **spread**: the within-class feature spread of the generated digits relative to real ones,
  per class ``sqrt(mean ||f - mean_c||^2)`` of generated over real, averaged over classes
  (1.0: as varied as real digits; low values mean mode collapse).

    python benchmarks/demo_quality.py runs/demo                       # a run (its EMA generator)
    python benchmarks/demo_quality.py runs/demo --standing_stats 16   # BN statistics re-estimated
    python benchmarks/demo_quality.py --samples peer_out/step_1500    # PNGs named *_class<k>.png
    python benchmarks/demo_quality.py runs/a runs/b --record --note "..."   # rows into RESULTS.md

Samples written by ``sagan sample RUN --n N --out DIR`` or by ``benchmarks/peer_biggan.py`` have
that layout. The classifier trains in about a minute on 2 CPU cores from
``$SAGAN_DATA/mnist/train.zip`` (``--mnist_train``) and is cached in ``--classifier``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import append_rows, command_line, device_name, print_table  # noqa: E402

import sagan  # noqa: E402
from sagan.data import open_dataset, to_model_range  # noqa: E402
from sagan.metrics import fid_from_features  # noqa: E402

DEFAULT_CLASSIFIER = Path(os.environ.get("SAGAN_CACHE", "~/.cache/torch-sagan")).expanduser() / "bench" / "mnist_cnn32.pt"
DEFAULT_TRAIN = Path(os.environ.get("SAGAN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "mnist" / "train.zip"
HEADER = ["date", "device", "torch", "what", "step", "samples", "class accuracy", "weakest class", "FD", "spread",
          "command", "note"]


class DigitNet(nn.Module):
    """A small CNN for 32x32 grayscale digits in [-1, 1]; ``features`` is the 128-d layer
    before the classifier."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translations of up to 2 pixels (zero padding at -1), so the classifier does not
    depend on exact centring."""
    pad = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
    return pad[:, :, dy : dy + 32, dx : dx + 32]


def train_classifier(train_path: Path, epochs: int = 3, seed: int = 0) -> DigitNet:
    data = open_dataset(str(train_path), 32, 1, progress=False)
    if data.num_classes != 10:
        sys.exit(f"{train_path} should hold the 10 MNIST classes, found {data.num_classes}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = DigitNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * (len(data) // 128))
    x_all, y_all = data.images, data.labels
    t0 = time.perf_counter()
    for ep in range(epochs):
        perm = torch.randperm(len(data), generator=g)
        for i in range(len(data) // 128):
            idx = perm[i * 128 : (i + 1) * 128]
            x = _shift(to_model_range(x_all[idx]), g)
            loss = F.cross_entropy(net(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"classifier epoch {ep + 1}/{epochs}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr)
    return net.eval()


def load_classifier(path: Path = DEFAULT_CLASSIFIER, train_path: Path = DEFAULT_TRAIN) -> DigitNet:
    """The cached classifier, trained first when the cache is empty."""
    net = DigitNet()
    if path.exists():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    if not train_path.exists():
        sys.exit(f"no classifier at {path} and no MNIST training zip at {train_path}; pass --mnist_train")
    net = train_classifier(train_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    print(f"saved the classifier to {path}", file=sys.stderr)
    return net


@torch.no_grad()
def embed(net: DigitNet, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and predicted classes of images in [-1, 1], (N, 1, 32, 32)."""
    feats, preds = [], []
    for i in range(0, len(images), batch):
        f = net.features(images[i : i + batch].float())
        feats.append(f)
        preds.append(net.head(f).argmax(1))
    return torch.cat(feats).double(), torch.cat(preds)


def _spread(f: torch.Tensor) -> float:
    return float((f - f.mean(0)).pow(2).sum(1).mean().sqrt())


class Reference:
    """Features of the real digits the demo trains on (the bundled MNIST test set at 32 px)."""

    def __init__(self, net: DigitNet):
        data = open_dataset(None, 32, 1, progress=False, verbose=False)
        self.feats, preds = embed(net, to_model_range(data.images))
        self.labels = data.labels
        self.accuracy = float((preds == self.labels).float().mean())
        self.spread = [_spread(self.feats[self.labels == k]) for k in range(10)]


def score(net: DigitNet, ref: Reference, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The three scores of generated ``images`` in [-1, 1] drawn for classes ``labels``."""
    feats, preds = embed(net, images)
    per_class = [float((preds[labels == k] == k).float().mean()) for k in range(10)]
    ratio = [_spread(feats[labels == k]) / ref.spread[k] for k in range(10)]
    return {
        "accuracy": float((preds == labels).float().mean()),
        "per_class": per_class,
        "weakest": int(np.argmin(per_class)),
        "fd": fid_from_features(feats, ref.feats),
        "spread": float(np.mean(ratio)),
    }


_CLASS = re.compile(r"_class(\d+)\.png$")


def load_samples(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """PNGs named ``*_class<k>.png`` (sagan sample's and peer_biggan.py's layout)."""
    from PIL import Image

    imgs, labels = [], []
    for p in sorted(folder.iterdir()):
        m = _CLASS.search(p.name)
        if m:
            a = np.asarray(Image.open(p).convert("L"), dtype=np.uint8)
            imgs.append(torch.from_numpy(a.copy())[None])
            labels.append(int(m.group(1)))
    if not imgs:
        sys.exit(f"no *_class<k>.png files in {folder}")
    return to_model_range(torch.stack(imgs)), torch.tensor(labels)


def generate(run: str, n: int, seed: int, raw: bool = False, standing: int = 0,
             step: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``n`` samples (n/10 per class) of a run's EMA generator (or raw, or at a given step)."""
    from sagan.sampling import _resolve_checkpoint, generator_from_checkpoint

    src = Path(run)
    if step is not None:
        src = src / "checkpoints" / f"ckpt_{step:08d}.pt"
    _, state = _resolve_checkpoint(src)
    G = generator_from_checkpoint(state, ema=not raw)
    if standing:
        sagan.standing_stats(G, standing, batch_size=state["config"]["train"]["batch_size"], seed=seed + 1)
    G.eval()
    labels = torch.arange(n) % 10
    return G.sample(n, y=labels, seed=seed), labels, int(state["step"])


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
    net = load_classifier(args.classifier, args.mnist_train)
    ref = Reference(net)
    print(f"classifier accuracy on the real digits (bundled test set): {ref.accuracy:.4f}", file=sys.stderr)
    rows = []
    jobs = [(r, s) for r in args.runs for s in (args.step or [None])] + [(s, "samples") for s in args.samples]
    for what, step in jobs:
        if step == "samples":
            images, labels = load_samples(Path(what))
            at = ""
        else:
            images, labels, at = generate(what, args.n, args.seed, args.raw, args.standing_stats, step)
        res = score(net, ref, images, labels)
        tag = what + (" (raw G)" if args.raw else "") + (f" (standing stats {args.standing_stats})"
                                                          if args.standing_stats and step != "samples" else "")
        rows.append([str(datetime.date.today()), device_name(), f"torch {torch.__version__}", tag, str(at),
                     str(len(labels)), f"{res['accuracy']:.3f}",
                     f"{res['weakest']} ({res['per_class'][res['weakest']]:.2f})", f"{res['fd']:.2f}",
                     f"{res['spread']:.3f}", f"`{command_line('demo_quality.py')}`", args.note])
        print(f"{tag} step {at}: accuracy {res['accuracy']:.3f}, per class "
              + " ".join(f"{a:.2f}" for a in res["per_class"]) + f", FD {res['fd']:.2f}, spread {res['spread']:.3f}")
    print_table(HEADER, rows)
    if args.record:
        append_rows("Demo quality (`benchmarks/demo_quality.py`)", HEADER, rows)


if __name__ == "__main__":
    main()
