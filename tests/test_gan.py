"""The training step on its own: GANState built from a config, no run directory."""

import pytest
import torch

from sagan.config import complete
from sagan.data import BatchStream, open_dataset
from sagan.gan import GANState, bn_statistics
from sagan.models import Generator, standing_stats
from sagan.training import Trainer

from helpers import tiny_config


def _buffers_and_params(module):
    return dict(module.named_buffers()), {k: v.detach().clone() for k, v in module.named_parameters()}


def test_ema_averages_parameters_and_copies_spectral_norm_buffers(tiny_folder, tmp_path):
    tr = Trainer(tiny_config(tiny_folder, ema_decay=0.75, ema_start=0, ema_bn_stats="copy"), tmp_path / "run", progress=False)
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




def make_gan(folder, **train):
    cfg = tiny_config(folder, **train)
    data = open_dataset(cfg.data, 32, None, workers=0, progress=False)
    cfg = complete(cfg, data, workers=0)
    return GANState(cfg, torch.device("cpu")), BatchStream(data, cfg.train.batch_size, seed=0)


def test_the_step_object_trains_without_a_run_directory(tiny_folder, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    gan, batches = make_gan(tiny_folder)
    before = {k: v.clone() for k, v in gan.D.state_dict().items()}
    stats, images = gan.train_iteration(batches)
    assert gan.step == 1 and images == 8 and all(torch.isfinite(v) for v in stats)
    assert stats.d_loss > 0 and stats._fields == ("d_loss", "g_loss", "d_real", "d_fake")
    assert any(not torch.equal(before[k], v) for k, v in gan.D.state_dict().items())
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "shapes"]


def test_ema_averages_batch_norm_statistics_like_the_weights(tiny_folder):
    gan, batches = make_gan(tiny_folder, ema_decay=0.75, ema_start=0, ema_bn_stats="average")
    for _ in range(3):
        gan.train_iteration(batches)
    ema_bn_before = [b.clone() for b in bn_statistics(gan.ema.module)]
    sn_before = {k: v.clone() for k, v in gan.ema.module.named_buffers() if k.endswith(("_u", "_v"))}
    gan.G.train()(torch.randn(8, 8), torch.randint(0, 2, (8,)))  # new batch statistics and SN vectors in G
    g_bn = [b.clone() for b in bn_statistics(gan.G)]
    g_sn = {k: v.clone() for k, v in gan.G.named_buffers() if k.endswith(("_u", "_v"))}
    gan.update_ema()
    after = bn_statistics(gan.ema.module)
    assert len(after) >= 8  # every CBN and the output BN: means and variances
    for old, new, ema in zip(ema_bn_before, g_bn, after):  # decay * old + (1 - decay) * G's
        assert torch.allclose(ema, 0.75 * old + 0.25 * new, atol=1e-6)
        assert not torch.equal(ema, new)
    for k, v in gan.ema.module.named_buffers():  # spectral norm's vectors are copied, not averaged
        if k in g_sn:
            assert torch.equal(v, g_sn[k]) and not torch.equal(v, sn_before[k]), k


@torch.no_grad()
def test_standing_statistics_are_the_cumulative_mean_and_variance_over_batches():
    G = Generator(32, ch=8, z_dim=8, num_classes=3, attn=[16]).eval()
    for m in G.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics far from what the batches give
            m.running_mean.fill_(5.0)
            m.running_var.fill_(9.0)
    sn = {k: v.clone() for k, v in G.named_buffers() if k.endswith(("_u", "_v"))}
    # the reference: the output BN's input in each batch, and its mean and variance computed directly
    seen = []
    hook = G.out_bn.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    standing_stats(G, 4, batch_size=16, seed=7)
    hook.remove()
    assert len(seen) == 4 and not G.training
    means = torch.stack([x.mean((0, 2, 3)) for x in seen])
    variances = torch.stack([x.var((0, 2, 3), unbiased=True) for x in seen])  # torch stores unbiased
    assert torch.allclose(G.out_bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(G.out_bn.running_var, variances.mean(0), atol=1e-4)
    assert G.out_bn.momentum == 0.1  # restored
    for k, v in G.named_buffers():  # no power iteration ran
        if k in sn:
            assert torch.equal(v, sn[k]), k
    # and the batches were drawn from the seed: the same call gives the same statistics
    again = Generator(32, ch=8, z_dim=8, num_classes=3, attn=[16]).eval()
    again.load_state_dict(G.state_dict())
    standing_stats(again, 4, batch_size=16, seed=7)
    assert torch.equal(again.out_bn.running_mean, G.out_bn.running_mean)


def test_saved_ema_gets_standing_statistics_and_resume_keeps_the_running_ones(tiny_folder, tmp_path):
    cfg = tiny_config(tiny_folder, steps=2, ckpt_every=2, ema_bn_batches=3, ema_start=0)
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    tr.fit()
    state = torch.load(tmp_path / "run" / "checkpoints" / "ckpt_00000002.pt", weights_only=True)
    running = {k: v for k, v in tr.gan.ema.module.state_dict().items() if k.endswith("running_mean")}
    saved = {k: v for k, v in state["G_ema"].items() if k.endswith("running_mean")}
    assert all(not torch.equal(saved[k], running[k]) for k in running)  # samplers get standing statistics
    assert all(torch.equal(state["G_ema_running_bn"][k], running[k]) for k in running)
    resumed = Trainer(cfg, tmp_path / "run", progress=False)
    for k, v in resumed.gan.ema.module.state_dict().items():  # training resumes from the running EMA
        assert torch.equal(v, tr.gan.ema.module.state_dict()[k]), k


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




def test_compile_modes_reach_torch_compile_and_cuda_graph_steps_are_marked(tiny_folder, monkeypatch):
    """train.compile: true is torch.compile's default mode; reduce-overhead is passed on, and each
    D and G step then tells torch that a new CUDA-graph step begins (a wiring check: the compiled
    maths are checked against eager in the slow and GPU suites)."""
    modes, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda mod, mode=None: modes.append(mode) or mod)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    make_gan(tiny_folder, compile=True)
    assert modes == [None, None]  # G and D, each compiled once
    gan, batches = make_gan(tiny_folder, compile="reduce-overhead", n_dis=2)
    assert modes[2:] == ["reduce-overhead"] * 2 and not marks
    gan.train_iteration(batches)
    assert len(marks) == 3  # two D steps and one G step


