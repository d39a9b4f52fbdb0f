"""What careless or hostile input does at the command line: each case ends as one line that says
what to do (exit status 2), runs no code and loses nothing."""

import shutil

import pytest
import torch

from sagan import evaluation

from helpers import TINY, StandIn, sagan_inproc, write_class_folder


def _one_line_error(r, *fragments):
    assert r.returncode == 2, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for f in fragments:
        assert f in last, (f, last)
    return last


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    from sagan.export import export_generator

    return export_generator(trained_run, tmp_path_factory.mktemp("exp") / "g.safetensors")


@pytest.mark.parametrize("damage", ["truncated", "empty", "metadata does not match", "metadata not JSON"])
def test_damaged_safetensors_files_are_one_line(exported, tmp_path, capsys, damage):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad.safetensors"
    if damage == "truncated":
        bad.write_bytes(exported.read_bytes()[:-100])
        expect = "is not a readable safetensors file"
    elif damage == "empty":
        bad.write_bytes(b"")
        expect = "is not a readable safetensors file"
    else:
        tensors = load_file(str(exported))
        from safetensors import safe_open

        with safe_open(str(exported), framework="pt") as f:
            meta = dict(f.metadata())
        if damage == "metadata not JSON":
            meta["config"] = "{model: oops"
            expect = "not valid JSON"
        else:
            tensors.pop(next(iter(tensors)))
            expect = "do not match the model its metadata describes"
        save_file(tensors, str(bad), metadata=meta)
    _one_line_error(sagan_inproc(capsys, "sample", bad, "--grid", "--out", tmp_path / "g.png"), expect)
    assert not (tmp_path / "g.png").exists()


def test_a_tiny_truncation_takes_one_draw(trained_run, tmp_path, capsys):
    r = sagan_inproc(capsys, "sample", trained_run, "--truncation", "1e-7", "--n", 16, "--grid",
                     "--out", tmp_path / "t.png")
    assert r.returncode == 0, r.stderr
    import sagan

    z = sagan.models.latents(5000, 8, torch.Generator().manual_seed(0), truncation=0.5)
    assert z.abs().max() <= 0.5 and abs(z.std().item() - 0.2837) < 0.01  # the truncated normal's std


@pytest.mark.parametrize("content", ["- a\n- b\n", "model:\n  g_ch: wide\n", "model: [oops\n", ""])
def test_a_hand_edited_run_config_falls_back_to_the_checkpoints(trained_run, tmp_path, capsys, content):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "config.yaml").write_text(content)
    r = sagan_inproc(capsys, "report", run, "--no_attention")
    assert r.returncode == 0 and "using the config saved in" in r.stderr
    for args in (["sample", run, "--grid", "--out", tmp_path / "g.png"], ["export", run, "--out", tmp_path / "e.st"],
                 ["train", "--out", run, "--steps", 3, "--no_progress"]):  # train rewrites config.yaml, whole
        r = sagan_inproc(capsys, *args)
        assert r.returncode == 0, (args, r.stderr)
    assert "model:" in (run / "config.yaml").read_text()
    shutil.rmtree(run / "checkpoints")  # now nothing can tell what the run is: one line
    (run / "config.yaml").write_text(content or "- a\n")
    (run / "report.html").unlink()
    _one_line_error(sagan_inproc(capsys, "report", run, "--overwrite", "--no_attention"), "config.yaml")


def test_config_files_with_a_section_of_the_wrong_type_are_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("model: [1, 2]\n")
    _one_line_error(sagan_inproc(capsys, "train", "--config", tmp_path / "c.yaml", "--print_config"),
                    "'model' must be a mapping")
    (tmp_path / "l.yaml").write_text("- 1\n- 2\n")
    _one_line_error(sagan_inproc(capsys, "train", "--config", tmp_path / "l.yaml"), "must be a mapping")


def _unwritable(tmp_path):
    return {"in /proc": "/proc/sagan-test/out", "a name too long": str(tmp_path / ("x" * 300))}


