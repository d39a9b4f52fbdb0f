"""Building blocks of SAGAN: spectral-normalised layer factories, self-attention and
class-conditional batch norm.

Layers are made through *factories* in the BigGAN-PyTorch style: a model receives
``which_conv``/``which_linear``/``which_embedding`` callables (built with
``functools.partial``) and never decides for itself whether a layer is spectral-normalised.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

__all__ = [
    "spectral_norm",
    "LayerFactory",
    "SelfAttention2d",
    "ConditionalBatchNorm2d",
    "record_attention",
    "avg_pool2x2",
    "avg_pool2x2_slices",
    "upsample2x",
]


class _FP32SpectralNorm(_SpectralNorm):
    """PyTorch's spectral-norm parametrization with the power iteration and sigma kept in fp32.

    Under autocast the matrix-vector products of the power iteration would otherwise run in
    bf16/fp16, which makes sigma (and so every weight) noisy.
    """

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=weight.device.type, enabled=False):
            return super().forward(weight.float()).to(weight.dtype)


def spectral_norm(module: nn.Module, eps: float = 1e-6) -> nn.Module:
    """Spectral-normalise ``module.weight`` (Miyato et al. 2018) in place and return the module.

    Uses ``torch.nn.utils.parametrizations`` with one power iteration per training-mode forward
    and a persistent ``u`` (and ``v``) buffer. Works on Conv, Linear and Embedding layers.
    """
    parametrize.register_parametrization(
        module, "weight", _FP32SpectralNorm(module.weight, n_power_iterations=1, dim=0, eps=eps)
    )
    return module


def _build(layer_cls: type, *args, sn: bool, eps: float, init: str, **kwargs) -> nn.Module:
    layer = layer_cls(*args, **kwargs)
    if init == "ortho":
        nn.init.orthogonal_(layer.weight)
    elif init == "xavier":
        nn.init.xavier_uniform_(layer.weight)
    elif init == "normal":
        nn.init.normal_(layer.weight, 0.0, 0.02)
    elif init != "default":
        raise ValueError(f"unknown init {init!r}; use ortho, xavier, normal or default")
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return spectral_norm(layer, eps) if sn else layer


class LayerFactory:
    """The three layer constructors a model needs, with or without spectral norm.

    ``conv3``/``conv1`` build 3x3 (padding 1) and 1x1 convs, ``linear`` builds linear layers and
    ``embedding`` builds class embeddings. Each is a ``functools.partial``.
    """

    def __init__(self, sn: bool = True, eps: float = 1e-6, init: str = "ortho"):
        self.sn, self.eps, self.init = sn, eps, init
        make = functools.partial(_build, sn=sn, eps=eps, init=init)
        self.conv3 = functools.partial(make, nn.Conv2d, kernel_size=3, padding=1)
        self.conv1 = functools.partial(make, nn.Conv2d, kernel_size=1, padding=0)
        self.linear = functools.partial(make, nn.Linear)
        self.embedding = functools.partial(make, nn.Embedding)


class SelfAttention2d(nn.Module):
    """SAGAN self-attention with the semantics of the official ``non_local.py``.

    Query (theta) and key (phi) are 1x1 convs to C/8 channels, value (g) a 1x1 conv to C/2.
    Keys and values are 2x2 max-pooled (``pool=False`` turns that off), so there are N/4 keys
    for N = H*W queries. Attention is an *unscaled* softmax over keys; a 1x1 conv (o) maps the
    result back to C channels and the block returns ``x + gamma * o`` with a learnable scalar
    ``gamma`` initialised to 0. Every conv is built by ``layers`` (spectral-normalised by default).

    The training path calls ``F.scaled_dot_product_attention``, with query and key zero-padded to
    the value's C/2 channels (which leaves ``q @ k^T`` unchanged) so that the flash kernels of the
    CPU and of CUDA accept them, and the N x N/4 attention matrix is never materialised. ``forward(x, return_attention=True)`` (or the
    :func:`record_attention` context) instead computes the explicit softmax and returns the maps,
    shaped ``(B, N, N_keys)``; rows sum to 1.
    """

    def __init__(self, channels: int, layers: LayerFactory | None = None, pool: bool = True):
        super().__init__()
        if channels < 8 or channels % 8:
            raise ValueError(f"self-attention needs a channel count divisible by 8, got {channels}")
        layers = layers or LayerFactory()
        self.channels, self.pool = channels, pool
        self.theta = layers.conv1(channels, channels // 8, bias=False)
        self.phi = layers.conv1(channels, channels // 8, bias=False)
        self.g = layers.conv1(channels, channels // 2, bias=False)
        self.o = layers.conv1(channels // 2, channels, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))
        self.recording = False
        self.last_attention: torch.Tensor | None = None

    def key_shape(self, height: int, width: int) -> tuple[int, int]:
        """Spatial shape of the key grid for an ``height x width`` feature map."""
        return (height // 2, width // 2) if self.pool else (height, width)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        b, c, h, w = x.shape
        # contiguous, so that the last dimension has stride 1 whatever x's memory layout:
        # CUDA's fused SDPA kernels refuse other strides and fall back to the N x N/4 matrix
        q = self.theta(x).flatten(2).transpose(1, 2).contiguous()  # B, N, C/8
        k, v = self.phi(x), self.g(x)
        if self.pool:
            k, v = F.max_pool2d(k, 2), F.max_pool2d(v, 2)
        k = k.flatten(2).transpose(1, 2).contiguous()  # B, N/4, C/8
        v = v.flatten(2).transpose(1, 2).contiguous()  # B, N/4, C/2
        attn = None
        if return_attention or self.recording:
            attn = torch.softmax(q @ k.transpose(1, 2), dim=-1)
            out = attn @ v
        else:
            # zero-pad query and key from C/8 to v's C/2 channels: q @ k^T is unchanged, and with
            # equal head sizes SDPA can take its flash kernels (CPU and CUDA); with unequal ones
            # the CPU silently falls back to the math path, which builds the N x N/4 matrix
            pad = v.shape[-1] - q.shape[-1]
            q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
            out = F.scaled_dot_product_attention(
                q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0
            ).squeeze(1)
        out = out.transpose(1, 2).reshape(b, c // 2, h, w)
        y = x + self.gamma * self.o(out)
        if self.recording:
            self.last_attention = attn.detach()
        return (y, attn) if return_attention else y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, pool={self.pool}"


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[list[SelfAttention2d]]:
    """Within the block, every :class:`SelfAttention2d` of ``model`` keeps its last attention
    map in ``.last_attention``. Yields the attention modules in forward order."""
    mods = [m for m in model.modules() if isinstance(m, SelfAttention2d)]
    for m in mods:
        m.recording = True
    try:
        yield mods
    finally:
        for m in mods:
            m.recording = False


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm without its own affine, followed by a class-dependent gain and bias.

    Three modes:

    * ``num_classes > 0`` and ``shared_dim == 0`` (SAGAN/SNGAN): a per-class gain and bias, looked
      up in embeddings; the gain starts at 1 and the bias at 0. ``y`` holds class indices.
    * ``shared_dim > 0`` (BigGAN): ``gain = 1 + W_g e`` and ``bias = W_b e`` with linear layers
      applied to a shared class embedding ``e`` that the generator passes in as ``y``.
    * ``num_classes == 0`` and ``shared_dim == 0``: plain BN with a learned affine; ``y`` is ignored.

    ``layers`` builds the embeddings/linears; pass a factory with ``sn=False`` to keep them free
    of spectral norm (the default in :class:`sagan.models.Generator`).
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int = 0,
        shared_dim: int = 0,
        layers: LayerFactory | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,
        one_plus: bool | None = None,
    ):
        super().__init__()
        layers = layers or LayerFactory(sn=False)
        # per-class mode: gain = E(y) (E starting at 1) without SN, gain = 1 + E(y) with SN.
        # one_plus fixes the form explicitly, so that a plain-weight twin of an SN model
        # (an exported generator) computes the same function.
        one_plus = layers.sn if one_plus is None else one_plus
        self.num_features, self.num_classes, self.shared_dim = num_features, num_classes, shared_dim
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.mode = "shared" if shared_dim > 0 else ("class" if num_classes > 0 else "plain")
        if self.mode == "shared":
            self.gain = layers.linear(shared_dim, num_features, bias=False)
            self.bias = layers.linear(shared_dim, num_features, bias=False)
        elif self.mode == "class" and not one_plus:
            self.gain = nn.Embedding(num_classes, num_features)
            self.bias = nn.Embedding(num_classes, num_features)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)
        elif self.mode == "class":
            # A spectral-normalised all-ones matrix would not give a gain of 1, so with SN the
            # gain is parametrised as 1 + E(y), with E starting from a small random matrix.
            self.gain = layers.embedding(num_classes, num_features)
            self.bias = layers.embedding(num_classes, num_features)
        else:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias_ = nn.Parameter(torch.zeros(num_features))
        self._one_plus = self.mode == "shared" or (self.mode == "class" and one_plus)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.bn(x)
        if self.mode == "plain":
            return h * self.weight.view(1, -1, 1, 1) + self.bias_.view(1, -1, 1, 1)
        if y is None:
            raise ValueError("this conditional batch norm needs y (class labels or a shared embedding)")
        if self.mode == "class" and y.is_floating_point():
            # (B, num_classes) class weights: a mixture of the class embeddings (one-hot rows
            # give exactly the lookup), for class interpolation
            gain, bias = y @ self.gain.weight, y @ self.bias.weight
        else:
            gain, bias = self.gain(y), self.bias(y)
        gain = 1 + gain if self._one_plus else gain
        return h * gain.view(-1, self.num_features, 1, 1) + bias.view(-1, self.num_features, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, mode={self.mode}, num_classes={self.num_classes}"


def avg_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling, stride 2, equal in value to ``F.avg_pool2d(x, 2)`` forward and backward.
    On CUDA it runs as :func:`avg_pool2x2_slices`: on an H200, ``avg_pool2d``'s backward in
    channels_last took 15% of the imagenet128 step's CUDA time (``benchmarks/RESULTS.md``). On the
    CPU the kernel is the faster of the two (the slices made the demo's step 3% and cifar10_cpu's
    bf16 step 32% slower on 2 cores, ``benchmarks/pooling.py``), so it is used there."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"avg_pool2x2 needs an even height and width, got {tuple(x.shape[-2:])}")
    return avg_pool2x2_slices(x) if x.is_cuda else F.avg_pool2d(x, 2)


def avg_pool2x2_slices(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling built from four strided slices, summed in ``avg_pool2d``'s order (in
    float32 for half types), so that its backward is elementwise in any memory format; even sizes."""
    y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    out = ((y[..., 0::2, 0::2] + y[..., 0::2, 1::2]) + y[..., 1::2, 0::2]) + y[..., 1::2, 1::2]
    return (out * 0.25).to(x.dtype)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling, as in the SNGAN/BigGAN generator blocks."""
    return F.interpolate(x, scale_factor=2, mode="nearest")

