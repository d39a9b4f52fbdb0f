"""Differentiable augmentation: each op against a direct computation, gradients to G, the
adaptive probability against hand-computed values, slicing for torchrun, and exact resume."""

import pytest
import torch

from sagan.augment import POLICIES, DiffAugment, apply, draw, parse_policy
from sagan.console import UserError
from sagan.models import Discriminator, Generator

from helpers import tiny_config


def _loop_translation(x, dy, dx):
    out = torch.zeros_like(x)
    n, c, h, w = x.shape
    for b in range(n):
        for i in range(h):
            for j in range(w):
                si, sj = i - int(dy[b]), j - int(dx[b])
                if 0 <= si < h and 0 <= sj < w:
                    out[b, :, i, j] = x[b, :, si, sj]
    return out


def _loop_cutout(x, cy, cx, size_y, size_x):
    out = x.clone()
    n, c, h, w = x.shape
    for b in range(n):
        top, left = int(cy[b]) - size_y // 2, int(cx[b]) - size_x // 2
        for i in range(max(0, top), min(h, top + size_y)):
            for j in range(max(0, left), min(w, left + size_x)):
                out[b, :, i, j] = 0
    return out


def test_each_op_matches_a_direct_computation_for_a_fixed_draw():
    torch.manual_seed(3)
    x = torch.rand(4, 3, 16, 12) * 2 - 1
    shift = torch.tensor([-0.5, 0.1, 0.3, 0.49])
    assert torch.allclose(apply("brightness", x, shift), x + shift.view(4, 1, 1, 1))
    f = torch.tensor([0.0, 0.5, 1.0, 1.9])
    pix_mean = x.mean(1, keepdim=True)  # saturation: towards each pixel's grey
    assert torch.allclose(apply("saturation", x, f), pix_mean + f.view(4, 1, 1, 1) * (x - pix_mean))
    img_mean = torch.stack([x[b].mean() for b in range(4)]).view(4, 1, 1, 1)  # contrast: towards the image mean
    assert torch.allclose(apply("contrast", x, f), img_mean + f.view(4, 1, 1, 1) * (x - img_mean), atol=1e-6)
    shifts = torch.tensor([[2, -1], [-2, 2], [0, 0], [1, -2]])  # (dy, dx); 1/8 of 16 and 12 is 2
    assert torch.equal(apply("translation", x, shifts), _loop_translation(x, shifts[:, 0], shifts[:, 1]))
    centres = torch.tensor([[0, 0], [8, 6], [16, 12], [5, 11]])  # corners and edges are clipped
    assert torch.equal(apply("cutout", x, centres), _loop_cutout(x, centres[:, 0], centres[:, 1], 8, 6))


def test_draws_stay_in_the_papers_ranges():
    torch.manual_seed(0)
    n = 4000
    b, s, c = draw("brightness", n, 32, 32, "cpu"), draw("saturation", n, 32, 32, "cpu"), draw("contrast", n, 32, 32, "cpu")
    assert -0.5 <= b.min() and b.max() < 0.5 and 0 <= s.min() and s.max() < 2 and 0.5 <= c.min() and c.max() < 1.5
    t = draw("translation", n, 32, 32, "cpu")
    assert t.min() == -4 and t.max() == 4  # up to 1/8 of the side, both ways, whole pixels
    cut = draw("cutout", n, 32, 32, "cpu")
    assert cut.min() == 0 and cut.max() == 32 and cut.dtype == torch.long


def test_policies_parse_and_unknown_names_are_clear():
    assert parse_policy("color,translation,cutout") == POLICIES["color"] + ("translation", "cutout")
    assert parse_policy("") == () and parse_policy(None) == ()
    with pytest.raises(UserError, match="unknown augmentation 'colour'"):
        parse_policy("colour")


