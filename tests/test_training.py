import pytest
import torch

from sagan.config import load_preset
from sagan.console import UserError
from sagan.training import Trainer

from helpers import StandIn, tiny_config


def test_resumed_training_equals_uninterrupted_training(tiny_folder, tmp_path):
    straight = Trainer(tiny_config(tiny_folder, steps=4, ckpt_every=100), tmp_path / "a", progress=False)
    straight.fit()
    first = Trainer(tiny_config(tiny_folder, steps=2, ckpt_every=100), tmp_path / "b", progress=False)
    first.fit()
    resumed = Trainer(tiny_config(tiny_folder, steps=4, ckpt_every=100), tmp_path / "b", progress=False)
    assert resumed.step == 2
    resumed.fit()
    a, b = straight.state_dict(), resumed.state_dict()
    for net in ("G", "D", "G_ema"):  # weights, EMA and every buffer (SN u/v, BN statistics)
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    for opt in ("opt_g", "opt_d"):  # Adam moments and step counts
        sa, sb = a[opt]["state"], b[opt]["state"]
        assert sa.keys() == sb.keys() and len(sa) > 10
        for i in sa:
            for k in sa[i]:
                assert torch.equal(sa[i][k], sb[i][k]), (opt, i, k)
    assert torch.equal(a["ema_n_averaged"], b["ema_n_averaged"])
    assert torch.equal(a["rng"]["cpu"], b["rng"]["cpu"])  # the future noise is the same too
    assert a["data"] == b["data"] and a["step"] == b["step"] == 4


def test_losses_are_logged_and_d_sees_real_and_fake(tiny_folder, tmp_path, monkeypatch):
    import json

    from sagan.gan import GANState

    seen = []  # what each iteration's own step computed, to hold the log against
    step = GANState.train_iteration

    def recording(self, batches):
        stats, imgs = step(self, batches)
        seen.append({k: float(getattr(stats, k)) for k in ("d_loss", "g_loss", "d_real", "d_fake")})
        return stats, imgs

    monkeypatch.setattr(GANState, "train_iteration", recording)
    tr = Trainer(tiny_config(tiny_folder, steps=3), tmp_path / "run", progress=False)
    last = tr.fit()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    for row, own in zip(lines, seen):  # each row holds its own step's values, under the right names
        for k, v in own.items():
            assert row[k] == pytest.approx(v, rel=1e-6), k
    gamma_keys = [k for k in last if k.startswith("gamma/")]
    assert any(k.startswith("gamma/G.") for k in gamma_keys) and any(k.startswith("gamma/D.") for k in gamma_keys)
    assert {"d_loss", "g_loss", "d_real", "d_fake", "lr_g", "lr_d", "img_per_s"} <= set(last)
    assert last["lr_d"] == pytest.approx(4e-4) and last["lr_g"] == pytest.approx(1e-4)
    assert (tmp_path / "run" / "samples" / "step_00000002.png").exists()
    assert list((tmp_path / "run" / "tb").iterdir())


def test_different_run_in_the_same_directory_is_refused(tiny_folder, tmp_path):
    Trainer(tiny_config(tiny_folder, steps=1), tmp_path / "run", progress=False).fit()
    other = tiny_config(tiny_folder, steps=1)
    other.model.z_dim = 16
    with pytest.raises(UserError, match="model.z_dim"):
        Trainer(other, tmp_path / "run", progress=False)
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert before == ["ckpt_00000001.pt"]
    Trainer(other, tmp_path / "run", overwrite=True, progress=False)  # explicit flag starts over
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_all_presets_load_and_cite_sources():
    from sagan.config import PRESETS, preset_path

    for name in PRESETS:
        cfg = load_preset(name)
        assert cfg.model.resolution in (32, 64, 128, 256)
        text = preset_path(name).read_text()
        assert text.lstrip().startswith("#"), f"preset {name} must say where its numbers come from"


def _eval_records(run):
    import json

    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("eval")]


def test_evaluation_during_training_logs_metrics_keeps_best_and_leaves_training_unchanged(tiny_folder, tmp_path):
    plain = Trainer(tiny_config(tiny_folder, steps=6, ckpt_every=100), tmp_path / "plain", progress=False)
    plain.fit()
    ev = dict(eval_every=2, eval_samples=20, eval_batch_size=8)
    scored = Trainer(tiny_config(tiny_folder, steps=6, ckpt_every=100, **ev), tmp_path / "scored",
                     progress=False, extractor=StandIn())
    scored.fit()
    a, b = plain.state_dict(), scored.state_dict()
    for net in ("G", "D", "G_ema"):  # scoring consumed no training randomness and moved no buffer
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    recs = _eval_records(tmp_path / "scored")
    assert [r["step"] for r in recs] == [2, 4, 6]
    assert all(r["fid"] > 0 and r["is"] >= 1 and "intra_fid" in r and r["eval_samples"] == 20 for r in recs)
    fids = [r["fid"] for r in recs]
    assert [r["best_fid"] for r in recs] == [min(fids[: i + 1]) for i in range(3)]
    best = torch.load(tmp_path / "scored" / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == recs[fids.index(min(fids))]["step"] and best["best_fid"] == min(fids)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "scored" / "tb")).Reload()
    assert [e.step for e in acc.Scalars("eval/FID")] == [2, 4, 6]
    assert [e.value for e in acc.Scalars("eval/FID")] == pytest.approx(fids)


def test_best_fid_survives_resume(tiny_folder, tmp_path):
    ev = dict(eval_every=2, eval_samples=20, eval_batch_size=8, ckpt_every=2)
    Trainer(tiny_config(tiny_folder, steps=6, **ev), tmp_path / "a", progress=False, extractor=StandIn()).fit()
    Trainer(tiny_config(tiny_folder, steps=4, **ev), tmp_path / "b", progress=False, extractor=StandIn()).fit()
    resumed = Trainer(tiny_config(tiny_folder, steps=6, **ev), tmp_path / "b", progress=False, extractor=StandIn())
    assert resumed.best_fid == min(r["fid"] for r in _eval_records(tmp_path / "b"))
    resumed.fit()
    straight, split = _eval_records(tmp_path / "a"), _eval_records(tmp_path / "b")
    for r in straight + split:
        r.pop("eval_seconds")
    assert split == straight  # same scores and the same running best, across the restart


def test_missing_inception_weights_stop_training_before_it_starts(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SAGAN_OFFLINE", "1")
    monkeypatch.delenv("SAGAN_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(UserError, match="Inception weights"):
        Trainer(tiny_config(tiny_folder, eval_every=2), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing was written


def test_a_signal_echoed_within_the_grace_period_is_ignored_and_a_later_one_interrupts(monkeypatch):
    """torchrun re-sends Ctrl-C's SIGINT to workers the terminal already signalled: that echo
    must not turn a graceful stop into an abort, but a deliberate second Ctrl-C must, and
    outside torchrun any second signal does."""
    import os
    import signal
    import time

    from sagan.training import graceful_stop

    with pytest.raises(KeyboardInterrupt):  # a single process: no echo window
        with graceful_stop(echo_s=5.0):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    with graceful_stop(echo_s=5.0) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert stop.requested == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        with graceful_stop(echo_s=0.0) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
