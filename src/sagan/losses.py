"""GAN losses. Each D loss takes the logits on real and on fake images; each G loss the logits
on fake images. All return a scalar mean over the batch."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "d_hinge",
    "g_hinge",
    "d_nonsaturating",
    "g_nonsaturating",
    "d_wasserstein",
    "g_wasserstein",
    "LOSSES",
    "get_loss",
]

LossPair = tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def d_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]`` (SAGAN's default)."""
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def g_hinge(fake: torch.Tensor) -> torch.Tensor:
    """``-E[D(G(z))]``."""
    return -fake.mean()


def d_nonsaturating(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The original GAN D loss: ``E[softplus(-D(x))] + E[softplus(D(G(z)))]``."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_nonsaturating(fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss: ``E[softplus(-D(G(z)))]``."""
    return F.softplus(-fake).mean()


def d_wasserstein(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``E[D(G(z))] - E[D(x)]``. Spectral norm provides the Lipschitz constraint."""
    return fake.mean() - real.mean()


def g_wasserstein(fake: torch.Tensor) -> torch.Tensor:
    """``-E[D(G(z))]``."""
    return -fake.mean()


LOSSES: dict[str, LossPair] = {
    "hinge": (d_hinge, g_hinge),
    "nonsaturating": (d_nonsaturating, g_nonsaturating),
    "wasserstein": (d_wasserstein, g_wasserstein),
}


def get_loss(name: str) -> LossPair:
    """Return the ``(d_loss, g_loss)`` pair called ``name``."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None
