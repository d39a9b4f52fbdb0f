"""Checks on the real datasets. Opt in with: SAGAN_DATA=../shared/data pytest -m realdata"""

import os
from pathlib import Path

import pytest
import torch

from sagan.data import open_dataset

pytestmark = pytest.mark.realdata
ROOT = Path(os.environ.get("SAGAN_DATA", "/nonexistent"))
need = pytest.mark.skipif(not ROOT.exists(), reason="set SAGAN_DATA to the folder holding cifar10/, mnist/, celeba-10k.zip")


@need
def test_mnist_png_zip_matches_the_idx_files():
    # the two copies are independent encodings of the same test set (PNG in a zip, IDX bytes)
    png = open_dataset(ROOT / "mnist" / "test.zip", 32, workers=2, verbose=False)
    idx = open_dataset(ROOT / "mnist", 32, split="test", verbose=False)
    assert len(png) == len(idx) == 10000 and png.class_names == [str(i) for i in range(10)]
    assert torch.equal(torch.bincount(png.labels), torch.bincount(idx.labels))


@need
def test_cifar10_zip_has_official_classes():
    d = open_dataset(ROOT / "cifar10" / "test.zip", 32, workers=2, verbose=False)
    assert len(d) == 10000 and d.channels == 3
    assert d.class_names == sorted(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    assert torch.equal(torch.bincount(d.labels), torch.full((10,), 1000))


@need
def test_celeba_zip_is_unconditional_and_cropped():
    d = open_dataset(ROOT / "celeba-10k.zip", 64, workers=2, verbose=False)
    assert len(d) == 10000 and d.num_classes == 0 and d.images.shape[1:] == (3, 64, 64)
