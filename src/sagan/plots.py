"""matplotlib on the Agg backend (no display needed): the line plots and image panels that the
attention, interpolation, evaluation and report commands draw."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: never a GUI backend, also on a desktop
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .files import atomic_write  # noqa: E402

__all__ = ["plt", "to_display", "figure_png", "save_figure", "line_plot", "truncation_plot"]


def to_display(img: torch.Tensor):
    """An image in [-1, 1], (C, H, W), as a numpy array imshow takes: (H, W) or (H, W, 3) in [0, 1]."""
    x = (img.detach().float().cpu().clamp(-1, 1) + 1) / 2
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def figure_png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path: str | Path) -> Path:
    """The figure as a PNG file, written atomically; the figure is closed."""
    return atomic_write(path, figure_png(fig))


def line_plot(series: dict[str, tuple[list, list]], title: str, xlabel: str, ylabel: str,
              hline: float | None = None, logy: bool = False, size=(7.0, 3.6)):
    """One axes with a line per entry of ``series`` (label -> (x, y)), labelled axes and a legend."""
    fig, ax = plt.subplots(figsize=size, dpi=100)
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label, marker="o" if len(x) <= 12 else None, markersize=4, linewidth=1.4)
    if hline is not None:
        ax.axhline(hline, color="0.6", linewidth=0.8, linestyle="--")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1 or any(series):
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def truncation_plot(points: list[dict], title: str):
    """IS against FID, one point per truncation threshold (``points[i]["truncation"]``; None,
    the last, is no truncation), each labelled with its threshold. Without IS (the bundled
    Inception features have no classifier), KID takes its place on the x axis."""
    x = "is" if all("is" in p for p in points) else "kid"
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    ax.plot([p[x] for p in points[:-1]], [p["fid"] for p in points[:-1]], marker="o", label="truncated z")
    ax.plot([points[-1][x]], [points[-1]["fid"]], marker="s", linestyle="none", color="C3", label="no truncation")
    for p in points:
        ax.annotate(f"T={p['truncation']}" if p["truncation"] is not None else "none", (p[x], p["fid"]),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("Inception Score (higher: more recognisable)" if x == "is" else "KID (lower: closer to the data)")
    ax.set_ylabel("FID (lower: closer to the data)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
