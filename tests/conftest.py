from pathlib import Path

import pytest
import torch

from helpers import tiny_config, write_class_folder


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


@pytest.fixture(autouse=True)
def _as_without_the_fid_extra(request, monkeypatch):
    """The default suite runs as on a machine without the fid extra (CI's), whether or not this
    one has it: only tests marked ``fid`` see the real bundled Inception file."""
    if request.node.get_closest_marker("fid") is None:
        from sagan import inception

        monkeypatch.setattr(inception, "find_bundled_file", lambda: None)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny trained run directory (2 steps), shared by tests that only read it."""
    from sagan.training import Trainer

    root = tmp_path_factory.mktemp("trained")
    data = write_class_folder(root / "shapes")
    Trainer(tiny_config(data, steps=2, ema_start=1000), root / "run", progress=False).fit()
    return root / "run"
