"""Exporting a trained generator: plain weights (spectral norm baked in) in a safetensors file
whose metadata describes the model, so that it loads without the run that made it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .loading import generator_from_checkpoint
from .models import eval_mode
from .rundir import atomic_write, expand, refuse_existing, resolve_checkpoint

__all__ = ["export_generator", "baked_state_dict"]

FORMAT = "torch-sagan/1"


def baked_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``module`` with every spectral-norm parametrization replaced by its
    current value ``W / sigma`` (computed in eval mode, so no power iteration runs), for a
    plain-weight twin built with ``sn=False``. ``module`` itself is left untouched.

    (``torch.nn.utils.parametrize.remove_parametrizations`` is avoided on purpose: it deletes
    the property from a class that deep copies share, which breaks every other copy.)
    """
    out: dict[str, torch.Tensor] = {}
    with eval_mode(module), torch.no_grad():
        for name, m in module.named_modules():
            if parametrize.is_parametrized(m):
                for pname in m.parametrizations.keys():
                    out[f"{name}.{pname}" if name else pname] = getattr(m, pname).detach().clone()
        for k, v in module.state_dict().items():
            if "parametrizations." not in k:
                out[k] = v.detach().clone()
    return out


def export_generator(src: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the EMA generator of a run or checkpoint to ``out`` as safetensors, with spectral
    norm baked into plain weights and the run config in the metadata."""
    from safetensors.torch import save

    out = expand(out)
    refuse_existing(out, overwrite)
    _, state = resolve_checkpoint(src)
    G = generator_from_checkpoint(state)
    tensors = {k: v.contiguous() for k, v in baked_state_dict(G).items()}
    meta = {"config": json.dumps(state["config"]), "step": str(int(state["step"])), "format": FORMAT}
    return atomic_write(out, save(tensors, metadata=meta))