@pytest.mark.parametrize("where", ["in /proc", "a name too long"])
def test_an_output_that_cannot_be_written_is_one_line_in_every_verb(trained_run, exported, tmp_path, capsys,
                                                                      monkeypatch, where):
    monkeypatch.setattr(evaluation, "InceptionExtractor", lambda *a, **k: StandIn())
    out = _unwritable(tmp_path)[where]
    data = trained_run.parent / "shapes"
    cases = [
        ["train", "--data", data, "--out", out, "--steps", 1, *TINY],
        ["sample", trained_run, "--grid", "--out", out + ".png"],
        ["sample", trained_run, "--n", 2, "--out", out],
        ["export", trained_run, "--out", out + ".safetensors"],
        ["eval", trained_run, "--n", 4, "--batch_size", 4, "--json", out + ".json"],
        ["score", data, data, "--batch_size", 8, "--json", out + ".json"],
        ["attention", trained_run, "--n", 1, "--out", out],
        ["interpolate", trained_run, "--out", out],
        ["report", trained_run, "--no_attention", "--out", out + ".html"],
    ]
    for args in cases:
        _one_line_error(sagan_inproc(capsys, *args))


def test_export_onto_a_folder_is_refused_and_leaves_no_temporary(trained_run, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    for overwrite in ([], ["--overwrite"]):
        _one_line_error(sagan_inproc(capsys, "export", trained_run, "--out", tmp_path / "dir", *overwrite), "is a folder")
    assert list(tmp_path.iterdir()) == [tmp_path / "dir"] and not list((tmp_path / "dir").iterdir())


@pytest.mark.parametrize("args,fragment", [
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--ref_samples", "0"], "--ref_samples must be at least 1"),
    (["--ref_samples", "-5"], "--ref_samples must be at least 1"),
    (["--seed", str(2**64)], "--seed must lie in 0 .. 2**63 - 1"),
])
def test_eval_options_out_of_range_are_one_line_before_any_work(trained_run, capsys, args, fragment):
    _one_line_error(sagan_inproc(capsys, "eval", trained_run, *args), fragment)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_score_resolution_out_of_range_is_one_line(trained_run, capsys, value):
    data = trained_run.parent / "shapes"
    _one_line_error(sagan_inproc(capsys, "score", data, data, "--resolution", value), "--resolution must be at least 8")


def test_sample_grid_with_an_unknown_extension_and_huge_seeds_are_one_line(trained_run, tmp_path, capsys):
    _one_line_error(sagan_inproc(capsys, "sample", trained_run, "--grid", "--out", tmp_path / "g.xyz"),
                    "unknown image extension '.xyz'")
    _one_line_error(sagan_inproc(capsys, "sample", trained_run, "--seed", 2**70), "--seed must lie in")
    _one_line_error(sagan_inproc(capsys, "interpolate", trained_run, "--seeds", 1, 2**70), "--seeds must lie in")
    assert not list(tmp_path.iterdir())


def test_a_tilde_in_out_means_the_home_folder(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    r = sagan_inproc(capsys, "sample", trained_run, "--grid", "--out", "~/g.png", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "home" / "g.png").exists() and not (tmp_path / "~").exists()
    r = sagan_inproc(capsys, "train", "--data", trained_run.parent / "shapes", "--out", "~/run", "--steps", 1, *TINY,
                     cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "home" / "run" / "checkpoints").is_dir() and not (tmp_path / "~").exists()


def test_attention_on_fewer_real_images_than_asked_says_how_many(trained_run, tmp_path, capsys):
    r = sagan_inproc(capsys, "attention", trained_run, "--real", trained_run.parent / "shapes", "--n", 200,
                     "--out", tmp_path / "att")
    assert r.returncode == 0, r.stderr
    assert "on 32 real images from" in r.stderr and "200" not in r.stderr


def test_data_that_changed_before_a_resume_warns_or_refuses(tmp_path, capsys):
    data = write_class_folder(tmp_path / "d", per_class=8)
    run = tmp_path / "run"
    assert sagan_inproc(capsys, "train", "--data", data, "--out", run, "--steps", 2, *TINY).returncode == 0
    write_class_folder(tmp_path / "more", per_class=4, seed=9)
    for c in ("circle", "square"):
        for p in (tmp_path / "more" / c).iterdir():
            shutil.copy(p, data / c / f"new_{p.name}")
    r = sagan_inproc(capsys, "train", "--out", run, "--steps", 4, "--no_progress")
    assert r.returncode == 0 and "holds 24 images now and held 16 when the run started" in r.stderr
    shutil.rmtree(data / "square")
    write_class_folder(tmp_path / "d2", classes=("circle", "star"), per_class=8)
    shutil.copytree(tmp_path / "d2" / "star", data / "star")
    _one_line_error(sagan_inproc(capsys, "train", "--out", run, "--steps", 6, "--no_progress"),
                    "classes changed since the run started (gone: square; new: star)")
