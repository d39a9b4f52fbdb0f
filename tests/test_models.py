import pytest
import torch
import torch.nn.functional as F

from sagan.layers import LayerFactory, SelfAttention2d
from sagan.models import DBlock, Discriminator, GBlock, Generator, truncate


@pytest.mark.parametrize("res", [32, 64, 128, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes_for_every_resolution(res, channels):
    G = Generator(res, ch=4, z_dim=16, num_classes=3, img_channels=channels, attn=[16])
    D = Discriminator(res, ch=4, num_classes=3, img_channels=channels, attn=[16])
    y = torch.tensor([0, 2])
    x = G(torch.randn(2, 16), y)
    assert x.shape == (2, channels, res, res)
    assert x.abs().max() <= 1.0
    assert D(x, y).shape == (2,)


@pytest.mark.parametrize(
    "res,g_attn,d_attn", [(32, [8, 32], [16, 8]), (64, [64], [32]), (128, [16, 64], [64, 8]), (256, [128], [64])]
)
def test_attention_sits_at_the_requested_feature_maps(res, g_attn, d_attn):
    G = Generator(res, ch=8, z_dim=8, attn=g_attn)
    D = Discriminator(res, ch=8, attn=d_attn)
    for net, inp, attn in ((G, (torch.randn(1, 8),), g_attn), (D, (torch.randn(1, 3, res, res),), d_attn)):
        seen = []
        hooks = [m.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[-1]))
                 for m in net.modules() if isinstance(m, SelfAttention2d)]
        net.eval()(*inp)
        for h in hooks:
            h.remove()
        assert sorted(seen) == sorted(attn)


