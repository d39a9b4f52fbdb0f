"""End to end through the command line, in subprocesses, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import TINY, sagan, sagan_inproc, write_class_folder

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_class_folder(root / "shapes")
    r = sagan("train", "--data", data, "--out", root / "run", "--steps", 4, *TINY, cwd=root)
    assert r.returncode == 0, r.stderr
    return root, data, r


def test_train_writes_run_directory(trained):
    root, _, r = trained
    run = root / "run"
    assert "2 classes: 0=circle, 1=square" in r.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt_00000002.pt", "ckpt_00000004.pt"]
    assert (run / "samples" / "step_00000004.png").exists() and (run / "samples" / "latest.png").exists()
    grid = Image.open(run / "samples" / "latest.png")
    assert grid.size == (2 + 10 * 34, 2 + 2 * 34)  # one row per class, 10 columns, 32 px + 2 px padding
    cfg = (run / "config.yaml").read_text()
    assert "num_classes: 2" in cfg and "img_channels: 3" in cfg
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    state = torch.load(run / "checkpoints" / "ckpt_00000004.pt", weights_only=True)
    assert {"G", "D", "G_ema", "opt_g", "opt_d", "rng", "step", "config", "data"} <= set(state)


def test_rerun_resumes_and_only_run_dir_is_needed(trained):
    root, data, _ = trained
    r = sagan("train", "--out", root / "run", "--steps", 6, "--no_progress", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr and "step 4" in r.stderr
    steps = [json.loads(x)["step"] for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_config_mistakes_are_one_line_errors(trained, capsys):
    root, data, _ = trained
    sagan = lambda *a, cwd: sagan_inproc(capsys, *a, cwd=cwd)  # noqa: E731
    r = sagan("train", "--data", data, "--out", root / "typo", "--model.g_chh", 8, cwd=root)
    assert r.returncode == 2
    assert "did you mean 'model.g_ch'" in r.stderr and "Traceback" not in r.stderr
    (root / "bad.yaml").write_text("train:\n  lr_gg: 0.1\n")
    r = sagan("train", "--data", data, "--out", root / "typo", "--config", root / "bad.yaml", cwd=root)
    assert r.returncode == 2 and "did you mean 'train.lr_g'" in r.stderr
    r = sagan("train", "--data", root / "nope", "--out", root / "typo", cwd=root)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = sagan("train", "--data", data, "--model.resolution", 48, "--out", root / "typo", *TINY, cwd=root)
    assert r.returncode == 2 and "unsupported resolution 48" in r.stderr
    assert not (root / "typo" / "checkpoints").exists()


def test_different_run_in_existing_directory_is_refused(trained, capsys):
    root, data, _ = trained
    sagan = lambda *a, cwd: sagan_inproc(capsys, *a, cwd=cwd)  # noqa: E731
    before = sorted(p.name for p in (root / "run" / "checkpoints").iterdir())
    r = sagan("train", "--data", data, "--out", root / "run", "--preset", "demo", *TINY, "--model.z_dim", 16, cwd=root)
    assert r.returncode == 2 and "different run" in r.stderr and "--overwrite" in r.stderr
    assert sorted(p.name for p in (root / "run" / "checkpoints").iterdir()) == before


def test_print_config_shows_the_resolved_config(tmp_path, capsys):
    r = sagan_inproc(capsys, "train", "--preset", "cifar10", "--train.lr_d", "3e-4", "--print_config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "lr_d: 0.0003" in r.stdout and "n_dis: 5" in r.stdout and "g_ch: 64" in r.stdout


def test_model_ch_shorthand_sets_both_widths_in_order(tmp_path, capsys):
    r = sagan_inproc(capsys, "train", "--model.g_ch", "16", "--model.ch", "32", "--print_config", cwd=tmp_path)
    assert r.returncode == 0 and "g_ch: 32" in r.stdout and "d_ch: 32" in r.stdout and " ch:" not in r.stdout
    r = sagan_inproc(capsys, "train", "--model.ch=32", "--model.d_ch", "16", "--print_config", cwd=tmp_path)
    assert "g_ch: 32" in r.stdout and "d_ch: 16" in r.stdout


def test_sample_export_and_load_generator(trained, capsys):
    root, _, _ = trained
    run = root / "run"
    r = sagan("sample", run, "--n", 5, "--seed", 3, "--out", root / "imgs", cwd=root)
    assert r.returncode == 0, r.stderr
    files = sorted((root / "imgs").iterdir())
    assert len(files) == 5 and Image.open(files[0]).size == (32, 32)
    r = sagan("sample", run, "--n", 4, "--class", 1, "--grid", "--out", root / "grid.png", cwd=root)
    assert r.returncode == 0 and (root / "grid.png").exists()
    r = sagan_inproc(capsys, "sample", run, "--n", 4, "--grid", "--out", root / "grid.png")
    assert r.returncode == 2 and "already exists" in r.stderr  # nothing overwritten without the flag
    r = sagan_inproc(capsys, "sample", run, "--class", 7)
    assert r.returncode == 2 and "0..1" in r.stderr
    r = sagan_inproc(capsys, "sample", root / "missing")
    assert r.returncode == 2 and "does not exist" in r.stderr

    r = sagan("export", run, "--out", root / "g.safetensors", cwd=root)
    assert r.returncode == 0, r.stderr
    r = sagan_inproc(capsys, "export", run, "--out", root / "nc.safetensors", "--license", "non-commercial only")
    assert r.returncode == 0, r.stderr
    from safetensors import safe_open

    assert safe_open(str(root / "nc.safetensors"), "pt").metadata()["license"] == "non-commercial only"
    assert "license" not in safe_open(str(root / "g.safetensors"), "pt").metadata()
    r = sagan("sample", root / "g.safetensors", "--n", 2, "--grid", "--out", root / "grid2.png", cwd=root)
    assert r.returncode == 0, r.stderr

    import sagan as sg

    G_ckpt = sg.load_generator(run)
    G_file = sg.load_generator(root / "g.safetensors")
    assert G_file.z_dim == 8 and G_file.num_classes == 2
    assert not any("parametrizations" in k for k in G_file.state_dict())  # SN baked into plain weights
    z, y = torch.randn(3, 8), torch.tensor([0, 1, 1])
    with torch.no_grad():
        a, b = G_ckpt(z, y), G_file(z, y)
    assert a.shape == (3, 3, 32, 32) and a.abs().max() <= 1
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(G_file.sample(3, seed=1), G_ckpt.sample(3, seed=1), atol=1e-5)


def test_help_explains_itself(tmp_path, capsys):
    r = sagan("--help", cwd=tmp_path)  # python -m sagan, in a subprocess
    assert r.returncode == 0 and "train" in r.stdout and "sample" in r.stdout and "export" in r.stdout
    script = Path(sys.executable).with_name("sagan")  # the console script that pip installed
    assert script.exists(), "the `sagan` command is not installed next to this Python"
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage: sagan" in r.stdout
    r = sagan_inproc(capsys, "train", "--help")
    assert r.returncode == 0 and "--model.g_attn" in r.stdout and "--preset" in r.stdout
    assert "Feature-map resolutions" in r.stdout  # field docs are shown
    r = sagan_inproc(capsys, "trian")
    assert r.returncode == 2 and "did you mean 'train'" in r.stderr


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_finishes_the_step_saves_and_resumes(tmp_path, sig):
    import signal
    import time

    data = write_class_folder(tmp_path / "shapes")
    run = tmp_path / "run"
    args = [sys.executable, "-m", "sagan", "train", "--data", str(data), "--out", str(run), "--steps", "100000",
            *TINY, "--train.ckpt_every", "100000", "--train.sample_every", "100000"]
    p = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert f"{sig}: stopped after step {step}" in err
    assert (run / "checkpoints" / f"ckpt_{step:08d}.pt").exists()
    r = sagan("train", "--out", run, "--steps", step + 1, "--no_progress", cwd=tmp_path)
    assert r.returncode == 0 and f"step {step}" in r.stderr


def test_overwrite_with_bad_input_keeps_the_old_run(trained, capsys, tmp_path):
    root, data, _ = trained
    before = sorted(p.name for p in (root / "run" / "checkpoints").iterdir())
    r = sagan_inproc(capsys, "train", "--out", root / "run", "--overwrite", "--data", tmp_path / "missing", *TINY)
    assert r.returncode == 2 and "does not exist" in r.stderr and "deleted" not in r.stderr
    assert sorted(p.name for p in (root / "run" / "checkpoints").iterdir()) == before


def test_failed_start_does_not_lock_the_run_directory(tmp_path, capsys):
    data = write_class_folder(tmp_path / "shapes", per_class=3)  # 6 images
    args = ["train", "--data", data, "--out", tmp_path / "run", "--steps", 1, *TINY]
    r = sagan_inproc(capsys, *args, "--train.batch_size", 32)
    assert r.returncode == 2 and "fewer than one batch" in r.stderr
    r = sagan_inproc(capsys, *args, "--train.batch_size", 4)  # following the advice works
    assert r.returncode == 0, r.stderr


def test_preset_and_out_inside_a_config_file_are_honoured(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("preset: cifar10\ntrain:\n  batch_size: 8\n")
    r = sagan_inproc(capsys, "train", "--config", tmp_path / "c.yaml", "--print_config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "n_dis: 5" in r.stdout and "batch_size: 8" in r.stdout and "g_ch: 64" in r.stdout


def test_finished_run_says_so_and_exported_files_are_not_checkpoints(trained, capsys):
    root, _, _ = trained
    r = sagan_inproc(capsys, "train", "--out", root / "run", "--steps", 1)
    assert r.returncode == 0 and "already trained" in r.stderr and "done" not in r.stderr
    r = sagan_inproc(capsys, "sample", root / "run", "--truncation", 0)
    assert r.returncode == 2 and "--truncation must be positive" in r.stderr
    exported = root / "for_eval.safetensors"
    assert sagan_inproc(capsys, "export", root / "run", "--out", exported).returncode == 0
    for verb in ("eval", "export"):  # they need checkpoints; an export holds only G
        r = sagan_inproc(capsys, verb, exported, *(["--out", root / "x.safetensors"] if verb == "export" else []))
        assert r.returncode == 2 and "is an exported generator, not a checkpoint" in r.stderr
    r = sagan_inproc(capsys, "sample", exported, "--raw")
    assert r.returncode == 2 and "exported files hold only the EMA generator" in r.stderr


def test_version_prints_the_package_version(capsys):
    from importlib.metadata import version

    from helpers import sagan_inproc

    for flag in ("--version", "-V"):
        r = sagan_inproc(capsys, flag)
        assert r.returncode == 0 and r.stdout.strip() == f"sagan (torch-sagan) {version('torch-sagan')}"


def test_speed_shorthands_set_the_train_keys(tmp_path, capsys):
    r = sagan_inproc(capsys, "train", "--precision", "bf16", "--compile", "--sync_bn", "--print_config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "precision: bf16" in r.stdout and "compile: true" in r.stdout and "sync_bn: true" in r.stdout
    r = sagan_inproc(capsys, "train", "--precision=fp16", "--print_config", cwd=tmp_path)
    assert "precision: fp16" in r.stdout
    for argv in (["--compile", "reduce-overhead"], ["--compile=reduce-overhead"]):  # torch.compile's mode
        r = sagan_inproc(capsys, "train", *argv, "--print_config", cwd=tmp_path)
        assert r.returncode == 0 and "compile: reduce-overhead" in r.stdout, r.stderr
    r = sagan_inproc(capsys, "train", "--train.compile", "fastest", "--print_config", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = sagan_inproc(capsys, "train", "--precision", "fp8", "--print_config", cwd=tmp_path)
    assert r.returncode == 2 and "train.precision" in r.stderr and "Traceback" not in r.stderr
