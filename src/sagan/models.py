"""SAGAN generator and projection discriminator, built from architecture tables.

The tables follow BigGAN-PyTorch's: for each image resolution they give each block's input and
output channel multipliers (times the width ``ch``) and the feature-map resolution after the
block. Self-attention goes after every block whose output resolution is in ``attn``.
This module knows nothing about training.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConditionalBatchNorm2d, LayerFactory, SelfAttention2d, avg_pool2x2, upsample2x

__all__ = ["Generator", "Discriminator", "G_ARCH", "D_ARCH", "SUPPORTED_RESOLUTIONS", "standing_stats", "eval_mode",
           "check_attention", "build_generator", "build_discriminator"]


@dataclass(frozen=True)
class Arch:
    in_mult: tuple[int, ...]
    out_mult: tuple[int, ...]
    resolution: tuple[int, ...]  # feature-map size after each block
    resample: tuple[bool, ...]  # upsample (G) or downsample (D) in each block


G_ARCH: dict[int, Arch] = {
    32: Arch((4, 4, 4), (4, 4, 4), (8, 16, 32), (True,) * 3),
    64: Arch((16, 16, 8, 4), (16, 8, 4, 2), (8, 16, 32, 64), (True,) * 4),
    128: Arch((16, 16, 8, 4, 2), (16, 8, 4, 2, 1), (8, 16, 32, 64, 128), (True,) * 5),
    256: Arch((16, 16, 8, 8, 4, 2), (16, 8, 8, 4, 2, 1), (8, 16, 32, 64, 128, 256), (True,) * 6),
}
D_ARCH: dict[int, Arch] = {
    32: Arch((0, 4, 4, 4), (4, 4, 4, 4), (16, 8, 8, 8), (True, True, False, False)),
    64: Arch((0, 1, 2, 4, 8), (1, 2, 4, 8, 16), (32, 16, 8, 4, 4), (True,) * 4 + (False,)),
    128: Arch((0, 1, 2, 4, 8, 16), (1, 2, 4, 8, 16, 16), (64, 32, 16, 8, 4, 4), (True,) * 5 + (False,)),
    256: Arch(
        (0, 1, 2, 4, 8, 8, 16), (1, 2, 4, 8, 8, 16, 16), (128, 64, 32, 16, 8, 4, 4), (True,) * 6 + (False,)
    ),
}
SUPPORTED_RESOLUTIONS = tuple(sorted(G_ARCH))
BOTTOM_WIDTH = 4


def default_attention(resolution: int) -> tuple[int, ...]:
    """Half the image resolution, at most 64 (the paper's best placement at 128 px)."""
    return (min(64, resolution // 2),)


def check_attention(resolution: int, attn, net: str) -> tuple[Arch, tuple[int, ...]]:
    """The architecture table of ``net`` ("G" or "D") at ``resolution`` and the attention
    resolutions (None: the default), or a ValueError saying what is possible."""
    table, who = (G_ARCH, "the generator") if net == "G" else (D_ARCH, "the discriminator")
    if resolution not in table:
        raise ValueError(
            f"unsupported resolution {resolution}; choose one of {', '.join(map(str, SUPPORTED_RESOLUTIONS))}"
        )
    arch = table[resolution]
    attn = default_attention(resolution) if attn is None else tuple(attn)
    bad = [a for a in attn if a not in arch.resolution]
    if bad:
        raise ValueError(
            f"{who} has no {bad[0]}x{bad[0]} feature map at resolution {resolution}; "
            f"attention can sit at {sorted(set(arch.resolution))}"
        )
    return arch, attn


def stage_channels(resolution: int, feature_map: int, ch: int, net: str) -> int:
    """Channels of ``net``'s first block whose output is ``feature_map`` pixels wide."""
    arch = (G_ARCH if net == "G" else D_ARCH)[resolution]
    return arch.out_mult[arch.resolution.index(feature_map)] * ch


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run ``modules`` in eval mode inside the block and restore each one's mode after it."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class GBlock(nn.Module):
    """BN, ReLU, upsample, conv3x3, BN, ReLU, conv3x3; shortcut: upsample, conv1x1."""

    def __init__(self, in_ch: int, out_ch: int, layers: LayerFactory, bn, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.bn1, self.bn2 = bn(in_ch), bn(out_ch)
        self.conv1 = layers.conv3(in_ch, out_ch)
        self.conv2 = layers.conv3(out_ch, out_ch)
        self.learnable_sc = in_ch != out_ch or upsample
        if self.learnable_sc:
            self.conv_sc = layers.conv1(in_ch, out_ch)

    def forward(self, x: torch.Tensor, y) -> torch.Tensor:
        h = F.relu(self.bn1(x, y))
        if self.upsample:
            h, x = upsample2x(h), upsample2x(x)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        if self.learnable_sc:
            x = self.conv_sc(x)
        return h + x


class DBlock(nn.Module):
    """[ReLU], conv3x3, ReLU, conv3x3, [avgpool]; shortcut: conv1x1 and avgpool.

    The pre-activation ReLU is *not* in place: in place it would overwrite the shortcut's input.
    The first block of D has no pre-activation.
    """

    def __init__(self, in_ch: int, out_ch: int, layers: LayerFactory, preactivation: bool, downsample: bool):
        super().__init__()
        self.preactivation, self.downsample = preactivation, downsample
        self.conv1 = layers.conv3(in_ch, out_ch)
        self.conv2 = layers.conv3(out_ch, out_ch)
        self.learnable_sc = in_ch != out_ch or downsample
        if self.learnable_sc:
            self.conv_sc = layers.conv1(in_ch, out_ch)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.preactivation:
            if self.learnable_sc:
                x = self.conv_sc(x)
            return avg_pool2x2(x) if self.downsample else x
        if self.downsample:
            x = avg_pool2x2(x)
        return self.conv_sc(x) if self.learnable_sc else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = avg_pool2x2(h)
        return h + self.shortcut(x)


class Generator(nn.Module):
    """ResNet SAGAN generator.

    Args:
        resolution: output size, one of 32, 64, 128, 256.
        ch: width; block channels are ``ch`` times the table's multipliers.
        z_dim: latent size.
        num_classes: 0 for an unconditional model (plain BN), else class-conditional BN.
        img_channels: 1 (grayscale) or 3 (RGB).
        attn: feature-map resolutions after which a self-attention block is placed
            (None: half the image resolution, at most 64).
        attn_pool: 2x2 max-pool keys and values in attention (the official semantics).
        sn: spectral-normalise every conv and linear layer.
        sn_eps: epsilon of spectral norm.
        shared_dim: > 0 selects BigGAN's shared class embedding of this size (gain = 1 + f(y)).
        embed_sn: spectral-normalise the class embeddings as well (BigGAN leaves them without SN).
        bn_eps, bn_momentum: batch-norm settings.
        init: weight init: ``ortho`` (BigGAN), ``xavier``, ``normal`` or ``default``.

    ``G(z, y)`` returns images in [-1, 1]; ``y`` holds class indices (ignored when unconditional),
    or float class weights of shape ``(B, num_classes)``, which mix the class embeddings (a
    one-hot row gives exactly that class).
    """

    def __init__(
        self,
        resolution: int = 128,
        ch: int = 64,
        z_dim: int = 128,
        num_classes: int = 0,
        img_channels: int = 3,
        attn: tuple[int, ...] | list[int] | None = None,
        attn_pool: bool = True,
        sn: bool = True,
        sn_eps: float = 1e-6,
        shared_dim: int = 0,
        embed_sn: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        init: str = "ortho",
    ):
        super().__init__()
        arch, attn = check_attention(resolution, attn, "G")
        if img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {img_channels}")
        self.resolution, self.z_dim, self.num_classes, self.img_channels = resolution, z_dim, num_classes, img_channels
        layers = LayerFactory(sn=sn, eps=sn_eps, init=init)
        embed_layers = LayerFactory(sn=sn and embed_sn, eps=sn_eps, init=init)
        shared_dim = shared_dim if num_classes > 0 else 0
        # BigGAN: the shared embedding has no SN (unless embed_sn); the linears that map it to
        # each BN's gain and bias are spectral-normalised like every other linear layer.
        self.shared = embed_layers.embedding(num_classes, shared_dim) if shared_dim else None
        bn_layers = layers if shared_dim else embed_layers

        def bn(c: int) -> ConditionalBatchNorm2d:
            return ConditionalBatchNorm2d(c, num_classes, shared_dim, bn_layers, bn_eps, bn_momentum, one_plus=embed_sn)

        c_in = arch.in_mult[0] * ch
        self.bottom_channels = c_in
        self.linear = layers.linear(z_dim, c_in * BOTTOM_WIDTH**2)
        self.blocks = nn.ModuleList()
        for i_m, o_m, res, up in zip(arch.in_mult, arch.out_mult, arch.resolution, arch.resample):
            stage = nn.ModuleList([GBlock(i_m * ch, o_m * ch, layers, bn, up)])
            if res in attn:
                stage.append(SelfAttention2d(o_m * ch, layers, pool=attn_pool))
            self.blocks.append(stage)
        c_out = arch.out_mult[-1] * ch
        self.out_bn = nn.BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum)
        self.out_conv = layers.conv3(c_out, img_channels)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes > 0:
            if y is None:
                raise ValueError(f"this generator is class-conditional ({self.num_classes} classes): pass y")
            if y.is_floating_point() and y.shape[-1] != self.num_classes:
                raise ValueError(f"class weights need {self.num_classes} columns, got shape {tuple(y.shape)}")
            if self.shared is None:
                cond = y
            elif y.is_floating_point():
                cond = y @ self.shared.weight  # a mixture of the shared class embeddings
            else:
                cond = self.shared(y)
        else:
            cond = None
        h = self.linear(z).view(z.shape[0], self.bottom_channels, BOTTOM_WIDTH, BOTTOM_WIDTH)
        for stage in self.blocks:
            h = stage[0](h, cond)
            for attn in stage[1:]:
                h = attn(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        y: torch.Tensor | int | None = None,
        seed: int | None = None,
        truncation: float | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Draw ``n`` images in [-1, 1] (on the model's device).

        ``y`` is a class index, a tensor of ``n`` indices, or None (random classes for a
        conditional model). ``seed`` makes z and random classes reproducible.
        """
        return torch.cat([images for images, _ in self.sample_batches(n, y, seed, truncation, batch_size)])

    @torch.no_grad()
    def sample_batches(self, n: int, y: torch.Tensor | int | None = None, seed: int | None = None,
                       truncation: float | None = None, batch_size: int = 256):
        """The images :meth:`sample` draws, ``batch_size`` at a time, with their labels: only one
        batch of images exists at a time, so ``n`` may be 50,000 on any device."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        z = latents(n, self.z_dim, gen, truncation)
        labels = None
        if self.num_classes > 0:
            if y is None:
                labels = torch.randint(0, self.num_classes, (n,), generator=gen)
            elif isinstance(y, int) or torch.as_tensor(y).ndim == 0:
                labels = torch.full((n,), int(y), dtype=torch.long)
            else:
                labels = torch.as_tensor(y, dtype=torch.long).reshape(-1)
                if labels.numel() != n:
                    raise ValueError(f"y has {labels.numel()} labels for {n} samples")
            if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
                raise ValueError(f"class labels must lie in 0..{self.num_classes - 1}")
        for i in range(0, n, batch_size):
            yb = labels[i : i + batch_size] if labels is not None else None
            yield self.generate(z[i : i + batch_size], yb, batch_size), yb

    @torch.no_grad()
    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
        """Images for the rows of ``z`` with class labels (or class weights) ``y``, run
        ``batch_size`` at a time, on the model's device."""
        device = next(self.parameters()).device
        out = []
        for i in range(0, z.shape[0], batch_size):
            yb = y[i : i + batch_size].to(device) if y is not None else None
            out.append(self(z[i : i + batch_size].to(device), yb))
        return torch.cat(out)


@torch.no_grad()
def standing_stats(G: Generator, batches: int, batch_size: int = 64, seed: int = 0) -> Generator:
    """Re-estimate every batch norm's running statistics of ``G`` from ``batches`` forward passes
    of fresh noise (and uniformly drawn classes), as the cumulative average over the batches
    (BigGAN's "standing statistics"). Only the batch norms run in training mode: spectral norm's
    vectors are left as they are. Returns ``G`` in eval mode."""
    if batches < 1:
        raise ValueError("standing statistics need at least one batch")
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    G.eval()
    gen = torch.Generator().manual_seed(seed)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches
        m.train()
    try:
        for _ in range(batches):
            z = torch.randn(batch_size, G.z_dim, generator=gen)
            y = torch.randint(0, G.num_classes, (batch_size,), generator=gen) if G.num_classes else None
            G.generate(z, y, batch_size)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
            m.eval()
    return G


def latents(n: int, z_dim: int, generator: torch.Generator | None = None,
            truncation: float | None = None) -> torch.Tensor:
    """``n`` standard normal z (truncated at ``truncation`` when given), the draw that
    :meth:`Generator.sample` makes first."""
    z = torch.randn(n, z_dim, generator=generator)
    return truncate(z, truncation, generator) if truncation is not None else z


def truncate(z: torch.Tensor, threshold: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Truncation trick: every entry of ``z`` whose magnitude exceeds ``threshold`` is replaced
    by a draw from the standard normal truncated to [-threshold, threshold], drawn directly
    (inverse CDF), so that any threshold > 0 takes one draw."""
    if not threshold > 0:
        raise ValueError("truncation must be positive")
    z = z.clone()
    mask = z.abs() > threshold
    n = int(mask.sum())
    if n:
        fresh = torch.empty(n, dtype=torch.float64)
        torch.nn.init.trunc_normal_(fresh, 0.0, 1.0, -threshold, threshold, generator=generator)
        z[mask] = fresh.clamp_(-threshold, threshold).to(z.dtype)
    return z


class Discriminator(nn.Module):
    """ResNet SAGAN projection discriminator.

    ``D(x, y) = psi(h) + <embed(y), h>`` where ``h`` is the ReLU'd, sum-pooled feature vector.
    Without classes (``num_classes=0``) the projection term is dropped. Returns one logit per image.
    Arguments mirror :class:`Generator`.
    """

    def __init__(
        self,
        resolution: int = 128,
        ch: int = 64,
        num_classes: int = 0,
        img_channels: int = 3,
        attn: tuple[int, ...] | list[int] | None = None,
        attn_pool: bool = True,
        sn: bool = True,
        sn_eps: float = 1e-6,
        init: str = "ortho",
    ):
        super().__init__()
        arch, attn = check_attention(resolution, attn, "D")
        if img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {img_channels}")
        self.resolution, self.num_classes, self.img_channels = resolution, num_classes, img_channels
        layers = LayerFactory(sn=sn, eps=sn_eps, init=init)
        self.blocks = nn.ModuleList()
        placed = set()
        for i, (i_m, o_m, res, down) in enumerate(zip(arch.in_mult, arch.out_mult, arch.resolution, arch.resample)):
            c_in = img_channels if i == 0 else i_m * ch
            stage = nn.ModuleList([DBlock(c_in, o_m * ch, layers, preactivation=i > 0, downsample=down)])
            if res in attn and res not in placed:  # once per resolution (the 32-px table repeats 8)
                stage.append(SelfAttention2d(o_m * ch, layers, pool=attn_pool))
                placed.add(res)
            self.blocks.append(stage)
        c_out = arch.out_mult[-1] * ch
        self.linear = layers.linear(c_out, 1)
        self.embed = layers.embedding(num_classes, c_out) if num_classes > 0 else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The sum-pooled, ReLU'd feature vector ``h``."""
        h = x
        for stage in self.blocks:
            for m in stage:
                h = m(h)
        return torch.sum(F.relu(h), dim=(2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            if y is None:
                raise ValueError(f"this discriminator is class-conditional ({self.num_classes} classes): pass y")
            out = out + torch.sum(self.embed(y) * h, dim=1)
        return out


def _complete(cfg) -> None:
    if cfg.num_classes is None or cfg.img_channels is None:
        raise ValueError("the model config leaves num_classes or img_channels to the data: complete it first "
                         "(sagan.config.complete, or set both)")


def build_generator(cfg, sn: bool = True) -> Generator:
    """A :class:`Generator` from a complete model config (any object with ``ModelConfig``'s
    fields). ``sn=False`` builds the plain-weight twin that exported files load into."""
    _complete(cfg)
    return Generator(
        resolution=cfg.resolution,
        ch=cfg.g_ch,
        z_dim=cfg.z_dim,
        num_classes=cfg.num_classes,
        img_channels=cfg.img_channels,
        attn=tuple(cfg.g_attn),
        attn_pool=cfg.attn_pool,
        sn=sn,
        sn_eps=cfg.sn_eps,
        shared_dim=cfg.shared_dim,
        embed_sn=cfg.g_embed_sn,
        bn_eps=cfg.bn_eps,
        bn_momentum=cfg.bn_momentum,
        init=cfg.init,
    )


def build_discriminator(cfg) -> Discriminator:
    """A :class:`Discriminator` from a complete model config."""
    _complete(cfg)
    return Discriminator(
        resolution=cfg.resolution,
        ch=cfg.d_ch,
        num_classes=cfg.num_classes,
        img_channels=cfg.img_channels,
        attn=tuple(cfg.d_attn),
        attn_pool=cfg.attn_pool,
        sn_eps=cfg.sn_eps,
        init=cfg.init,
    )


def attention_gammas(model: nn.Module) -> dict[str, float]:
    """The gamma of every self-attention block, keyed by its module name."""
    return {name: float(m.gamma.detach()) for name, m in model.named_modules() if isinstance(m, SelfAttention2d)}
