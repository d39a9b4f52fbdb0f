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


PYTHON = sys.executable
