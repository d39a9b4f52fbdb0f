"""The run directory: atomic writes, refusals, --overwrite, the lock, and the ways a user could
lose work (each reproduced as a user would meet it)."""

import errno
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from sagan import files
from sagan.console import UserError
from sagan.rundir import RunDir, RunLock
from sagan.files import atomic_write, refuse_existing

from helpers import TINY, sagan_inproc, tiny_config, write_class_folder


def _full_disk(monkeypatch, after_bytes=100, only=""):
    """Writes through atomic_write (to paths containing ``only``) fail with ENOSPC after
    ``after_bytes``, as on a full disk."""
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > after_bytes:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def fake_open(path, *a, **k):
        f = real_open(path, *a, **k)
        return Full(f) if only in str(path) else f

    monkeypatch.setattr(files, "open", fake_open, raising=False)


def test_atomic_write_keeps_the_old_file_and_removes_the_temporary_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write(target, b"old contents")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old contents" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    _full_disk(monkeypatch)
    with pytest.raises(UserError, match=f"no space left on the device holding {tmp_path}"):
        atomic_write(target, b"x" * 1000)
    assert target.read_bytes() == b"old contents" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_existing_outputs_are_refused_and_folders_never_replaced(tmp_path):
    refuse_existing(tmp_path / "new.png", overwrite=False)
    (tmp_path / "old.png").write_bytes(b"x")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        refuse_existing(tmp_path / "old.png", overwrite=False)
    refuse_existing(tmp_path / "old.png", overwrite=True)
    with pytest.raises(UserError, match="is a folder"):
        refuse_existing(tmp_path, overwrite=True)


def test_overwrite_clears_only_a_run_and_only_its_own_entries(tiny_folder, tmp_path, capsys):
    # a user's folder that merely has a config.yaml is not a run: --overwrite leaves it alone
    mine = tmp_path / "my_project"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: settings\n")
    (mine / "notes.txt").write_text("precious")
    r = sagan_inproc(capsys, "train", "--data", tiny_folder, "--out", mine, "--overwrite", "--steps", 1, *TINY)
    assert r.returncode == 2 and "not a sagan run directory" in r.stderr
    assert (mine / "notes.txt").read_text() == "precious" and (mine / "config.yaml").read_text() == "my: settings\n"
    # a real run with a user's file beside it: --overwrite deletes the run's entries, not the file
    run = tmp_path / "run"
    assert sagan_inproc(capsys, "train", "--data", tiny_folder, "--out", run, "--steps", 2, *TINY).returncode == 0
    (run / "my_notes.txt").write_text("keep me")
    r = sagan_inproc(capsys, "train", "--data", tiny_folder, "--out", run, "--overwrite", "--steps", 1, *TINY)
    assert r.returncode == 0, r.stderr
    assert (run / "my_notes.txt").read_text() == "keep me"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt_00000001.pt"]


def _start_training(data, run, cwd):
    args = [sys.executable, "-m", "sagan", "train", "--data", str(data), "--out", str(run), "--steps", "100000",
            *TINY, "--train.ckpt_every", "5", "--train.sample_every", "100000"]
    p = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "ckpt_00000005.pt").exists():
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.1)
    return p


def test_a_second_trainer_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    data = write_class_folder(tmp_path / "shapes")
    run = tmp_path / "run"
    first = _start_training(data, run, tmp_path)
    try:
        holder = json.loads((run / ".lock").read_text())
        assert holder["pid"] == first.pid
        r = sagan_inproc(capsys, "train", "--out", run, "--steps", 100000, "--no_progress")
        assert r.returncode == 2 and f"in use by another sagan train (pid {first.pid} on" in r.stderr
        assert len(r.stderr.strip().splitlines()) <= 2  # the saved-config note and the one error line
        r = sagan_inproc(capsys, "train", "--out", run, "--overwrite", "--data", data, *TINY)
        assert r.returncode == 2 and "in use" in r.stderr and (run / "checkpoints").is_dir()  # nothing deleted
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    steps = max(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("ckpt_*.pt"))
    r = sagan_inproc(capsys, "train", "--out", run, "--steps", steps + 1, "--no_progress")
    assert r.returncode == 0, r.stderr
    assert "taking over the lock" in r.stderr and "no longer running" in r.stderr
    assert not (run / ".lock").exists()  # released on exit


