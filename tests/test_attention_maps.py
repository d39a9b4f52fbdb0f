import pytest
import torch
from PIL import Image
from torch import nn

from sagan.attention_maps import attention_maps, draw_image, grid_points, keys_to_pixels, query_index
from sagan.layers import LayerFactory, SelfAttention2d
from sagan.models import Generator


def test_query_index_is_the_feature_cell_holding_the_pixel():
    # a 32-px image over an 8x8 feature map: cells of 4x4 pixels, numbered row by row
    assert query_index((0, 0), 32, (8, 8)) == 0
    assert query_index((5, 0), 32, (8, 8)) == 1
    assert query_index((31, 31), 32, (8, 8)) == 63
    assert query_index((9, 13), 32, (8, 8)) == 3 * 8 + 2


def test_each_key_is_spread_evenly_over_the_pixels_it_covers():
    w = torch.zeros(16)
    w[2 * 4 + 1] = 1.0  # key row 2, column 1 of a 4x4 key grid
    m = keys_to_pixels(w, (4, 4), 16)
    expected = torch.zeros(16, 16)
    expected[8:12, 4:8] = 1 / 16
    assert torch.equal(m, expected)


def test_generator_attention_maps_sum_to_one_over_the_image():
    torch.manual_seed(0)
    G = Generator(32, ch=8, z_dim=8, num_classes=3, attn=[16, 32]).eval()
    pts = grid_points(32, 3)
    layers = attention_maps(G, lambda: G.sample(2, y=torch.tensor([0, 2]), seed=1), pts, 32, "G")
    assert [lm.label for lm in layers] == ["G 16x16", "G 32x32"]
    assert [lm.keys for lm in layers] == [(8, 8), (16, 16)]  # pooled keys: N/4 of them
    for lm in layers:
        assert lm.maps.shape == (2, 9, 32, 32)
        assert (lm.maps >= 0).all()
        assert torch.allclose(lm.maps.sum(dim=(2, 3)), torch.ones(2, 9), atol=1e-5)


def _one_key_attention() -> nn.Module:
    """An attention layer whose every query attends to the key holding a bright spot: the query
    is channel 0 (all ones), the key is channel 1 (the spot), so q.k is 50 at the spot, else 0."""
    att = SelfAttention2d(16, LayerFactory(sn=False), pool=True)
    with torch.no_grad():
        for conv in (att.theta, att.phi, att.g, att.o):
            conv.weight.zero_()
        att.theta.weight[0, 0] = 1.0
        att.phi.weight[0, 1] = 1.0
    return nn.Sequential(att)


def test_hand_built_attention_points_at_the_known_key(tmp_path):
    model = _one_key_attention()
    x = torch.zeros(1, 16, 8, 8)
    x[:, 0] = 1.0
    x[0, 1, 5, 2] = 50.0  # feature cell (row 5, col 2) -> pooled key (2, 1)
    pts = [(0, 0), (31, 31), (12, 20)]
    (lm,) = attention_maps(model, lambda: model(x), pts, 32, "D")
    # the key (2, 1) of the 4x4 key grid covers pixels rows 16..23, columns 8..15 of a 32-px image
    block = torch.zeros(32, 32, dtype=torch.bool)
    block[16:24, 8:16] = True
    for q in range(len(pts)):
        m = lm.maps[0, q]
        assert m[block].sum() > 0.999
        r, c = divmod(int(m.argmax()), 32)
        assert block[r, c]
    path = draw_image(torch.zeros(3, 32, 32), pts, [lm], 0, tmp_path / "maps.png")
    img = Image.open(path)
    assert img.size[0] > 200 and img.size[1] > 3 * 100  # a panel per query and layer


@pytest.fixture
def cli(capsys):
    from helpers import sagan_inproc

    return lambda *a: sagan_inproc(capsys, *a)


def test_attention_command_writes_a_png_per_image_and_a_combined_figure(trained_run, tmp_path, cli):
    out = tmp_path / "att"
    r = cli("attention", trained_run, "--n", "2", "--grid", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["attention_maps.png", "image_000.png", "image_001.png"]
    assert "G 16x16, D 16x16" in r.stderr
    r = cli("attention", trained_run, "--n", "1", "--out", out)
    assert r.returncode == 2 and "--overwrite" in r.stderr  # nothing is replaced silently


def test_attention_on_real_images_through_d(trained_run, tmp_path, cli):
    from sagan.config import load_config

    data = load_config(trained_run / "config.yaml").data
    out = tmp_path / "real"
    r = cli("attention", trained_run, "--real", data, "--n", "1", "--points", "3,4", "30,1", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "D 16x16" in r.stderr and "G 16x16" not in r.stderr
    assert (out / "image_000.png").exists()


def test_attention_refuses_a_point_outside_the_image(trained_run, tmp_path, cli):
    r = cli("attention", trained_run, "--points", "40,2", "--out", tmp_path / "x")
    assert r.returncode == 2 and "outside the 32x32 image" in r.stderr
    assert not (tmp_path / "x").exists()


def test_attention_draws_truncated_samples_when_asked(trained_run, tmp_path, cli):
    from sagan.attention_maps import generated_attention
    from sagan.loading import load_networks

    G, D, _ = load_networks(trained_run)
    y = torch.tensor([0, 1])
    plain, _ = generated_attention(G, D, 2, y, 3, [(16, 16)])
    trunc, _ = generated_attention(G, D, 2, y, 3, [(16, 16)], truncation=0.5)
    assert torch.allclose(trunc, G.sample(2, y=y, seed=3, truncation=0.5, batch_size=2))
    assert not torch.allclose(trunc, plain)
    r = cli("attention", trained_run, "--n", "2", "--truncation", "0.5", "--seed", "3", "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
