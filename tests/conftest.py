import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def write_class_folder(root: Path, classes=("circle", "square"), per_class=16, size=32, seed=0) -> Path:
    """A tiny labelled image folder: bright shapes on dark backgrounds, one shape per class."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.zeros((size, size, 3), dtype=np.uint8)
            c = rng.integers(8, size - 8, 2)
            yy, xx = np.mgrid[:size, :size]
            if k % 2 == 0:
                mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < 36
            else:
                mask = (abs(yy - c[0]) < 5) & (abs(xx - c[1]) < 5)
            img[mask] = (200, 80 + 60 * k, 40)
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return write_class_folder(tmp_path / "shapes")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Reference statistics go to a temporary cache, never the user's ~/.cache."""
    monkeypatch.setenv("SAGAN_CACHE", str(tmp_path_factory.getbasetemp() / "sagan-cache"))


PYTHON = sys.executable


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny trained run directory (2 steps), shared by tests that only read it."""
    from sagan.config import RunConfig
    from sagan.training import Trainer

    root = tmp_path_factory.mktemp("trained")
    data = write_class_folder(root / "shapes")
    cfg = RunConfig(data=str(data), steps=2)
    m, t = cfg.model, cfg.train
    m.resolution, m.z_dim, m.g_ch, m.d_ch, m.g_attn, m.d_attn = 32, 8, 4, 4, [16], [16]
    t.batch_size, t.log_every, t.sample_every, t.ckpt_every = 8, 1, 2, 2
    cfg.dataset.workers = 0
    Trainer(cfg, root / "run", progress=False).fit()
    return root / "run"