def _attention_sizes(net, *inputs):
    """The feature-map sizes every self-attention layer of ``net`` sees in one forward."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[-1]))
             for m in net.modules() if isinstance(m, SelfAttention2d)]
    net.eval()(*inputs)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("res,where", [(32, 16), (64, 32), (128, 64), (256, 64)])
def test_default_attention_is_half_resolution_at_most_64(res, where):
    G, D = Generator(res, ch=8, z_dim=8), Discriminator(res, ch=8)
    assert _attention_sizes(G, torch.randn(1, 8)) == [where]
    assert _attention_sizes(D, torch.randn(1, 3, res, res)) == [where]


def test_unsupported_resolution_and_attention_are_clear_errors():
    with pytest.raises(ValueError, match="unsupported resolution 48"):
        Generator(48)
    with pytest.raises(ValueError, match="no 64x64 feature map"):
        Generator(32, attn=[64])
    with pytest.raises(ValueError, match="img_channels"):
        Discriminator(32, img_channels=2)


def test_generator_block_matches_reference():
    plain = LayerFactory(sn=False)
    blk = GBlock(8, 4, plain, lambda c: __import__("sagan").ConditionalBatchNorm2d(c), upsample=True)
    x = torch.randn(3, 8, 4, 4)
    bn = lambda t: F.batch_norm(t, None, None, training=True, eps=1e-5)  # noqa: E731
    up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    h = F.conv2d(up(F.relu(bn(x))), blk.conv1.weight, blk.conv1.bias, padding=1)
    h = F.conv2d(F.relu(bn(h)), blk.conv2.weight, blk.conv2.bias, padding=1)
    ref = h + F.conv2d(up(x), blk.conv_sc.weight, blk.conv_sc.bias)
    assert torch.allclose(blk(x, None), ref, atol=1e-5)


@pytest.mark.parametrize("pre", [True, False])
def test_discriminator_block_matches_reference_and_keeps_shortcut_input(pre):
    plain = LayerFactory(sn=False)
    blk = DBlock(4, 8, plain, preactivation=pre, downsample=True)
    x = torch.randn(2, 4, 8, 8)  # negative entries: an in-place ReLU would change the shortcut
    x_copy = x.clone()
    h = F.relu(x) if pre else x
    h = F.conv2d(h, blk.conv1.weight, blk.conv1.bias, padding=1)
    h = F.avg_pool2d(F.conv2d(F.relu(h), blk.conv2.weight, blk.conv2.bias, padding=1), 2)
    if pre:  # shortcut: conv then pool, on the un-ReLU'd input
        sc = F.avg_pool2d(F.conv2d(x, blk.conv_sc.weight, blk.conv_sc.bias), 2)
    else:  # first block: pool then conv
        sc = F.conv2d(F.avg_pool2d(x, 2), blk.conv_sc.weight, blk.conv_sc.bias)
    assert torch.allclose(blk(x), h + sc, atol=1e-5)
    assert torch.equal(x, x_copy)


def test_first_discriminator_block_has_no_preactivation():
    D = Discriminator(64, ch=8)
    assert [b[0].preactivation for b in D.blocks] == [False, True, True, True, True]


def test_projection_uses_y():
    D = Discriminator(32, ch=8, num_classes=4, attn=[]).eval()
    x = torch.randn(3, 3, 32, 32)
    h = D.features(x)
    y1, y2 = torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3])
    emb = D.embed.weight.detach()
    expected = ((emb[y1] - emb[y2]) * h).sum(1)
    assert torch.allclose(D(x, y1) - D(x, y2), expected, atol=1e-4)
    # psi(h): the linear head on the same features
    assert torch.allclose(D(x, y1), D.linear(h).squeeze(1) + (emb[y1] * h).sum(1), atol=1e-4)


def test_unconditional_models_drop_the_class_terms():
    G = Generator(32, ch=8, z_dim=8, num_classes=0)
    D = Discriminator(32, ch=8, num_classes=0)
    assert D.embed is None and G.shared is None
    x = G(torch.randn(2, 8))
    assert torch.allclose(D(x), D.linear(D.features(x)).squeeze(1), atol=1e-5)


def test_conditional_generator_uses_y():
    G = Generator(32, ch=8, z_dim=8, num_classes=3).eval()
    with torch.no_grad():
        for m in G.modules():
            if hasattr(m, "gain") and isinstance(m.gain, torch.nn.Embedding):
                m.gain.weight.normal_(1.0, 0.5)
    z = torch.randn(2, 8)
    assert not torch.allclose(G(z, torch.tensor([0, 0])), G(z, torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="pass y"):
        G(z)


def test_every_conv_and_linear_is_spectral_normalised_and_g_embeddings_are_not():
    G = Generator(32, ch=8, z_dim=8, num_classes=3)
    D = Discriminator(32, ch=8, num_classes=3)
    for net in (G, D):
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                assert hasattr(m, "parametrizations"), m
    assert hasattr(D.embed, "parametrizations")
    cbn_embeddings = [m for m in G.modules() if isinstance(m, torch.nn.Embedding)]
    assert cbn_embeddings and not any(hasattr(m, "parametrizations") for m in cbn_embeddings)
    G_sn = Generator(32, ch=8, z_dim=8, num_classes=3, embed_sn=True)
    assert all(hasattr(m, "parametrizations") for m in G_sn.modules() if isinstance(m, torch.nn.Embedding))


def test_shared_embedding_variant_conditions_through_one_plus_a_linear_map():
    G = Generator(32, ch=8, z_dim=8, num_classes=5, shared_dim=16)
    assert G.shared.weight.shape == (5, 16)
    assert not hasattr(G.shared, "parametrizations")  # BigGAN: shared embedding without SN ...
    bn = G.blocks[0][0].bn1
    assert hasattr(bn.gain, "parametrizations")  # ... its gain/bias linears with SN
    with torch.no_grad():
        G.shared.weight.normal_()
        x, y = torch.randn(2, bn.num_features, 4, 4), torch.tensor([0, 4])
        e = G.shared.weight[y]
        ref = F.batch_norm(x, None, None, training=True, eps=1e-5)
        ref = ref * (1 + e @ bn.gain.weight.T).view(2, -1, 1, 1) + (e @ bn.bias.weight.T).view(2, -1, 1, 1)
        assert torch.allclose(bn(x, e), ref, atol=1e-5)
        z = torch.randn(1, 8).expand(2, -1)
        out = G.eval()(z, y)
        assert not torch.allclose(out[0], out[1], atol=1e-3)  # the same z, two classes: two images


def test_sample_is_reproducible_and_respects_classes():
    G = Generator(32, ch=8, z_dim=8, num_classes=3).eval()
    a, b = G.sample(4, y=2, seed=7), G.sample(4, y=2, seed=7)
    assert torch.equal(a, b)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(a, G(z, torch.full((4,), 2)), atol=1e-6)
    with pytest.raises(ValueError, match="0..2"):
        G.sample(2, y=3)


def test_truncation_keeps_every_entry_within_threshold():
    z = truncate(torch.randn(2000, 16) * 3, 0.5, torch.Generator().manual_seed(0))
    assert z.abs().max() <= 0.5 and z.shape == (2000, 16)


def test_truncation_resamples_from_the_truncated_normal_and_keeps_the_rest():
    """Entries within the threshold stay as they were; the others are fresh draws from the
    standard normal truncated to [-T, T] (a clamp would pile them on +-T), checked against the
    truncated normal's variance and central mass computed from the error function."""
    import math

    T = 1.0
    z0 = torch.randn(400, 100, generator=torch.Generator().manual_seed(1)) * 3
    z = truncate(z0, T, torch.Generator().manual_seed(2))
    keep = z0.abs() <= T
    assert torch.equal(z[keep], z0[keep])
    fresh = z[~keep].double()
    assert len(fresh) > 20_000 and (fresh.abs() == T).float().mean() < 0.001

    def Phi(x):
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    mass = 2 * Phi(T) - 1
    var = 1 - 2 * T * math.exp(-T * T / 2) / math.sqrt(2 * math.pi) / mass  # truncated normal, symmetric
    assert float(fresh.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(fresh.var()) == pytest.approx(var, rel=0.03)
    central = (2 * Phi(T / 2) - 1) / mass  # share within [-T/2, T/2]
    assert float((fresh.abs() <= T / 2).double().mean()) == pytest.approx(central, abs=0.01)
