"""Loading trained networks for use: a generator ready to sample from a run directory, a
checkpoint or an exported safetensors file, and G and D together from a checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import ModelConfig, config_from_dict
from .console import UserError
from .models import Discriminator, Generator, build_discriminator, build_generator
from .rundir import expand, resolve_checkpoint

__all__ = ["load_generator", "load_networks", "generator_from_checkpoint", "discriminator_from_checkpoint"]


def _model_config(state: dict) -> ModelConfig:
    return config_from_dict(state["config"], "the checkpoint's config").model


def generator_from_checkpoint(state: dict, ema: bool = True) -> Generator:
    """The EMA (or raw) generator held by a loaded checkpoint, on the CPU."""
    G = build_generator(_model_config(state))
    G.load_state_dict(state["G_ema" if ema else "G"])
    return G


def discriminator_from_checkpoint(state: dict) -> Discriminator:
    """The discriminator held by a loaded checkpoint, on the CPU."""
    D = build_discriminator(_model_config(state))
    D.load_state_dict(state["D"])
    return D


def _from_safetensors(path: Path) -> Generator:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise UserError(f"{path} was not exported by sagan (no config in its metadata)")
    G = build_generator(config_from_dict(json.loads(meta["config"]), f"{path}'s metadata").model, sn=False)
    G.load_state_dict(load_file(str(path)))
    return G


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu", ema: bool = True) -> Generator:
    """Load a generator ready to sample, in eval mode.

    ``path`` is a run directory (its latest checkpoint), a checkpoint file (``.pt``) or an
    exported ``.safetensors`` file. From checkpoints the EMA generator is returned unless
    ``ema=False``. The result exposes ``z_dim`` and ``num_classes``; ``G(z, y)`` gives images in
    [-1, 1] and ``G.sample(n, y=None, seed=None)`` is the convenience form.
    """
    path = expand(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run directory, a checkpoint or an exported .safetensors file")
    if path.suffix == ".safetensors":
        if not ema:
            raise UserError("--raw needs a run directory or checkpoint: exported files hold only the EMA generator")
        G = _from_safetensors(path)
    else:
        G = generator_from_checkpoint(resolve_checkpoint(path)[1], ema)
    return G.to(device).eval()


def load_networks(path: str | os.PathLike, device: str | torch.device = "cpu",
                  ema: bool = True) -> tuple[Generator, Discriminator | None, dict]:
    """G (EMA unless ``ema=False``) and D of a run or checkpoint, in eval mode, with a few facts
    about where they come from (``step``, ``checkpoint``); an exported file gives G only."""
    path = expand(path)
    if path.suffix == ".safetensors":
        return load_generator(path, device, ema), None, {"step": None, "checkpoint": str(path)}
    ckpt, state = resolve_checkpoint(path)
    G = generator_from_checkpoint(state, ema).to(device).eval()
    D = discriminator_from_checkpoint(state).to(device).eval()
    return G, D, {"step": int(state["step"]), "checkpoint": str(ckpt), "config": state["config"]}
