"""What the tests share: tiny data, a tiny config, the CLI in a subprocess or in-process, and a
small stand-in for Inception (tests/ is on sys.path, so test modules import this directly)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sagan.config import RunConfig

PYTHON = sys.executable


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


def tiny_config(data, steps=4, **train) -> RunConfig:
    cfg = RunConfig(data=str(data), steps=steps)
    m = cfg.model
    m.resolution, m.z_dim, m.g_ch, m.d_ch, m.g_attn, m.d_attn = 32, 8, 4, 4, [16], [16]
    t = cfg.train
    t.batch_size, t.log_every, t.sample_every, t.ckpt_every, t.ema_start = 8, 1, 2, 2, 0
    cfg.dataset.workers = 0
    for k, v in train.items():
        setattr(t, k, v)
    return cfg


TINY = [
    "--model.g_ch", "4", "--model.d_ch", "4", "--model.z_dim", "8",
    "--model.g_attn", "[16]", "--model.d_attn", "[16]",
    "--train.batch_size", "8", "--train.log_every", "1", "--train.sample_every", "2",
    "--train.ckpt_every", "2", "--dataset.workers", "0", "--no_progress",
]


def sagan(*args, cwd):
    """Run the real command in a subprocess, as a user does."""
    return subprocess.run([sys.executable, "-m", "sagan", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def sagan_inproc(capsys, *args, cwd=None):
    """The same entry point in this process: fast, for checking messages."""
    from sagan.cli import main

    capsys.readouterr()
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # --help and --print_config exit
            rc = e.code or 0
    finally:
        os.chdir(old)
    out, err = capsys.readouterr()
    return Result(rc, out, err)


class StandIn:
    """A small fixed feature extractor: pooled pixels through fixed random projections."""

    name = "stand-in-v1"

    def __init__(self):
        g = torch.Generator().manual_seed(123)
        self.proj = torch.randn(3 * 8 * 8, 24, generator=g)
        self.head = torch.randn(24, 10, generator=g)
        self.calls = 0

    def __call__(self, x: torch.Tensor):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        self.calls += 1
        f = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 8).flatten(1) @ self.proj
        return f, f @ self.head
