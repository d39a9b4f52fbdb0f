"""Fault injection: kill -9 at random moments, truncated checkpoints, NaN, and the promise that a
last good checkpoint is never lost."""

import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import write_class_folder
from sagan.checkpoints import CheckpointManager, load_checkpoint
from sagan.console import UserError
from sagan.gan import GANState
from sagan.training import Trainer, TrainingDiverged
from helpers import TINY, sagan_inproc
from helpers import tiny_config

# Train through the real CLI, with every fsync slowed down so that checkpoint writes take long
# enough to be hit by a kill.
_SLOW_FSYNC = """
import os, sys, time
real = os.fsync
def slow(fd):
    time.sleep(0.2)
    real(fd)
os.fsync = slow
from sagan.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _all_checkpoints_load(folder):
    for p in CheckpointManager(folder).paths():
        load_checkpoint(p)  # raises if any file is unreadable
    return [int(p.stem.split("_")[1]) for p in CheckpointManager(folder).paths()]


def _max_step(folder):
    paths = CheckpointManager(folder).paths()
    return int(paths[-1].stem.split("_")[1]) if paths else 0


def test_kill_9_at_random_moments_never_leaves_an_unreadable_checkpoint(tmp_path):
    data = write_class_folder(tmp_path / "shapes")
    run = tmp_path / "run"
    script = tmp_path / "slow_fsync_train.py"
    script.write_text(_SLOW_FSYNC)
    steps = 12
    args = [sys.executable, str(script), "train", "--data", str(data), "--out", str(run), "--steps", str(steps),
            *TINY, "--train.ckpt_every", "1", "--train.sample_every", "1000"]
    rng = random.Random(0)
    ckpts = run / "checkpoints"
    for round_ in range(4):
        p = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        before = _max_step(ckpts)
        if round_ < 3:  # once training is under way, at a random moment
            while time.time() < deadline and _max_step(ckpts) <= before and p.poll() is None:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.8))
        else:  # while a checkpoint is being written (its temporary file exists)
            while time.time() < deadline and not any(ckpts.glob(".*.tmp*")) and p.poll() is None:
                time.sleep(0.005)
            assert any(ckpts.glob(".*.tmp*")), "no checkpoint write was caught in progress"
        p.send_signal(signal.SIGKILL)
        assert p.wait(timeout=60) == -signal.SIGKILL
        assert _all_checkpoints_load(ckpts), "every checkpoint on disk must load, and one must exist"
        assert _max_step(ckpts) < steps
    last = _max_step(ckpts)
    final = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert f"resuming from {ckpts / f'ckpt_{last:08d}.pt'} (step {last})" in final.stderr
    assert _max_step(ckpts) == steps and _all_checkpoints_load(ckpts)
    assert not list(ckpts.glob(".*.tmp*"))  # the temporary left by the kill was cleaned up on resume


def test_truncated_newest_checkpoint_is_skipped_with_a_warning(tmp_path, capsys):
    data = write_class_folder(tmp_path / "shapes")
    run = tmp_path / "run"
    base = ["train", "--data", data, "--out", run, *TINY]
    assert sagan_inproc(capsys, *base, "--steps", 4).returncode == 0
    newest = run / "checkpoints" / "ckpt_00000004.pt"
    blob = newest.read_bytes()
    newest.write_bytes(blob[: len(blob) // 3])
    r = sagan_inproc(capsys, *base, "--steps", 6)
    assert r.returncode == 0, r.stderr
    assert "ckpt_00000004.pt is not readable" in r.stderr and "skipping it" in r.stderr
    assert "resuming from" in r.stderr and "ckpt_00000002.pt (step 2)" in r.stderr
    assert torch.load(run / "checkpoints" / "ckpt_00000006.pt", weights_only=True)["step"] == 6


@pytest.mark.parametrize("where", ["loss", "weights"])
def test_injected_nan_stops_training_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path, monkeypatch, where):
    # "loss": losses are checked every step; "weights": with rare logging, the weights are
    # checked before every checkpoint, so a poisoned one is never written.
    cfg = tiny_config(tiny_folder, steps=12, ckpt_every=2, log_every=1 if where == "loss" else 100, sample_every=100)
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    real_step = GANState.g_step

    def poisoned(self):
        loss = real_step(self)
        if self.step == 4:  # during step 5
            with torch.no_grad():
                next(self.G.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(GANState, "g_step", poisoned)
    with pytest.raises(TrainingDiverged) as e:
        tr.fit()
    msg = str(e.value)
    assert "the generator's" in msg and "last good checkpoint" in msg  # (D may be poisoned by now too)
    assert "step 6" in msg and "NaN/Inf" in msg
    folder = tmp_path / "run" / "checkpoints"
    assert _all_checkpoints_load(folder)[-1] == 4  # nothing written at or after the poisoned step
    good = load_checkpoint(folder / "ckpt_00000004.pt")
    for net in ("G", "D", "G_ema"):
        assert all(torch.isfinite(v).all() for v in good[net].values() if v.is_floating_point())


def test_divergence_is_a_one_line_error_from_the_cli(tmp_path, capsys, monkeypatch):
    data = write_class_folder(tmp_path / "shapes")
    real_step = GANState.g_step

    def poisoned(self):
        loss = real_step(self)
        with torch.no_grad():
            next(self.D.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(GANState, "g_step", poisoned)
    r = sagan_inproc(capsys, "train", "--data", data, "--out", tmp_path / "run", "--steps", 4, *TINY)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: training diverged at step 2")
    assert "the discriminator's" in r.stderr.strip().splitlines()[-1]


def test_checkpoint_from_an_incompatible_config_names_the_keys(tiny_folder, tmp_path):
    Trainer(tiny_config(tiny_folder, steps=2), tmp_path / "run", progress=False).fit()
    other = tiny_config(tiny_folder, steps=2, n_dis=2)
    other.model.g_ch = 8
    with pytest.raises(UserError) as e:
        Trainer(other, tmp_path / "run", progress=False)
    assert "model.g_ch: 4 -> 8" in str(e.value) and "train.n_dis: 1 -> 2" in str(e.value)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt_00000002.pt")["step"] == 2


# ------------------------------------------------------------------ bad input


def _png_bytes(size, color=(200, 50, 50)):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def test_zip_with_a_damaged_entry_is_skipped_with_a_counted_warning(tmp_path, capsys):
    import zipfile

    from sagan.data import open_dataset

    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for k in ("a", "b"):
            for i in range(6):
                z.writestr(f"{k}/{i}.png", _png_bytes(32, (40 * i, 100, 200 if k == "a" else 20)))
    with zipfile.ZipFile(path) as z:  # damage the stored bytes of one entry: its CRC no longer matches
        info = z.getinfo("b/3.png")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 40 : start + 60] = bytes(20)
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as z:
        assert z.testzip() == "b/3.png"  # independent check that the entry is really damaged
    data = open_dataset(path, 32, workers=0)
    err = capsys.readouterr().err
    assert len(data) == 11 and "skipped 1 unreadable image (b/3.png)" in err
    assert data.labels.tolist() == [0] * 6 + [1] * 5


def test_images_smaller_than_the_resolution_get_one_counted_warning(tmp_path, capsys):
    from sagan.data import open_dataset

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.png").write_bytes(_png_bytes(16 if i < 3 else 64))
    data = open_dataset(root, 32, workers=0)
    err = capsys.readouterr().err
    assert len(data) == 5 and data.images.shape[-1] == 32
    assert "3 images are smaller than 32x32 and were upscaled" in err and "0.png (16 px)" in err
    assert err.count("smaller than") == 1


def test_unsupported_resolution_is_one_line_and_writes_nothing(tmp_path, capsys):
    data = write_class_folder(tmp_path / "shapes")
    r = sagan_inproc(capsys, "train", "--data", data, "--out", tmp_path / "run", *TINY, "--model.resolution", 48)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "48" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()
