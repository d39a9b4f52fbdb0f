"""Where attention looks: for a query pixel, each self-attention layer's weights over the keys,
mapped back to image pixels, and the figures that show them (the paper's Figure 1).

A layer at an ``h x w`` feature map of an ``R x R`` image has one query per feature cell; a query
pixel ``(x, y)`` belongs to cell ``(y * h // R, x * w // R)``. With pooled keys (the official
semantics) there are ``h/2 x w/2`` keys, each the max over a 2x2 block of cells, so each key
covers a ``2R/h x 2R/w`` block of pixels. A key's weight is spread evenly over its block, so
the map is a density over pixels that sums to 1, like the softmax row it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .console import UserError
from .layers import record_attention

__all__ = ["LayerMaps", "grid_points", "query_index", "keys_to_pixels", "attention_maps", "generated_attention",
           "real_attention", "draw_image", "combined_figure", "draw_combined"]


@dataclass
class LayerMaps:
    """One attention layer's maps for a batch of images and a list of query points."""

    label: str  # e.g. "G 16x16"
    gamma: float
    feature: tuple[int, int]  # h, w of the feature map
    keys: tuple[int, int]  # h, w of the key grid
    maps: torch.Tensor  # (B, Q, R, R): per-pixel attention of each query, each map sums to 1


def grid_points(size: int, k: int) -> list[tuple[int, int]]:
    """``k x k`` query points (x, y) spread evenly over an image of side ``size``."""
    coords = [int((i + 0.5) * size / k) for i in range(k)]
    return [(x, y) for y in coords for x in coords]