def test_lock_is_reentrant_within_one_process_and_names_a_foreign_host(tmp_path):
    lock = RunLock(tmp_path / ".lock")
    lock.acquire()
    RunLock(tmp_path / ".lock").acquire()  # a second trainer in the same Python session
    lock.release()
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text(json.dumps({"host": "node-17", "pid": 4242, "since": "yesterday"}))
    with pytest.raises(UserError, match=r"pid 4242 on node-17, since yesterday.*delete .*\.lock"):
        RunLock(tmp_path / ".lock").acquire()


def test_an_empty_config_yaml_does_not_lose_the_run(tiny_folder, tmp_path, capsys):
    """A kill during the config write used to leave it empty; every later command then refused
    the run and suggested --overwrite, which deletes the checkpoints."""
    run = tmp_path / "run"
    assert sagan_inproc(capsys, "train", "--data", tiny_folder, "--out", run, "--steps", 2, *TINY).returncode == 0
    (run / "config.yaml").write_text("")
    r = sagan_inproc(capsys, "train", "--out", run, "--steps", 4, "--no_progress")
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr and "--overwrite" not in r.stderr
    assert (run / "checkpoints" / "ckpt_00000004.pt").exists()
    assert "model:" in (run / "config.yaml").read_text()  # rewritten, whole
    (run / "config.yaml").write_text("model: [oops\n")
    r = sagan_inproc(capsys, "sample", run, "--grid", "--out", tmp_path / "g.png")
    assert r.returncode == 0, r.stderr


def test_no_readable_checkpoint_stops_and_deletes_nothing(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert sagan_inproc(capsys, "train", "--data", tiny_folder, "--out", run, "--steps", 4, *TINY).returncode == 0
    blobs = {}
    for p in (run / "checkpoints").glob("ckpt_*.pt"):
        p.write_bytes(p.read_bytes()[:100])
        blobs[p.name] = p.read_bytes()
    r = sagan_inproc(capsys, "train", "--out", run, "--steps", 6, "--no_progress")
    assert r.returncode == 2 and "none of the 2 checkpoints" in r.stderr and "can be read" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error:")
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").glob("ckpt_*.pt")} == blobs


def test_an_unreadable_newest_checkpoint_is_moved_aside_not_deleted(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", tiny_folder, "--out", run, *TINY, "--train.keep_ckpts", "1"]
    assert sagan_inproc(capsys, *args, "--steps", 2).returncode == 0
    cfg_ckpts = run / "checkpoints"
    good = (cfg_ckpts / "ckpt_00000002.pt").read_bytes()
    (cfg_ckpts / "ckpt_00000003.pt").write_bytes(good[:50])  # a newer, damaged one
    assert sagan_inproc(capsys, *args, "--steps", 6).returncode == 0
    assert (cfg_ckpts / "ckpt_00000003.pt.unreadable").read_bytes() == good[:50]
    assert sorted(p.name for p in cfg_ckpts.glob("ckpt_*.pt")) == ["ckpt_00000006.pt"]


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_resume_is_exact_with_and_without_the_in_memory_cache(tiny_folder, tmp_path, cache):
    from sagan.training import Trainer

    def cfg(steps):
        c = tiny_config(tiny_folder, steps=steps, ckpt_every=100)
        c.dataset.cache, c.dataset.workers = cache, 1 if cache == "none" else 0
        return c

    straight = Trainer(cfg(4), tmp_path / "a", progress=False)
    assert (straight.data.images is None) == (cache == "none")
    straight.fit()
    Trainer(cfg(2), tmp_path / "b", progress=False).fit()
    resumed = Trainer(cfg(4), tmp_path / "b", progress=False)
    resumed.fit()
    a, b = straight.state_dict(), resumed.state_dict()
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    assert torch.equal(a["rng"]["cpu"], b["rng"]["cpu"])


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_ones(tiny_folder, tmp_path, capsys,
                                                                                   monkeypatch):
    run = tmp_path / "run"
    args = ["train", "--data", tiny_folder, "--out", run, *TINY]
    assert sagan_inproc(capsys, *args, "--steps", 2).returncode == 0
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    _full_disk(monkeypatch, after_bytes=1000, only="checkpoints")
    r = sagan_inproc(capsys, *args, "--steps", 4)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left on the device holding") and "checkpoints" in last
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before  # no temporary left
    assert not (run / ".lock").exists()


def test_runs_of_older_versions_without_a_marker_are_recognised_by_their_checkpoints(trained_run, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    (old / ".sagan-run").unlink()
    assert RunDir(old).is_run()
    shutil.rmtree(old / "checkpoints")
    assert not RunDir(old).is_run()
    with pytest.raises(UserError, match="not a sagan run directory"):
        RunDir(old).clear()
    assert (old / "config.yaml").exists()
