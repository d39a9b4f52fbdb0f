"""Walks through a generator's inputs: latent interpolation between seeds (lerp or slerp) and
class interpolation, which mixes class embeddings. Endpoints are exactly the samples that
``sagan sample --n 1 --seed S --class C`` draws (``G.sample(1, y=C, seed=S)``)."""

from __future__ import annotations

import torch

from .console import UserError
from .models import Generator, eval_mode, latents

__all__ = ["seed_latent", "lerp", "slerp", "latent_path", "class_path", "interpolate", "interpolation_rows"]


def seed_latent(z_dim: int, seed: int, truncation: float | None = None) -> torch.Tensor:
    """The z of ``Generator.sample(1, seed=seed)``, shape (z_dim,)."""
    return latents(1, z_dim, torch.Generator().manual_seed(seed), truncation)[0]


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line from ``a`` to ``b`` at fractions ``t`` (shape (T,)): (T, *a.shape)."""
    t = t.view(-1, *([1] * a.ndim))
    return (1 - t) * a + t * b


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake), as GAN papers use it on z: constant angular speed
    along the arc between ``a`` and ``b``. High-dimensional Gaussian z are nearly orthogonal with
    nearly equal norms, so intermediate z keep a typical norm, where lerp's midpoint is ~30% short."""
    na, nb = a.norm(), b.norm()
    cos = torch.clamp(torch.dot(a / na, b / nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4:  # (nearly) parallel: the arc is a line
        return lerp(a, b, t)
    tt = t.view(-1, 1)
    so = torch.sin(omega)
    return (torch.sin((1 - tt) * omega) / so) * a + (torch.sin(tt * omega) / so) * b


def latent_path(z_dim: int, seeds: list[int], steps: int, method: str = "slerp",
                truncation: float | None = None) -> torch.Tensor:
    """z along seeds[0] -> seeds[1] -> ..., ``steps`` points per segment, endpoints included
    once: shape ((len(seeds) - 1) * (steps - 1) + 1, z_dim)."""
    if len(seeds) < 2 or steps < 2:
        raise ValueError("need at least two seeds and two steps")
    fn = {"slerp": slerp, "lerp": lerp}[method]
    return _through([seed_latent(z_dim, s, truncation) for s in seeds], steps, fn)


def class_path(num_classes: int, classes: list[int], steps: int) -> torch.Tensor:
    """Class weights along classes[0] -> classes[1] -> ...: rows of shape (num_classes,) that
    mix two one-hot vectors, which mixes the class embeddings linearly."""
    if len(classes) < 2 or steps < 2:
        raise ValueError("need at least two classes and two steps")
    eye = torch.eye(num_classes)
    return _through([eye[c] for c in classes], steps, lerp)


def _through(points: list[torch.Tensor], steps: int, fn) -> torch.Tensor:
    """``fn`` along points[0] -> points[1] -> ..., ``steps`` per segment, each endpoint once."""
    t = torch.linspace(0, 1, steps)
    return torch.cat([fn(a, b, t)[(1 if i else 0):] for i, (a, b) in enumerate(zip(points, points[1:]))])


def interpolate(G: Generator, z: torch.Tensor, y: torch.Tensor | None, batch_size: int = 64) -> torch.Tensor:
    """Images (on the CPU) for rows of ``z`` with labels or class weights ``y`` (broadcast when
    one row), in eval mode, batch-independent."""
    if y is not None and y.shape[0] == 1:
        y = y.expand(z.shape[0], *y.shape[1:])
    with eval_mode(G):
        return G.generate(z, y, batch_size).cpu()


def interpolation_rows(G: Generator, seeds: list[int], steps: int, method: str = "both",
                       truncation: float | None = None, classes: list[int] | None = None,
                       class_: int | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """What ``sagan interpolate`` draws: with ``classes``, one row morphing through them at the z
    of ``seeds[0]``; otherwise a row per method (slerp, lerp or both) through ``seeds`` (of class
    ``class_`` for a conditional G). Returns ({row name: images}, a tag for file names)."""
    K = G.num_classes
    if classes:
        if not K:
            raise UserError("--classes needs a class-conditional model; this generator is unconditional")
        if len(classes) < 2 or any(not 0 <= c < K for c in classes):
            raise UserError(f"--classes takes two or more classes in 0..{K - 1}")
        weights = class_path(K, classes, steps)
        z = seed_latent(G.z_dim, seeds[0], truncation).expand(weights.shape[0], -1)
        return {"class": interpolate(G, z, weights)}, f"classes{'-'.join(map(str, classes))}_seed{seeds[0]}"
    if len(seeds) < 2:
        raise UserError("--seeds takes two or more seeds")
    methods = {"both": ["slerp", "lerp"], "slerp": ["slerp"], "lerp": ["lerp"]}[method]
    y = torch.tensor([class_ or 0]) if K else None
    rows = {m: interpolate(G, latent_path(G.z_dim, seeds, steps, m, truncation), y) for m in methods}
    return rows, f"seeds{'-'.join(map(str, seeds))}" + (f"_class{class_ or 0}" if K else "")
