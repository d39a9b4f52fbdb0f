import pytest
import torch

from sagan.config import RunConfig, load_preset
from sagan.console import UserError
from sagan.training import Trainer


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


def _buffers_and_params(module):
    return dict(module.named_buffers()), {k: v.detach().clone() for k, v in module.named_parameters()}


def test_ema_averages_parameters_and_copies_spectral_norm_buffers(tiny_folder, tmp_path):
    tr = Trainer(tiny_config(tiny_folder, ema_decay=0.75, ema_start=0), tmp_path / "run", progress=False)
    tr.fit()
    _, ema_before = _buffers_and_params(tr.gan.ema.module)
    with torch.no_grad():  # move G away from the EMA and refresh its SN vectors with a training forward
        for p in tr.gan.G.parameters():
            p.add_(0.1 * torch.randn_like(p))
        tr.gan.G.train()(torch.randn(8, 8), torch.randint(0, 2, (8,)))
    _, g_params = _buffers_and_params(tr.gan.G)
    g_buffers = {k: v.clone() for k, v in tr.gan.G.named_buffers()}
    tr.gan.update_ema()
    ema_buffers, ema_params = _buffers_and_params(tr.gan.ema.module)
    for k, p in ema_params.items():  # EMA of parameters: decay * old + (1 - decay) * new
        assert torch.allclose(p, 0.75 * ema_before[k] + 0.25 * g_params[k], atol=1e-6), k
    sn_keys = [k for k in g_buffers if k.endswith(("_u", "_v"))]
    assert len(sn_keys) > 10
    for k in g_buffers:  # buffers (SN u/v, BN stats) are copied, never averaged
        assert torch.equal(ema_buffers[k], g_buffers[k]), k


def test_ema_copies_g_before_ema_start(tiny_folder, tmp_path):
    tr = Trainer(tiny_config(tiny_folder, steps=2, ema_decay=0.9, ema_start=100), tmp_path / "run", progress=False)
    tr.fit()
    for (k, p), q in zip(tr.gan.G.state_dict().items(), tr.gan.ema.module.state_dict().values()):
        assert torch.equal(p, q), k


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


def test_losses_are_logged_and_d_sees_real_and_fake(tiny_folder, tmp_path):
    import json

    tr = Trainer(tiny_config(tiny_folder, steps=3), tmp_path / "run", progress=False)
    last = tr.fit()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
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
    from standin import StandIn

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
    from standin import StandIn

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


def test_bf16_autocast_runs_convolutions_in_bf16_and_keeps_fp32_weights(tiny_folder, tmp_path):
    tr = Trainer(tiny_config(tiny_folder, steps=1, precision="bf16"), tmp_path / "run", progress=False)
    seen = {}
    first_conv = {"G": next(m for m in tr.gan.G.modules() if isinstance(m, torch.nn.Conv2d)),
                  "D": next(m for m in tr.gan.D.modules() if isinstance(m, torch.nn.Conv2d))}
    for net, conv in first_conv.items():
        conv.register_forward_hook(lambda mod, args, out, net=net: seen.setdefault(net, out.dtype) and None)
    before = {k: v.clone() for k, v in tr.gan.D.state_dict().items()}
    tr.fit()
    assert seen == {"G": torch.bfloat16, "D": torch.bfloat16}
    for net in (tr.gan.G, tr.gan.D, tr.gan.ema.module):
        assert all(p.dtype == torch.float32 for p in net.parameters())
    assert any(not torch.equal(before[k], v) for k, v in tr.gan.D.state_dict().items())  # it trained


def test_fp16_grad_scaler_skips_overflowing_steps_and_resumes_its_scale(tiny_folder, tmp_path):
    tr = Trainer(tiny_config(tiny_folder, steps=1, precision="fp16", ckpt_every=100), tmp_path / "run", progress=False)
    assert tr.gan.scaler_d.is_enabled() and tr.gan.scaler_g.is_enabled()
    tr.gan.scaler_d.load_state_dict({**tr.gan.scaler_d.state_dict(), "scale": 8.0})
    x, y = next(tr.stream)
    D0 = {k: v.clone() for k, v in tr.gan.D.state_dict().items()}
    tr.gan.d_step(torch.full_like(x, float("inf")), y)  # every gradient overflows: no update, scale halved
    assert tr.gan.scaler_d.get_scale() == 4.0
    assert all(torch.equal(D0[k], v) for k, v in tr.gan.D.state_dict().items() if "original" in k)
    tr.gan.d_step(x, y)
    assert tr.gan.scaler_d.get_scale() == 4.0  # grows only after growth_interval good steps
    assert any(not torch.equal(D0[k], v) for k, v in tr.gan.D.state_dict().items() if "original" in k)
    tr.save_checkpoint()
    resumed = Trainer(tiny_config(tiny_folder, steps=1, precision="fp16", ckpt_every=100), tmp_path / "run", progress=False)
    assert resumed.gan.scaler_d.get_scale() == 4.0


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
