"""Scores of class-conditional generators from a classifier trained for the purpose, shared by
``demo_quality.py`` (MNIST digits) and ``small_data.py`` (CIFAR-10 photographs).

* **class accuracy**: the share of samples that the classifier assigns to the class they were
  drawn for (per class too: the weakest row of a grid is the lowest of these);
* **FD**: the Frechet distance between generated and real images in the classifier's 128-d
  penultimate features (FID's formula, torch-fidelity's implementation);
* **spread**: the within-class feature spread of generated images relative to real ones, per
  class ``sqrt(mean ||f - mean_c||^2)`` of generated over real, averaged over classes (1.0: as
  varied as real images; low values mean mode collapse).

The classifiers' weights are cached outside the package (``$SAGAN_CACHE/bench``).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import sagan
from sagan.images import to_model_range
from sagan.metrics import fid_from_features

CACHE = Path(os.environ.get("SAGAN_CACHE", "~/.cache/torch-sagan")).expanduser() / "bench"
DATA = Path(os.environ.get("SAGAN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
HEADER = ["date", "device", "torch", "what", "step", "samples", "class accuracy", "weakest class", "FD", "spread",
          "command", "note"]


class SmallCNN(nn.Module):
    """A small CNN for 32x32 images in [-1, 1]; ``features`` is the 128-d layer before the head."""

    def __init__(self, channels: int = 1, width: int = 32, classes: int = 10):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * 16, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _jitter(x: torch.Tensor, g: torch.Generator, flip: bool) -> torch.Tensor:
    """Random translations of up to 2 pixels (and horizontal flips), so the classifier does not
    depend on exact framing."""
    pad = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
    x = pad[:, :, dy : dy + 32, dx : dx + 32]
    if flip:
        mask = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
    return x


def train_classifier(data, epochs: int, flip: bool, width: int = 32, seed: int = 0) -> SmallCNN:
    """Train on an :class:`sagan.data.ImageData` cached in memory (uint8 images, labels)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = SmallCNN(data.channels, width, data.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = epochs * (len(data) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    t0 = time.perf_counter()
    for ep in range(epochs):
        perm = torch.randperm(len(data), generator=g)
        for i in range(len(data) // 128):
            idx = perm[i * 128 : (i + 1) * 128]
            loss = F.cross_entropy(net(_jitter(to_model_range(data.images[idx]), g, flip)), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"classifier epoch {ep + 1}/{epochs}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr)
    return net.eval()


def load_or_train(path: Path, train_path: Path, channels: int, epochs: int, flip: bool, width: int = 32) -> SmallCNN:
    """The cached classifier at ``path``, trained on ``train_path`` first when there is none."""
    net = SmallCNN(channels, width)
    if path.exists():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    if not train_path.exists():
        sys.exit(f"no classifier at {path} and no training data at {train_path}; pass the data's path")
    data = sagan.open_dataset(str(train_path), 32, channels, progress=False)
    net = train_classifier(data, epochs, flip, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    print(f"saved the classifier to {path}", file=sys.stderr)
    return net


@torch.no_grad()
def embed(net: SmallCNN, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (float64) and predicted classes of images in [-1, 1]."""
    feats, preds = [], []
    for i in range(0, len(images), batch):
        f = net.features(images[i : i + batch].float())
        feats.append(f)
        preds.append(net.head(f).argmax(1))
    return torch.cat(feats).double(), torch.cat(preds)


def spread(f: torch.Tensor) -> float:
    return float((f - f.mean(0)).pow(2).sum(1).mean().sqrt())


class Reference:
    """Features of real images (an :class:`sagan.data.ImageData`), and the classifier's accuracy on them."""

    def __init__(self, net: SmallCNN, data):
        self.feats, preds = embed(net, to_model_range(data.images))
        self.labels = data.labels
        self.accuracy = float((preds == self.labels).float().mean())
        self.spread = [spread(self.feats[self.labels == k]) for k in range(data.num_classes)]


def score(net: SmallCNN, ref: Reference, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The three scores of generated ``images`` in [-1, 1] drawn for classes ``labels``."""
    feats, preds = embed(net, images)
    k = len(ref.spread)
    per_class = [float((preds[labels == c] == c).float().mean()) for c in range(k)]
    return {
        "accuracy": float((preds == labels).float().mean()),
        "per_class": per_class,
        "weakest": int(np.argmin(per_class)),
        "fd": fid_from_features(feats, ref.feats),
        "spread": float(np.mean([spread(feats[labels == c]) / ref.spread[c] for c in range(k)])),
    }


_CLASS = re.compile(r"_class(\d+)\.png$")


def load_samples(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """PNGs named ``*_class<k>.png`` (sagan sample's and peer_biggan.py's layout)."""
    from PIL import Image

    imgs, labels = [], []
    for p in sorted(folder.iterdir()):
        m = _CLASS.search(p.name)
        if m:
            im = Image.open(p)
            a = np.asarray(im.convert("L" if im.mode in ("L", "1", "P") else "RGB"), dtype=np.uint8)
            t = torch.from_numpy(a.copy())
            imgs.append(t[None] if t.ndim == 2 else t.permute(2, 0, 1))
            labels.append(int(m.group(1)))
    if not imgs:
        sys.exit(f"no *_class<k>.png files in {folder}")
    return to_model_range(torch.stack(imgs)), torch.tensor(labels)


def generate(run: str, n: int, seed: int, raw: bool = False, standing: int = 0,
             step: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``n`` samples, spread evenly over the classes, of a run's EMA generator (or raw, or at a
    given checkpoint step)."""
    from sagan.loading import generator_from_checkpoint
    from sagan.rundir import RunDir
    from sagan.sources import resolve_source

    src = Path(run)
    if step is not None:
        src = RunDir(src).checkpoints / f"ckpt_{step:08d}.pt"
    _, state = resolve_source(src, remote=False).checkpoint()
    G = generator_from_checkpoint(state, ema=not raw)
    if standing:
        sagan.standing_stats(G, standing, batch_size=state["config"]["train"]["batch_size"], seed=seed + 1)
    G.eval()
    labels = torch.arange(n) % G.num_classes
    return G.sample(n, y=labels, seed=seed), labels, int(state["step"])


def row(what: str, step, res: dict, n: int, command: str, note: str) -> list[str]:
    import datetime

    from common import device_name

    return [str(datetime.date.today()), device_name(), f"torch {torch.__version__}", what, str(step), str(n),
            f"{res['accuracy']:.3f}", f"{res['weakest']} ({res['per_class'][res['weakest']]:.2f})",
            f"{res['fd']:.2f}", f"{res['spread']:.3f}", f"`{command}`", note]


def line(what: str, step, res: dict) -> str:
    return (f"{what} step {step}: accuracy {res['accuracy']:.3f}, per class "
            + " ".join(f"{a:.2f}" for a in res["per_class"]) + f", FD {res['fd']:.2f}, spread {res['spread']:.3f}")
