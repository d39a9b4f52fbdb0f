"""Whole evaluations, offline: no Inception weights, a small stand-in extractor injected instead."""

import json

import numpy as np
import pytest

from sagan import evaluation, inception
from helpers import StandIn


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGAN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_whole_eval_path_with_a_stand_in_extractor(tiny_folder, cache):
    from sagan.data import open_dataset
    from sagan.models import Generator

    data = open_dataset(tiny_folder, 32, workers=0, verbose=False)
    G = Generator(32, ch=8, z_dim=8, num_classes=2, attn=[16]).eval()
    ex = StandIn()
    res = evaluation.evaluate_generator(G, data, n=40, extractor=ex, batch_size=16, progress=False)
    assert res["reference_cached"] is False and res["n_fake"] == 40 and res["n_real"] == 32
    assert res["fid"] > 0 and res["is"] >= 1 and len(res["intra_fid_per_class"]) == 2
    assert res["intra_fid"] == pytest.approx(np.mean(res["intra_fid_per_class"]))
    calls = ex.calls
    again = evaluation.evaluate_generator(G, data, n=40, extractor=ex, batch_size=16, progress=False)
    assert again["reference_cached"] is True and ex.calls == calls + 3  # only the 40 samples, not the data
    assert again["fid"] == pytest.approx(res["fid"])
    json.dumps(res)  # the results are plain JSON
    # the data scored against itself: FID ~ 0
    self_score = evaluation.evaluate_folders(data, data, ex, ex.name, progress=False)
    assert abs(self_score["fid"]) < 1e-6


