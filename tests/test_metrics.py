"""Metrics, offline: no Inception weights, a small stand-in extractor injected instead."""

import json

import numpy as np
import pytest
import torch

from sagan import inception, metrics
from helpers import StandIn


def _fd_reference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance by another route: sqrt of S1 through its eigendecomposition, then the
    trace of sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix."""
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s1)
    r1 = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    m = r1 @ s2 @ r1
    tr = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 16)
    assert abs(metrics.fid_from_features(x, x)) < 1e-6


def test_frechet_distance_matches_independent_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 12, generator=g) @ torch.randn(12, 12, generator=g)
    b = torch.randn(300, 12, generator=g) * 2 + 1
    assert metrics.fid_from_features(a, b) == pytest.approx(_fd_reference(a, b), rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    g = torch.Generator().manual_seed(1)
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0, 0.5]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5, 1.5]), torch.tensor([0.5, 2.0, 1.0, 3.0])
    def unit(n):  # exact sample mean 0 and std 1 per dimension, so only the (second-order)
        z = torch.randn(n, 4, generator=g, dtype=torch.float64)  # off-diagonal noise remains
        return (z - z.mean(0)) / z.std(0)

    a = mu1 + s1 * unit(100_000)
    b = mu2 + s2 * unit(100_000)
    closed = float((mu1 - mu2).square().sum() + (s1 - s2).square().sum())
    assert metrics.fid_from_features(a, b) == pytest.approx(closed, abs=1e-3)


def test_inception_score_bounds():
    k = 10
    constant = torch.zeros(1000, k)
    constant[:, 3] = 50.0
    assert metrics.inception_score(constant, splits=1)[0] == pytest.approx(1.0, abs=1e-6)
    confident = torch.full((1000, k), -50.0)
    confident[torch.arange(1000), torch.arange(1000) % k] = 50.0  # uniformly spread, confident
    assert metrics.inception_score(confident, splits=1)[0] == pytest.approx(k, rel=1e-6)


def test_kid_is_unbiased_near_zero_for_the_same_distribution():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2000, 32, generator=g), torch.randn(2000, 32, generator=g)
    same, _ = metrics.kid(a, b, subsets=50, subset_size=500)
    shifted, _ = metrics.kid(a, b + 0.5, subsets=50, subset_size=500)
    assert abs(same) < 2e-3 and shifted > 20 * abs(same) + 0.01


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
    res = metrics.evaluate_generator(G, data, n=40, extractor=ex, batch_size=16, progress=False)
    assert res["reference_cached"] is False and res["n_fake"] == 40 and res["n_real"] == 32
    assert res["fid"] > 0 and res["is"] >= 1 and len(res["intra_fid_per_class"]) == 2
    assert res["intra_fid"] == pytest.approx(np.mean(res["intra_fid_per_class"]))
    calls = ex.calls
    again = metrics.evaluate_generator(G, data, n=40, extractor=ex, batch_size=16, progress=False)
    assert again["reference_cached"] is True and ex.calls == calls + 3  # only the 40 samples, not the data
    assert again["fid"] == pytest.approx(res["fid"])
    json.dumps(res)  # the results are plain JSON
    # the data scored against itself: FID ~ 0
    self_score = metrics.evaluate_folders(data, data, ex, ex.name, progress=False)
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

    monkeypatch.setattr(metrics, "InceptionExtractor", _StandInFactory)
    assert main(["eval", str(trained_run), "--n", "20", "--batch_size", "10"]) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "intra-FID" in out
    files = list((trained_run / "eval").glob("*.json"))
    assert [json.loads(f.read_text())["n_fake"] for f in files].count(20) == 1


_SHARDED = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from helpers import StandIn
from sagan import inception, metrics
from sagan.data import open_dataset
from sagan.distributed import init_from_env, cleanup, rank_world
from sagan.models import Generator

init_from_env(torch.device("cpu"))
torch.manual_seed(0)
G = Generator(32, ch=8, z_dim=8, num_classes=2, attn=[16])
data = open_dataset(sys.argv[2], 32, workers=0, verbose=False)
res = metrics.evaluate_generator(G, data, n=37, extractor=StandIn(), batch_size=5, progress=False)
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

    monkeypatch.setattr(metrics, "InceptionExtractor", _StandInFactory)
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
    monkeypatch.setattr(metrics, "InceptionExtractor", _StandInFactory)
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


def test_a_limited_reference_draws_from_every_class(tiny_folder):
    from sagan.data import open_dataset

    data = open_dataset(tiny_folder, 32, workers=0, verbose=False)  # stored class by class
    labels = torch.cat([y for _, y in metrics.data_batches(data, batch_size=5, limit=10)])
    assert len(labels) == 10 and set(labels.tolist()) == {0, 1}
    assert len(torch.cat([y for _, y in metrics.data_batches(data, batch_size=5)])) == len(data)


def test_truncation_sweep_scores_each_threshold_and_plots_the_trade_off(trained_run, monkeypatch, capsys, cache,
                                                                        tmp_path):
    from PIL import Image

    from sagan.cli import main

    monkeypatch.setattr(metrics, "InceptionExtractor", _StandInFactory)
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


def _random_inception_file(path, seed):
    torch.manual_seed(seed)
    net = inception.inception_network(None)  # random init, the real file's keys and shapes
    torch.save(net.state_dict(), path)
    return path


def test_reference_statistics_are_keyed_to_the_inception_weights(tmp_path, monkeypatch):
    """Scoring with another weights file must not reuse statistics cached with the first: two
    weights files, one cache, two different FIDs (and each equals a fresh computation)."""
    from sagan.data import open_dataset
    from sagan.models import Generator

    from helpers import write_class_folder

    monkeypatch.setenv("SAGAN_CACHE", str(tmp_path / "cache"))  # a cache of its own, to count its entries
    data = open_dataset(write_class_folder(tmp_path / "d", per_class=6), 32, 3, progress=False)
    G = Generator(32, ch=8, z_dim=8, num_classes=2, attn=[16]).eval()
    a, b = (inception.InceptionExtractor(_random_inception_file(tmp_path / f"w{s}.pth", s)) for s in (1, 2))
    assert a.name != b.name and a.name.startswith("tf-inception-v3-compat:")
    fid_a = metrics.evaluate_generator(G, data, n=12, extractor=a, batch_size=12, progress=False)
    fid_b = metrics.evaluate_generator(G, data, n=12, extractor=b, batch_size=12, progress=False)
    assert not fid_b["reference_cached"]  # b's reference features were computed with b
    assert fid_a["fid"] != pytest.approx(fid_b["fid"], rel=1e-3)
    again = metrics.evaluate_generator(G, data, n=12, extractor=b, batch_size=12, progress=False)
    assert again["reference_cached"] and again["fid"] == pytest.approx(fid_b["fid"], rel=1e-9)
    assert len(list((metrics.cache_dir() / "reference").glob("*.pt"))) == 2


def _pr_by_hand(fake, real, k=3):
    """Precision and recall from their definition, with explicit loops."""
    def radius(x):  # distance to the k-th nearest other point of the same set
        return [sorted(float((a - b).norm()) for j, b in enumerate(x) if j != i)[k - 1] for i, a in enumerate(x)]

    rf, rr = radius(fake), radius(real)
    precision = sum(any(float((f - r).norm()) <= rr[j] for j, r in enumerate(real)) for f in fake) / len(fake)
    recall = sum(any(float((r - f).norm()) <= rf[j] for j, f in enumerate(fake)) for r in real) / len(real)
    return precision, recall


def test_precision_and_recall_match_their_definition_and_known_limits():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 5, generator=g)
    fake = torch.cat([torch.randn(30, 5, generator=g) * 0.3, torch.randn(10, 5, generator=g) + 6])  # a narrow mode + junk
    p, r = metrics.precision_recall(fake, real)
    assert (p, r) == pytest.approx(_pr_by_hand(fake, real))
    assert 0.5 < p < 1 and r < 0.9  # junk lowers precision, the narrow mode recall
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    assert metrics.precision_recall(real + 100, real) == (0.0, 0.0)


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

    monkeypatch.setattr(metrics, "InceptionExtractor", _StandInFactory)
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

    monkeypatch.setattr(metrics, "InceptionExtractor", _PoolOnly)
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
