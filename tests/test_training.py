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
    _, ema_before = _buffers_and_params(tr.ema.module)
    with torch.no_grad():  # move G away from the EMA and refresh its SN vectors with a training forward
        for p in tr.G.parameters():
            p.add_(0.1 * torch.randn_like(p))
        tr.G.train()(torch.randn(8, 8), torch.randint(0, 2, (8,)))
    _, g_params = _buffers_and_params(tr.G)
    g_buffers = {k: v.clone() for k, v in tr.G.named_buffers()}
    tr.update_ema()
    ema_buffers, ema_params = _buffers_and_params(tr.ema.module)
    for k, p in ema_params.items():  # EMA of parameters: decay * old + (1 - decay) * new
        assert torch.allclose(p, 0.75 * ema_before[k] + 0.25 * g_params[k], atol=1e-6), k
    sn_keys = [k for k in g_buffers if k.endswith(("_u", "_v"))]
    assert len(sn_keys) > 10
    for k in g_buffers:  # buffers (SN u/v, BN stats) are copied, never averaged
        assert torch.equal(ema_buffers[k], g_buffers[k]), k


def test_ema_copies_g_before_ema_start(tiny_folder, tmp_path):
    tr = Trainer(tiny_config(tiny_folder, steps=2, ema_decay=0.9, ema_start=100), tmp_path / "run", progress=False)
    tr.fit()
    for (k, p), q in zip(tr.G.state_dict().items(), tr.ema.module.state_dict().values()):
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
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    assert a["data"] == b["data"]


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
