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
from .sources import ModelSource, resolve_source

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


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    """(tensors, the run config in the metadata) of an exported generator; one clear error for a
    truncated, empty or foreign file, or metadata that is not sagan's."""
    from safetensors.torch import load_file

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # SafetensorError, OSError: truncated, empty or not safetensors at all
        raise UserError(f"{path} is not a readable safetensors file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:80] if str(e) else 'truncated or empty'}); export it again") from None
    if "config" not in meta:
        raise UserError(f"{path} was not exported by sagan (no config in its metadata)")
    try:
        config = json.loads(meta["config"])
    except ValueError:
        raise UserError(f"{path}: the config in its metadata is not valid JSON; export it again") from None
    return tensors, config


def _from_safetensors(path: Path) -> Generator:
    tensors, config = _read_safetensors(path)
    G = build_generator(config_from_dict(config, f"{path}'s metadata").model, sn=False)
    own = G.state_dict()
    missing, unexpected = own.keys() - tensors.keys(), tensors.keys() - own.keys()
    wrong = [k for k in own.keys() & tensors.keys() if own[k].shape != tensors[k].shape]
    if missing or unexpected or wrong:
        what = (f"{len(missing)} tensors missing" if missing else f"{len(unexpected)} unexpected tensors"
                if unexpected else f"{wrong[0]} has another shape")
        raise UserError(f"{path}: its tensors do not match the model its metadata describes ({what}); export it again")
    G.load_state_dict(tensors)
    return G


def load_generator(path: str | os.PathLike | ModelSource, device: str | torch.device = "cpu",
                   ema: bool = True) -> Generator:
    """Load a generator ready to sample, in eval mode.

    ``path`` is a run directory (its latest checkpoint), a checkpoint file (``.pt``), an exported
    ``.safetensors`` file (or a folder of ``sagan export --hub-dir``), the name of a pretrained
    generator (``"demo"``), an ``https://`` URL of a safetensors file (``#sha256=...`` pins it)
    or ``hf://owner/repo[@revision][/file]``. From checkpoints the EMA generator is returned
    unless ``ema=False``. ``G(z, y)`` gives images in [-1, 1]; ``G.sample(n, y=None, seed=None)``
    is the convenience form.
    """
    src = resolve_source(path)
    if src.exported:
        if not ema:
            raise UserError("--raw needs a run directory or checkpoint: exported files hold only the EMA generator")
        G = _from_safetensors(src.path)
    else:
        G = generator_from_checkpoint(src.checkpoint()[1], ema)
    return G.to(device).eval()


def load_networks(path: str | os.PathLike | ModelSource, device: str | torch.device = "cpu",
                  ema: bool = True) -> tuple[Generator, Discriminator | None, dict]:
    """G (EMA unless ``ema=False``) and D of a run or checkpoint, in eval mode, with a few facts
    about where they come from (``step``, ``checkpoint``); an exported file gives G only."""
    src = resolve_source(path)
    if src.exported:
        return load_generator(src, device, ema), None, {"step": None, "checkpoint": str(src.path)}
    ckpt, state = src.checkpoint()
    G = generator_from_checkpoint(state, ema).to(device).eval()
    D = discriminator_from_checkpoint(state).to(device).eval()
    return G, D, {"step": int(state["step"]), "checkpoint": str(ckpt), "config": state["config"]}


# ------------------------------------------------------------------------------ fine-tuning


def _plain_to_parametrized(model: torch.nn.Module, plain: dict) -> dict:
    """Keys of an exported (SN-baked) state dict renamed for a spectral-normalised ``model``."""
    from torch.nn.utils import parametrize

    out = dict(plain)
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            key = f"{name}.weight" if name else "weight"
            if key in out:
                out[f"{name}.parametrizations.weight.original"] = out.pop(key)
    return out


@torch.no_grad()
def _refresh_spectral_vectors(model: torch.nn.Module, iterations: int = 15) -> None:
    """Re-estimate every SN layer's u and v for its (new) weight, as at construction."""
    from torch.nn.utils import parametrize

    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            sn = m.parametrizations.weight[0]
            sn._power_method(sn._reshape_weight_to_matrix(m.parametrizations.weight.original), iterations)