def query_index(point: tuple[int, int], size: int, feature: tuple[int, int]) -> int:
    """Index (row-major) of the feature cell holding pixel ``point = (x, y)``."""
    x, y = point
    h, w = feature
    return (y * h // size) * w + (x * w // size)


def keys_to_pixels(weights: torch.Tensor, keys: tuple[int, int], size: int) -> torch.Tensor:
    """Attention ``weights`` over the key grid (..., kh * kw) as a density over ``size x size``
    pixels: each key's weight spread evenly over the block of pixels it covers."""
    kh, kw = keys
    if size % kh or size % kw:
        raise ValueError(f"a {kh}x{kw} key grid does not tile a {size}x{size} image")
    bh, bw = size // kh, size // kw
    grid = weights.reshape(*weights.shape[:-1], kh, kw)
    return grid.repeat_interleave(bh, dim=-2).repeat_interleave(bw, dim=-1) / (bh * bw)


def attention_maps(model: nn.Module, forward: Callable[[], object], points: list[tuple[int, int]], size: int,
                   prefix: str) -> list[LayerMaps]:
    """Run ``forward()`` (which calls ``model``) while recording attention, and return every
    attention layer of ``model`` with its maps for ``points`` on ``size x size`` images."""
    with torch.no_grad(), record_attention(model) as mods:
        forward()
    out = []
    for m in mods:
        attn = m.last_attention  # (B, N, N_keys)
        if attn is None:
            continue
        n = attn.shape[1]
        side = int(round(n**0.5))
        feature = (side, side)
        keys = m.key_shape(*feature)
        idx = torch.tensor([query_index(p, size, feature) for p in points])
        rows = attn[:, idx, :].float().cpu()  # (B, Q, N_keys)
        out.append(LayerMaps(f"{prefix} {side}x{side}", float(m.gamma.detach()), feature, keys, keys_to_pixels(rows, keys, size)))
        m.last_attention = None
    return out


FLAT = 5.0


def generated_attention(G: nn.Module, D: nn.Module | None, n: int, y: torch.Tensor | None, seed: int,
                        points: list[tuple[int, int]], truncation: float | None = None,
                        ) -> tuple[torch.Tensor, list[LayerMaps]]:
    """``n`` images from ``G`` (classes ``y``, ``seed``) with the maps of G's attention layers,
    then of D's (when given) on the same images. One batch: each layer keeps only the maps of
    the last batch it ran."""
    size = G.resolution
    out = {}

    def generate():
        out["images"] = G.sample(n, y=y, seed=seed, truncation=truncation, batch_size=n)

    layers = attention_maps(G, generate, points, size, "G")
    images = out["images"]
    if D is not None:
        yd = y.to(images.device) if y is not None else None
        layers += attention_maps(D, lambda: D(images, yd), points, size, "D")
    return images, layers


def _panel(ax, image, title: str | None = None):
    from .plots import to_display

    arr = to_display(image)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def _draw_rows(axes, image: torch.Tensor, points, layers: list[LayerMaps], b: int, first_row: int, titles: bool):
    size = image.shape[-1]
    for q, (x, y) in enumerate(points):
        row = axes[first_row + q]
        _panel(row[0], image, "query" if titles and q == 0 else None)
        row[0].plot([x], [y], marker="o", markersize=7, markerfacecolor="none", markeredgecolor="red", markeredgewidth=2)
        row[0].set_ylabel(f"({x}, {y})", fontsize=8)
        for j, lm in enumerate(layers):
            ax = row[1 + j]
            _panel(ax, image, f"{lm.label} (gamma {lm.gamma:.2f})" if titles and q == 0 else None)
            m = lm.maps[b, q].numpy()
            # the colour scale tops out at the map's maximum, but at no less than FLAT times the
            # uniform density: a flat map stays dark instead of painting the image red
            top = max(float(m.max()), FLAT / m.size)
            ax.imshow(m, cmap="jet", alpha=0.55, extent=(-0.5, size - 0.5, size - 0.5, -0.5),
                      vmin=0, vmax=top, interpolation="nearest")
            ax.plot([x], [y], marker="+", markersize=9, color="white", markeredgewidth=2)


def draw_image(image: torch.Tensor, points, layers: list[LayerMaps], b: int, path: Path, title: str = "") -> Path:
    """One image: a row per query point, the image with the query marked, then each layer's
    attention map over the image (red: most attended; the scale runs from 0 to the map's maximum,
    or to 5x the uniform level if that is higher, so that a flat map stays dark)."""
    from .plots import plt, save_figure

    cols = 1 + len(layers)
    fig, axes = plt.subplots(len(points), cols, figsize=(2.0 * cols, 2.0 * len(points) + 0.4), dpi=100, squeeze=False)
    _draw_rows(axes, image, points, layers, b, 0, titles=True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def combined_figure(images: torch.Tensor, points, layers: list[LayerMaps], max_rows: int = 24):
    """Every image, a row per (image, query point), up to ``max_rows`` rows."""
    from .plots import plt

    pairs = [(b, q) for b in range(images.shape[0]) for q in range(len(points))][:max_rows]
    cols = 1 + len(layers)
    fig, axes = plt.subplots(len(pairs), cols, figsize=(2.0 * cols, 2.0 * len(pairs) + 0.4), dpi=80, squeeze=False)
    for r, (b, q) in enumerate(pairs):
        one = [LayerMaps(lm.label, lm.gamma, lm.feature, lm.keys, lm.maps[:, q : q + 1]) for lm in layers]
        _draw_rows(axes, images[b], [points[q]], one, b, r, titles=r == 0)
        axes[r][0].set_ylabel(f"image {b}, ({points[q][0]}, {points[q][1]})", fontsize=8)
    fig.tight_layout()
    return fig


def draw_combined(images: torch.Tensor, points, layers: list[LayerMaps], path: Path, max_rows: int = 24) -> Path:
    """:func:`combined_figure`, saved as a PNG."""
    from .plots import save_figure

    return save_figure(combined_figure(images, points, layers, max_rows), path)


def real_attention(G: nn.Module, D: nn.Module | None, source, n: int, seed: int, points: list[tuple[int, int]]):
    """D's attention maps on ``n`` real images drawn (by ``seed``) from ``source``, a dataset in the
    training data's layout: (images in [-1, 1], labels or None, layer maps, a description)."""
    from .data import open_dataset
    from .images import to_model_range

    size, device = G.resolution, next(G.parameters()).device
    data = open_dataset(source, size, G.img_channels, cache="none", workers=0, progress=False)  # n images only
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    images = to_model_range(torch.stack([data[int(i)][0] for i in idx])).to(device)
    y = data.labels[idx].to(device) if G.num_classes and data.num_classes == G.num_classes else None
    if G.num_classes and y is None:
        raise UserError(f"the model has {G.num_classes} classes but {source} has {data.num_classes}; "
                        "pass images in the training data's class layout")
    layers = attention_maps(D, lambda: D(images, y), points, size, "D") if D is not None else []
    return images, y, layers, f"{len(idx)} real images from {source}"
