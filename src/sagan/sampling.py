"""Loading trained generators, drawing samples and grids, and exporting to safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize
from torchvision.utils import save_image

from .checkpoints import CheckpointManager, load_checkpoint
from .config import ModelConfig, RunConfig, config_from_dict, load_config
from .console import UserError
from .models import Discriminator, Generator, build_discriminator, build_generator

__all__ = ["load_generator", "export_generator", "grid_inputs", "save_grid", "to_uint8", "baked_state_dict"]

CONFIG_FILE = "config.yaml"
CKPT_DIR = "checkpoints"


def grid_inputs(
    num_classes: int, z_dim: int, columns: int = 10, max_rows: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fixed latents for a sample grid: one row per class (at most ``max_rows`` classes, spread
    evenly), the same ``columns`` latents in every row. Unconditional: ``max_rows`` rows."""
    g = torch.Generator().manual_seed(seed)
    if num_classes > 0:
        rows = min(num_classes, max_rows)
        classes = torch.linspace(0, num_classes - 1, rows).round().long()
        z = torch.randn(columns, z_dim, generator=g).repeat(rows, 1)
        return z, classes.repeat_interleave(columns)
    return torch.randn(columns * max_rows, z_dim, generator=g), None


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8 in [0, 255]."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid(images: torch.Tensor, path: str | Path, columns: int) -> None:
    """Save images in [-1, 1] as one PNG grid with ``columns`` images per row."""
    save_image(images.float().clamp(-1, 1) * 0.5 + 0.5, str(path), nrow=columns, padding=2, pad_value=1.0)


def baked_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``module`` with every spectral-norm parametrization replaced by its
    current value ``W / sigma`` (computed in eval mode, so no power iteration runs), for a
    plain-weight twin built with ``sn=False``. ``module`` itself is left untouched.

    (``torch.nn.utils.parametrize.remove_parametrizations`` is avoided on purpose: it deletes
    the property from a class that deep copies share, which breaks every other copy.)
    """
    was_training = module.training
    module.eval()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, m in module.named_modules():
            if parametrize.is_parametrized(m):
                for pname in m.parametrizations.keys():
                    out[f"{name}.{pname}" if name else pname] = getattr(m, pname).detach().clone()
        for k, v in module.state_dict().items():
            if "parametrizations." not in k:
                out[k] = v.detach().clone()
    module.train(was_training)
    return out


def _model_config(cfg_dict: dict) -> ModelConfig:
    return config_from_dict(cfg_dict).model


def _resolve_checkpoint(path: Path) -> tuple[Path, dict]:
    if path.is_dir():
        mgr = CheckpointManager(path / CKPT_DIR)
        found = mgr.latest()
        if found is None:
            raise UserError(f"{path} holds no checkpoint yet; train first (sagan train --out {path})")
        return found
    if path.suffix == ".safetensors":
        raise UserError(f"{path} is an exported generator, not a checkpoint; pass a run directory or a .pt checkpoint")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not {"config", "G_ema", "G", "step"} <= set(state):
        raise UserError(f"{path} is not a sagan checkpoint")
    return path, state


def load_generator(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> Generator:
    """Load a generator ready to sample, in eval mode.

    ``path`` is a run directory (its latest checkpoint), a checkpoint file (``.pt``) or an
    exported ``.safetensors`` file. From checkpoints the EMA generator is returned unless
    ``ema=False``. The result exposes ``z_dim`` and ``num_classes``; ``G(z, y)`` gives images in
    [-1, 1] and ``G.sample(n, y=None, seed=None)`` is the convenience form.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run directory, a checkpoint or an exported .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise UserError(f"{path} was not exported by sagan (no config in its metadata)")
        G = build_generator(_model_config(json.loads(meta["config"])), sn=False)
        G.load_state_dict(load_file(str(path)))
    else:
        G = generator_from_checkpoint(_resolve_checkpoint(path)[1], ema)
    return G.to(device).eval()


def generator_from_checkpoint(state: dict, ema: bool = True) -> Generator:
    """The EMA (or raw) generator held by a loaded checkpoint, on the CPU."""
    G = build_generator(_model_config(state["config"]))
    G.load_state_dict(state["G_ema" if ema else "G"])
    return G


def discriminator_from_checkpoint(state: dict) -> Discriminator:
    """The discriminator held by a loaded checkpoint, on the CPU."""
    D = build_discriminator(_model_config(state["config"]))
    D.load_state_dict(state["D"])
    return D


def export_generator(src: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the EMA generator of a run or checkpoint to ``out`` as safetensors, with spectral
    norm baked into plain weights and the run config in the metadata."""
    from safetensors.torch import save_file

    src, out = Path(src).expanduser(), Path(out).expanduser()
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    _, state = _resolve_checkpoint(src)
    G = generator_from_checkpoint(state)
    tensors = {k: v.contiguous() for k, v in baked_state_dict(G).items()}
    meta = {"config": json.dumps(state["config"]), "step": str(int(state["step"])), "format": "torch-sagan/1"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out)
    return out


def run_config(path: str | Path) -> RunConfig:
    """The saved config of a run directory."""
    p = Path(path) / CONFIG_FILE
    if not p.exists():
        raise UserError(f"{path} is not a sagan run directory (no {CONFIG_FILE})")
    return load_config(p)