def _source_state(source: str | os.PathLike) -> tuple[dict, dict, str]:
    """(config dict, {"G", "D", "G_ema"} state dicts it has, description) of a run, a checkpoint
    or an exported generator (whose G, the EMA one, has SN baked in: key "G_plain")."""
    src = resolve_source(source)
    if src.exported:
        tensors, config = _read_safetensors(src.path)
        return config, {"G_plain": tensors}, f"the exported generator {src.path.name} (G only: D starts fresh)"
    ckpt, state = src.checkpoint()
    return state["config"], {k: state[k] for k in ("G", "D", "G_ema")}, f"{ckpt} (step {int(state['step']):,}: G, D and the EMA)"


def _fit_state(target: dict, source: dict, classes: tuple[int, int], where: str) -> tuple[dict, list[str]]:
    """``source`` restricted to what fits ``target``: class-dependent tensors (first dimension the
    old class count in the source, the new one in the target) are left to their fresh values."""
    old_k, new_k = classes
    out, reinit = {}, []
    for key, value in target.items():
        if key not in source and key.endswith(("._u", "._v")):
            continue  # an exported generator has no SN vectors: estimated after loading
        if key not in source:
            raise UserError(f"--init_from: {where} has no {key}; the architectures differ")
        src = source[key]
        if src.shape == value.shape:
            out[key] = src
        elif src.ndim and value.ndim and src.shape[0] == old_k and value.shape[0] == new_k and src.shape[1:] == value.shape[1:]:
            reinit.append(key)
        else:
            raise UserError(f"--init_from: {key} is {tuple(src.shape)} in {where} but {tuple(value.shape)} here")
    # a re-initialised layer keeps all its fresh tensors (SN's u and v belong to its new weight)
    layers = {k.split("parametrizations.")[0] if "parametrizations." in k else k.rsplit(".", 1)[0] + "." for k in reinit}
    for key in [k for k in out if any(k.startswith(layer) for layer in layers)]:
        del out[key]
        reinit.append(key)
    return out, reinit


def initialise_from(gan, source: str | os.PathLike) -> str:
    """Load trained weights into a fresh :class:`~sagan.gan.GANState` for fine-tuning: G, D and
    the EMA where the source has them. The architectures must match; with another class count
    the class embeddings keep their fresh initialisation. Returns what was loaded, in words."""
    cfg_dict, states, what = _source_state(source)
    src_model = config_from_dict(cfg_dict, f"--init_from {source}").model
    mine = gan.cfg.model
    skip = {"num_classes"}
    diff = [f"model.{k}: {getattr(src_model, k)!r} there, {getattr(mine, k)!r} here"
            for k in mine.__dataclass_fields__ if k not in skip and getattr(src_model, k) != getattr(mine, k)]
    if diff:
        raise UserError(f"--init_from {source} has another architecture ({'; '.join(diff[:4])}); "
                        "fine-tuning needs the same model settings (num_classes may differ)")
    if bool(src_model.num_classes) != bool(mine.num_classes):
        raise UserError("--init_from: a conditional and an unconditional model cannot be fine-tuned into each other")
    classes = (src_model.num_classes, mine.num_classes)
    plain = "G_plain" in states
    if plain:
        states = {"G": _plain_to_parametrized(gan.G, states["G_plain"])}
        states["G_ema"] = states["G"]
    reinit = []
    for key, module in (("G", gan.G), ("D", gan.D), ("G_ema", gan.ema.module)):
        if key in states:
            fitted, fresh = _fit_state(module.state_dict(), states[key], classes, str(source))
            module.load_state_dict(fitted, strict=False)
            reinit += [f"{key}.{k}" for k in fresh]
    if plain:
        _refresh_spectral_vectors(gan.G)
        _refresh_spectral_vectors(gan.ema.module)
    if reinit:
        what += (f"; {classes[0]} classes there, {classes[1]} here: the class embeddings start fresh "
                 f"({len(reinit)} tensors)")
    return what