@pytest.mark.parametrize("op", ["brightness", "saturation", "contrast", "translation", "cutout"])
def test_gradients_reach_the_generator_through_every_op(op):
    G = Generator(32, ch=8, z_dim=8, num_classes=2, attn=[])
    D = Discriminator(32, ch=8, num_classes=2, attn=[])
    aug = DiffAugment({"brightness": "color", "saturation": "color", "contrast": "color"}.get(op, op), torch.device("cpu"))
    aug.ops = (op,)
    y = torch.tensor([0, 1, 1, 0])
    D(aug(G(torch.randn(4, 8), y)), y).mean().backward()
    grads = [p.grad for p in G.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_adaptive_probability_follows_the_sign_of_d_on_real_images():
    aug = DiffAugment("color", torch.device("cpu"), target=0.6, kimg=0.1)  # p crosses [0, 1] in 100 images
    assert aug.p == 0.0
    aug.observe(torch.tensor([1.0, 2.0, 3.0, -1.0]))  # r_t = (1 + 1 + 1 - 1) / 4 = 0.5 < 0.6
    aug.adjust()
    assert aug.p == 0.0 and aug.last_rt == 0.5  # clipped at 0
    for logits in ([1.0] * 10, [2.0] * 10):  # r_t = 1 > 0.6: up by 10 images / 100
        aug.observe(torch.tensor(logits))
    aug.adjust()
    assert aug.p == pytest.approx(0.2) and aug.last_rt == 1.0
    aug.observe(torch.tensor([-1.0] * 5 + [1.0] * 5))  # r_t = 0 < 0.6: down by 10 / 100
    aug.adjust()
    assert aug.p == pytest.approx(0.1)
    aug.adjust()  # nothing observed since: unchanged
    assert aug.p == pytest.approx(0.1)
    fixed = DiffAugment("color", torch.device("cpu"))
    fixed.observe(torch.tensor([5.0]))
    fixed.adjust()
    assert fixed.p == 1.0  # without a target DiffAugment always applies


def test_each_process_takes_its_slice_of_the_draws_for_the_global_batch():
    x = torch.randn(8, 3, 16, 16)
    aug = DiffAugment("color,translation,cutout", torch.device("cpu"))
    torch.manual_seed(5)
    whole = aug(x)
    torch.manual_seed(5)
    first = aug(x[:4], rank=0, world=2)
    torch.manual_seed(5)
    second = aug(x[4:], rank=1, world=2)
    assert torch.equal(torch.cat([first, second]), whole)


def test_with_probability_p_only_some_images_change():
    torch.manual_seed(0)
    x = torch.randn(400, 1, 8, 8)
    aug = DiffAugment("cutout", torch.device("cpu"))
    aug.p = 0.3
    changed = (aug(x) != x).flatten(1).any(1).float().mean()
    assert 0.2 < changed < 0.4
    aug.p = 0.0
    assert torch.equal(aug(x), x)


def test_resume_with_augmentation_equals_an_uninterrupted_run(tiny_folder, tmp_path):
    from sagan.training import Trainer

    def cfg(steps):
        return tiny_config(tiny_folder, steps=steps, ckpt_every=100, diffaug="color,translation,cutout",
                           diffaug_target=0.6, diffaug_interval=1, diffaug_kimg=0.05)

    straight = Trainer(cfg(4), tmp_path / "a", progress=False)
    straight.fit()
    Trainer(cfg(2), tmp_path / "b", progress=False).fit()
    resumed = Trainer(cfg(4), tmp_path / "b", progress=False)
    resumed.fit()
    a, b = straight.state_dict(), resumed.state_dict()
    assert a["augment"]["p"] == b["augment"]["p"] and 0 < a["augment"]["p"] <= 1
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    import json

    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all("aug_p" in r and "aug_rt" in r for r in rows)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_augmented_steps_run_under_mixed_precision(tiny_folder, precision):
    from sagan.config import complete
    from sagan.data import BatchStream, open_dataset
    from sagan.gan import GANState

    cfg = tiny_config(tiny_folder, precision=precision, diffaug="color,translation,cutout")
    data = open_dataset(cfg.data, 32, None, workers=0, progress=False)
    gan = GANState(complete(cfg, data, workers=0), torch.device("cpu"))
    batches = BatchStream(data, cfg.train.batch_size, seed=0)
    before = {k: v.clone() for k, v in gan.D.state_dict().items()}
    for _ in range(2):
        stats, _ = gan.train_iteration(batches)
    assert all(torch.isfinite(v).item() for v in stats)
    assert any(not torch.equal(before[k], v) for k, v in gan.D.state_dict().items())