def _adam_first_step(params: dict, grads: dict, lr: float, eps: float) -> dict:
    """Adam's first update with beta1 = 0, by hand: m = g, v = (1 - beta2) g^2, and after bias
    correction the step is lr * g / (|g| + eps), whatever beta2 is."""
    return {k: p - lr * grads[k] / (grads[k].abs() + eps) if grads[k] is not None else p for k, p in params.items()}


def _hand_gan(folder):
    import copy

    gan, batches = make_gan(folder, betas_g=[0.0, 0.999], betas_d=[0.0, 0.999], n_dis=1)
    gan.train()
    return gan, batches, copy.deepcopy(gan.G), copy.deepcopy(gan.D)


def test_d_step_is_one_adam_step_on_the_hinge_loss_of_real_against_fake(tiny_folder):
    """D's update against an independent computation: the same fakes, one D forward in training
    mode, L_D = mean(relu(1 - D(x, y))) + mean(relu(1 + D(G(z), y_f))) written out, autograd,
    and Adam's first step by hand. Swapping real and fake, or the sign, fails it."""
    gan, batches, G, D = _hand_gan(tiny_folder)
    x, y = next(batches)
    n, t = x.shape[0], gan.cfg.train
    torch.manual_seed(123)
    loss, mean_real, mean_fake = gan.d_step(x, y)
    torch.manual_seed(123)
    z = torch.randn(n, gan.cfg.model.z_dim)
    yf = torch.randint(0, gan.cfg.model.num_classes, (n,))
    with torch.no_grad():
        fake = G(z, yf)
    logits = D(torch.cat([x, fake]), torch.cat([y, yf]))
    real_l, fake_l = logits[:n], logits[n:]
    hand = torch.clamp(1 - real_l, min=0).mean() + torch.clamp(1 + fake_l, min=0).mean()
    assert float(loss) == pytest.approx(float(hand.detach()), rel=1e-5)
    assert float(mean_real) == pytest.approx(float(real_l.mean()), rel=1e-5, abs=1e-6)
    assert float(mean_fake) == pytest.approx(float(fake_l.mean()), rel=1e-5, abs=1e-6)
    params = dict(D.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(hand, list(params.values()), allow_unused=True)))
    expected = _adam_first_step({k: p.detach() for k, p in params.items()}, grads, t.lr_d, t.adam_eps)
    moved = 0
    for k, p in gan.D.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=1e-4, atol=1e-6, msg=k)
        moved += int(not torch.equal(p.detach(), params[k].detach()))
    assert moved > 10
    for k, p in gan.G.named_parameters():  # G is not touched by D's step
        assert torch.equal(p, dict(G.named_parameters())[k]), k


def test_g_step_is_one_adam_step_on_minus_d_of_fakes_and_leaves_d_alone(tiny_folder):
    """G's update against an independent computation: L_G = -mean(D(G(z), y_f)) with D frozen,
    autograd through G only, Adam's first step by hand; D's weights do not move."""
    gan, _, G, D = _hand_gan(tiny_folder)
    t = gan.cfg.train
    torch.manual_seed(321)
    loss = gan.g_step()
    torch.manual_seed(321)
    z = torch.randn(t.batch_size, gan.cfg.model.z_dim)
    yf = torch.randint(0, gan.cfg.model.num_classes, (t.batch_size,))
    hand = -D(G(z, yf), yf).mean()
    assert float(loss) == pytest.approx(float(hand.detach()), rel=1e-5)
    params = dict(G.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(hand, list(params.values()), allow_unused=True)))
    expected = _adam_first_step({k: p.detach() for k, p in params.items()}, grads, t.lr_g, t.adam_eps)
    for k, p in gan.G.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=1e-4, atol=1e-6, msg=k)
    for k, p in gan.D.named_parameters():
        assert torch.equal(p, dict(D.named_parameters())[k]) and p.requires_grad, k
