import math

import pytest
import torch
from PIL import Image

from sagan.interpolation import class_path, interpolate, latent_path, seed_latent, slerp
from sagan.models import Generator


def test_slerp_moves_along_the_arc_at_constant_angular_speed():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    t = torch.tensor([0.0, 1 / 3, 0.5, 1.0])
    angle = t * math.pi / 2
    expected = torch.stack([torch.cos(angle), torch.sin(angle), torch.zeros(4)], dim=1)
    assert torch.allclose(slerp(a, b, t), expected, atol=1e-6)


@pytest.mark.parametrize("shared_dim", [0, 6])
@pytest.mark.parametrize("method", ["slerp", "lerp"])
def test_latent_interpolation_endpoints_are_the_seeds_samples(shared_dim, method):
    torch.manual_seed(0)
    G = Generator(32, ch=8, z_dim=8, num_classes=3, attn=[16], shared_dim=shared_dim).eval()
    z = latent_path(8, [4, 9, 2], steps=5, method=method)
    assert z.shape == (9, 8)
    imgs = interpolate(G, z, torch.tensor([1]))
    for pos, seed in ((0, 4), (4, 9), (8, 2)):
        assert torch.allclose(imgs[pos], G.sample(1, y=1, seed=seed)[0], atol=1e-5), (pos, seed)


@pytest.mark.parametrize("shared_dim", [0, 6])
def test_class_interpolation_endpoints_are_the_classes_samples(shared_dim):
    torch.manual_seed(0)
    G = Generator(32, ch=8, z_dim=8, num_classes=3, attn=[16], shared_dim=shared_dim).eval()
    with torch.no_grad():  # untrained per-class gains are all 1 and biases 0: make the classes differ
        for name, p in G.named_parameters():
            if ".gain." in name or ".bias." in name or name.startswith("shared."):
                p.add_(0.5 * torch.randn_like(p))
    w = class_path(3, [0, 2], steps=4)
    assert torch.allclose(w.sum(1), torch.ones(4)) and torch.equal(w[0], torch.tensor([1.0, 0.0, 0.0]))
    imgs = interpolate(G, seed_latent(8, 5).expand(4, -1), w)
    assert torch.allclose(imgs[0], G.sample(1, y=0, seed=5)[0], atol=1e-5)
    assert torch.allclose(imgs[-1], G.sample(1, y=2, seed=5)[0], atol=1e-5)
    assert not torch.allclose(imgs[1], imgs[0], atol=1e-3)  # the middle is neither class


def test_truncated_seed_latents_stay_within_the_threshold_and_match_sampling():
    z = torch.stack([seed_latent(64, s, truncation=0.7) for s in range(20)])
    assert z.abs().max() <= 0.7
    torch.manual_seed(0)
    G = Generator(32, ch=8, z_dim=64, attn=[]).eval()
    assert torch.allclose(interpolate(G, z[3:4], None)[0], G.sample(1, seed=3, truncation=0.7)[0], atol=1e-5)


def test_interpolate_command_writes_a_strip_and_a_looping_gif(trained_run, tmp_path, capsys):
    from helpers import sagan_inproc

    out = tmp_path / "interp"
    r = sagan_inproc(capsys, "interpolate", trained_run, "--seeds", "0", "1", "--steps", "4", "--out", out)
    assert r.returncode == 0, r.stderr
    strip, gif = Image.open(out / "seeds0-1_class0.png"), Image.open(out / "seeds0-1_class0.gif")
    assert strip.size == (4 * 34 + 2, 2 * 34 + 2)  # 4 images per row, slerp and lerp rows, 2-px padding
    assert gif.n_frames == 4 + 2  # forward, then back without repeating the ends
    r = sagan_inproc(capsys, "interpolate", trained_run, "--classes", "0", "1", "--steps", "3", "--out", out)
    assert r.returncode == 0, r.stderr
    assert Image.open(out / "classes0-1_seed0.png").size == (3 * 34 + 2, 34 + 2)
    r = sagan_inproc(capsys, "interpolate", trained_run, "--seeds", "0", "1", "--steps", "4", "--out", out)
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_interpolate_rejects_a_non_positive_frame_rate_before_writing(trained_run, tmp_path, capsys):
    from helpers import sagan_inproc

    r = sagan_inproc(capsys, "interpolate", trained_run, "--fps", "0", "--out", tmp_path / "i")
    assert r.returncode == 2 and "--fps must be positive" in r.stderr and not (tmp_path / "i").exists()
