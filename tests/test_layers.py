import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sagan.layers import ConditionalBatchNorm2d, LayerFactory, SelfAttention2d, record_attention, spectral_norm


def _converge(layer, x, n=30):
    layer.train()
    for _ in range(n):
        layer(x)
    layer.eval()


@pytest.mark.parametrize(
    "make,x",
    [
        (lambda: nn.Linear(20, 30), torch.randn(4, 20)),
        (lambda: nn.Conv2d(6, 12, 3, padding=1), torch.randn(2, 6, 8, 8)),
        (lambda: nn.Embedding(7, 16), torch.tensor([0, 3, 6])),
    ],
)
def test_spectral_norm_gives_unit_sigma(make, x):
    plain = make()
    with torch.no_grad():
        plain.weight.mul_(5.0)
    layer = spectral_norm(plain)
    raw = layer.parametrizations.weight.original.detach()
    assert torch.linalg.matrix_norm(raw.reshape(raw.shape[0], -1), ord=2) > 1.05  # not unit to begin with
    _converge(layer, x)
    w = layer.weight.detach()
    sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=2e-3)


def test_spectral_norm_keeps_persistent_u_and_only_iterates_in_training():
    layer = spectral_norm(nn.Linear(10, 10))
    keys = layer.state_dict().keys()
    assert any(k.endswith("_u") for k in keys) and any(k.endswith("_v") for k in keys)
    layer.eval()
    u = layer.parametrizations.weight[0]._u.clone()
    layer(torch.randn(2, 10))
    assert torch.equal(u, layer.parametrizations.weight[0]._u)
    layer.train()
    layer(torch.randn(2, 10))
    assert not torch.equal(u, layer.parametrizations.weight[0]._u)


def test_spectral_norm_power_iteration_runs_with_autocast_off(monkeypatch):
    # On CPU autocast leaves matrix-vector products alone, so check the mechanism: inside the
    # parametrization, autocast must be disabled (on CUDA it would otherwise run mv in bf16).
    from torch.nn.utils.parametrizations import _SpectralNorm

    seen = []
    original = _SpectralNorm.forward

    def spy(self, weight):
        seen.append((torch.is_autocast_enabled("cpu"), weight.dtype))
        return original(self, weight)

    monkeypatch.setattr(_SpectralNorm, "forward", spy)
    layer = spectral_norm(nn.Linear(64, 64))
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        w = layer.weight
    assert seen == [(False, torch.float32)]
    assert w.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_spectral_norm_sigma_is_fp32_exact_under_cuda_autocast():
    layer = spectral_norm(nn.Linear(512, 512)).cuda().eval()
    ref = layer.weight.detach().clone()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        w = layer.weight
    assert w.dtype == torch.float32 and torch.equal(w.detach(), ref)