def test_eval_command_reports_missing_weights_in_one_line(trained_run, monkeypatch, capsys, tmp_path):
    from sagan.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SAGAN_OFFLINE", "1")
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(inception, "find_bundled_file", lambda: None)  # as without the fid extra
    assert main(["eval", str(trained_run), "--n", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Inception weights") and "Traceback" not in err


def test_eval_command_with_stand_in_writes_json(trained_run, monkeypatch, capsys, cache):
    from sagan.cli import main

    monkeypatch.setattr(evaluation, "InceptionExtractor", _StandInFactory)
    assert main(["eval", str(trained_run), "--n", "20", "--batch_size", "10"]) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "intra-FID" in out
    files = list((trained_run / "eval").glob("*.json"))
    assert [json.loads(f.read_text())["n_fake"] for f in files].count(20) == 1


_SHARDED = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from helpers import StandIn
from sagan import evaluation
from sagan.data import open_dataset
from sagan.distributed import init_from_env, cleanup, rank_world
from sagan.models import Generator

init_from_env(torch.device("cpu"))
torch.manual_seed(0)
G = Generator(32, ch=8, z_dim=8, num_classes=2, attn=[16])
data = open_dataset(sys.argv[2], 32, workers=0, verbose=False)
res = evaluation.evaluate_generator(G, data, n=37, extractor=StandIn(), batch_size=5, progress=False)
rank, world = rank_world()
json.dump({"world": world, "fid": res["fid"], "is": res["is"], "kid": res["kid"],
           "intra_fid": res["intra_fid"]}, open(f"{sys.argv[3]}.{rank}.json", "w"))
cleanup()
"""


def test_torchrun_shards_the_samples_and_gathers_the_same_features(tiny_folder, tmp_path, monkeypatch):
    """Two gloo processes under torchrun score exactly what one process scores: each rank
    generates and embeds its share, and the gathered features are put back in order."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED)
    tests_dir = str(Path(__file__).parent)
    env = {**os.environ, "SAGAN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    for world in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
               str(script), tests_dir, str(tiny_folder), str(tmp_path / f"w{world}")]
        if world == 1:
            cmd = [sys.executable, str(script), tests_dir, str(tiny_folder), str(tmp_path / "w1")]
        run = subprocess.run(cmd, env=env if world == 2 else {**env, "SAGAN_CACHE": str(tmp_path / "cache1")},
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    one = json.loads((tmp_path / "w1.0.json").read_text())
    two = [json.loads((tmp_path / f"w2.{r}.json").read_text()) for r in (0, 1)]
    assert one["world"] == 1 and two[0]["world"] == 2
    assert two[0] == two[1]  # every rank returns the same result
    for k in ("fid", "is", "kid", "intra_fid"):
        assert two[0][k] == pytest.approx(one[k], rel=1e-6, abs=1e-9), k


def test_eval_never_overwrites_an_earlier_result(trained_run, monkeypatch, capsys, cache):
    from sagan.cli import main

    monkeypatch.setattr(evaluation, "InceptionExtractor", _StandInFactory)
    before = set((trained_run / "eval").glob("*.json")) if (trained_run / "eval").exists() else set()
    for _ in range(2):
        assert main(["eval", str(trained_run), "--n", "12", "--batch_size", "6"]) == 0
    new = set((trained_run / "eval").glob("*.json")) - before
    assert len(new) == 2 and all(json.loads(p.read_text())["n_fake"] == 12 for p in new)


def test_score_command_scores_one_folder_against_another(tiny_folder, tmp_path, monkeypatch, capsys, cache):
    """sagan score: samples from another tool (a flat folder) against a reference folder."""
    from PIL import Image

    from sagan.cli import main

    other = tmp_path / "other"
    other.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(other / f"{i}.png")
    monkeypatch.setattr(evaluation, "InceptionExtractor", _StandInFactory)
    out = tmp_path / "score.json"
    assert main(["score", str(other), str(tiny_folder), "--json", str(out)]) == 0
    noise = json.loads(out.read_text())
    assert noise["n_fake"] == 12 and noise["n_real"] == 32 and "intra_fid" not in noise
    assert main(["score", str(tiny_folder), str(tiny_folder), "--json", str(out)]) == 0
    same = json.loads(out.read_text())
    assert abs(same["fid"]) < 1e-6 < noise["fid"] and same["reference_cached"] is True
    assert main(["score", str(tmp_path / "missing"), str(tiny_folder)]) == 2
    assert "does not exist" in capsys.readouterr().err


class _StandInFactory(StandIn):
    """Takes InceptionExtractor's arguments, so it can replace the class itself."""

    def __init__(self, weights=None, device="cpu"):
        super().__init__()


def test_truncation_sweep_scores_each_threshold_and_plots_the_trade_off(trained_run, monkeypatch, capsys, cache,
                                                                        tmp_path):
    from PIL import Image

    from sagan.cli import main

    monkeypatch.setattr(evaluation, "InceptionExtractor", _StandInFactory)
    plain, swept = tmp_path / "plain.json", tmp_path / "sweep.json"
    assert main(["eval", str(trained_run), "--n", "12", "--batch_size", "6", "--truncation", "0.5",
                 "--json", str(plain)]) == 0
    assert main(["eval", str(trained_run), "--n", "12", "--batch_size", "6", "--truncation-sweep", "1.0", "0.5",
                 "--json", str(swept)]) == 0
    points = json.loads(swept.read_text())["points"]
    assert [p["truncation"] for p in points] == [0.5, 1.0, None]
    # each point is the evaluation one would run on its own at that threshold
    assert points[0]["fid"] == pytest.approx(json.loads(plain.read_text())["fid"], rel=1e-9)
    assert len({p["fid"] for p in points}) == 3
    plots = sorted((trained_run / "eval").glob("truncation_sweep_*.png"))
    assert len(plots) == 1 and plots[0].with_suffix(".json").exists()
    assert Image.open(plots[0]).size[0] > 300


class _PoolOnly(StandIn):
    """An extractor without a classifier, as with the bundled Inception features: logits of width 0."""

    name = "pool-only-v1"

    def __init__(self, weights=None, device="cpu"):
        super().__init__()

    def __call__(self, x):
        f, _ = super().__call__(x)
        return f, f[:, :0]


def test_every_result_names_its_protocol(trained_run, tiny_folder, monkeypatch, capsys, cache, tmp_path):
    """The numbers a score depends on travel with it: eval JSON (EMA and raw, truncation, a
    reference subset) and score JSON, counted independently of the code that writes them."""
    from sagan.cli import main
    from sagan.data import open_dataset

    monkeypatch.setattr(evaluation, "InceptionExtractor", _StandInFactory)
    out = tmp_path / "eval.json"
    assert main(["eval", str(trained_run), "--n", "14", "--batch_size", "7", "--raw", "--truncation", "0.7",
                 "--ref_samples", "10", "--json", str(out)]) == 0
    p = json.loads(out.read_text())["protocol"]
    assert p["n_generated"] == 14 and p["n_reference"] == 10 and p["reference_subset"] == "fixed random 10"
    assert p["generator"] == "raw" and p["truncation"] == 0.7 and p["extractor"] == StandIn.name
    assert p["reference"] == str(trained_run.parent / "shapes")  # the run's training data
    assert "centre-cropped to 32 px" in p["reference_preparation"]
    assert main(["eval", str(trained_run), "--n", "10", "--batch_size", "5", "--json", str(out)]) == 0
    p = json.loads(out.read_text())["protocol"]
    assert p["generator"] == "ema" and p["truncation"] is None and p["reference_subset"] == "all"
    assert p["n_reference"] == len(open_dataset(trained_run.parent / "shapes", 32, verbose=False))
    assert "10 EMA G vs" in capsys.readouterr().out  # the table's protocol line
    assert main(["score", str(tiny_folder), str(tiny_folder), "--json", str(out)]) == 0
    p = json.loads(out.read_text())["protocol"]
    assert p["generator"] is None and p["n_generated"] == p["n_reference"] == 32


def test_the_bundled_features_score_without_is_and_say_so_in_one_line(tiny_folder, monkeypatch, capsys, cache,
                                                                      tmp_path):
    from sagan.cli import main

    monkeypatch.setattr(evaluation, "InceptionExtractor", _PoolOnly)
    out = tmp_path / "score.json"
    assert main(["score", str(tiny_folder), str(tiny_folder), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "is" not in res and "is_std" not in res and abs(res["fid"]) < 1e-6 and "precision" in res
    captured = capsys.readouterr()
    assert "not computed (no classifier)" in captured.out
    lines = [ln for ln in captured.err.splitlines() if "IS needs the full" in ln]
    assert len(lines) == 1 and "--inception-weights" in lines[0]


def test_training_eval_rows_carry_their_protocol_and_need_no_is(tiny_folder, tmp_path):
    from helpers import tiny_config
    from sagan.training import Trainer

    cfg = tiny_config(tiny_folder, steps=2, eval_every=2, eval_samples=12, eval_batch_size=6)
    Trainer(cfg, tmp_path / "run", progress=False, extractor=_PoolOnly()).fit()
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in rows if r.get("eval")]
    assert ev and all("is" not in r for r in ev)
    assert ev[-1]["protocol"]["n_generated"] == 12 and ev[-1]["protocol"]["generator"] == "ema"
    assert ev[-1]["protocol"]["n_reference"] == 32 and ev[-1]["protocol"]["extractor"] == _PoolOnly.name