def _naive_attention(m: SelfAttention2d, x: torch.Tensor, pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent reference: explicit bmm and softmax from the module's (spectral-normalised) weights."""
    b, c, h, w = x.shape
    theta = F.conv2d(x, m.theta.weight).reshape(b, c // 8, h * w)
    phi = F.conv2d(x, m.phi.weight)
    g = F.conv2d(x, m.g.weight)
    if pool:
        phi, g = F.max_pool2d(phi, 2), F.max_pool2d(g, 2)
    phi, g = phi.reshape(b, c // 8, -1), g.reshape(b, c // 2, -1)
    beta = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)  # B, N, N_keys
    o = torch.bmm(g, beta.transpose(1, 2)).reshape(b, c // 2, h, w)
    return x + m.gamma * F.conv2d(o, m.o.weight), beta


def test_attention_with_zero_gamma_is_identity():
    m = SelfAttention2d(32)
    assert m.gamma.item() == 0.0
    x = torch.randn(2, 32, 8, 8)
    assert torch.equal(m(x), x)


@pytest.mark.parametrize("pool", [True, False])
def test_sdpa_path_matches_naive_reference(pool):
    m = SelfAttention2d(32, pool=pool).eval()
    with torch.no_grad():
        m.gamma.fill_(0.7)
    x = torch.randn(3, 32, 8, 6)
    ref, beta = _naive_attention(m, x, pool)
    out = m(x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    out2, attn = m(x, return_attention=True)
    assert torch.allclose(out2, ref, atol=1e-5, rtol=1e-5)
    assert attn.shape == (3, 48, 12 if pool else 48)
    assert torch.allclose(attn, beta, atol=1e-6)


def test_attention_rows_sum_to_one_and_are_unscaled():
    m = SelfAttention2d(16).eval()
    x = torch.randn(2, 16, 8, 8) * 3
    _, attn = m(x, return_attention=True)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 64), atol=1e-5)
    # unscaled softmax: equals softmax of the raw dot products, not of dot / sqrt(d)
    q = F.conv2d(x, m.theta.weight).flatten(2).transpose(1, 2)
    k = F.max_pool2d(F.conv2d(x, m.phi.weight), 2).flatten(2)
    assert torch.allclose(attn, torch.softmax(q @ k, -1), atol=1e-6)
    assert not torch.allclose(attn, torch.softmax(q @ k / 2**0.5, -1), atol=1e-3)


def test_attention_channels_and_spectral_norm_on_every_conv():
    m = SelfAttention2d(64)
    assert (m.theta.out_channels, m.phi.out_channels, m.g.out_channels, m.o.out_channels) == (8, 8, 32, 64)
    for conv in (m.theta, m.phi, m.g, m.o):
        assert hasattr(conv, "parametrizations")
    plain = SelfAttention2d(64, LayerFactory(sn=False))
    assert not hasattr(plain.theta, "parametrizations")


def test_record_attention_collects_maps():
    net = nn.Sequential(SelfAttention2d(16), nn.ReLU(), SelfAttention2d(16, pool=False))
    with record_attention(net) as mods:
        net(torch.randn(1, 16, 4, 4))
    assert [tuple(m.last_attention.shape) for m in mods] == [(1, 16, 4), (1, 16, 16)]
    assert not any(m.recording for m in mods)


def test_conditional_bn_starts_as_plain_bn_and_uses_y():
    bn = ConditionalBatchNorm2d(4, num_classes=3)
    x = torch.randn(6, 4, 5, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ref = F.batch_norm(x, None, None, training=True, eps=bn.bn.eps)
    assert torch.allclose(bn(x, y), ref, atol=1e-5)  # gain 1, bias 0 at init
    with torch.no_grad():
        bn.gain.weight[1] = torch.tensor([2.0, 3.0, 4.0, 5.0])
        bn.bias.weight[2] = torch.tensor([1.0, -1.0, 0.5, 0.0])
    out = bn(x, y)
    assert torch.allclose(out[1], ref[1] * torch.tensor([2.0, 3.0, 4.0, 5.0]).view(4, 1, 1), atol=1e-5)
    assert torch.allclose(out[2], ref[2] + torch.tensor([1.0, -1.0, 0.5, 0.0]).view(4, 1, 1), atol=1e-5)
    assert torch.allclose(out[0], ref[0], atol=1e-5)
    # the same input with another label gives another output
    assert not torch.allclose(bn(x, torch.ones(6, dtype=torch.long)), bn(x, torch.full((6,), 2)))


def test_conditional_bn_shared_embedding_is_one_plus_linear():
    bn = ConditionalBatchNorm2d(4, num_classes=3, shared_dim=5)
    x, e = torch.randn(6, 4, 3, 3), torch.randn(6, 5)
    ref = F.batch_norm(x, None, None, training=True, eps=bn.bn.eps)
    gain = 1 + e @ bn.gain.weight.T
    bias = e @ bn.bias.weight.T
    assert torch.allclose(bn(x, e), ref * gain[:, :, None, None] + bias[:, :, None, None], atol=1e-5)


def test_unconditional_bn_is_plain_affine_bn():
    bn = ConditionalBatchNorm2d(4)
    x = torch.randn(6, 4, 3, 3)
    assert torch.allclose(bn(x), F.batch_norm(x, None, None, training=True, eps=bn.bn.eps), atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_sdpa_gets_inputs_that_fused_kernels_accept(monkeypatch, layout):
    # CUDA's fused kernels need a unit stride in the last dimension; otherwise SDPA falls back
    # to building the N x N/4 matrix
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append([t.stride(-1) for t in (q, k, v)])
        return real(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    m = SelfAttention2d(32)
    m(torch.randn(2, 32, 8, 8).contiguous(memory_format=layout))
    assert seen == [[1, 1, 1]]


def _aten_ops(fn) -> set[str]:
    from torch.profiler import profile

    with profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


def test_attention_takes_the_cpu_flash_kernel_not_the_math_path():
    # with query/key at C/8 and value at C/2 the CPU silently used the math path, which
    # materialises the N x N/4 matrix; zero-padded to equal sizes it takes the flash kernel
    m = SelfAttention2d(64)
    with torch.no_grad():
        m.gamma.fill_(1.0)
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    ops = _aten_ops(lambda: m(x).sum().backward())
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert not any("math" in o for o in ops), sorted(o for o in ops if "math" in o)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"])
def test_attention_runs_on_a_fused_kernel(layout, backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = SelfAttention2d(256).cuda()
    x = torch.randn(4, 256, 64, 64, device="cuda").contiguous(memory_format=layout)
    with sdpa_kernel(getattr(SDPBackend, backend)), torch.autocast("cuda", dtype=torch.bfloat16):
        m(x).float().sum().backward()  # raises if the fused kernel cannot take these inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_avg_pool2x2_equals_avg_pool2d_forward_and_backward(dtype, channels_last):
    """D's pooling by strided slices (what it runs on CUDA): bit for bit torch's avg_pool2d on the
    CPU, values and gradients, in every precision and memory format that training uses."""
    from sagan.layers import avg_pool2x2, avg_pool2x2_slices

    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 1e3, 1e-3):
        x = (torch.randn(3, 8, 16, 12, generator=g) * scale).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        ref, ours = torch.nn.functional.avg_pool2d(x, 2), avg_pool2x2_slices(x)
        assert ours.dtype == dtype and ours.shape == ref.shape == (3, 8, 8, 6)
        assert torch.equal(ours, ref)
        up = torch.randn(ref.shape, generator=g).to(dtype)
        assert torch.equal(torch.autograd.grad(ours, x, up)[0], torch.autograd.grad(ref, x, up)[0])
    with pytest.raises(ValueError, match="even"):
        avg_pool2x2(torch.zeros(1, 1, 5, 4))
