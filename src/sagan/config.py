"""Typed run configuration, presets and config files.

A run is fully described by :class:`RunConfig`. The CLI fills it from a preset YAML, an optional
``--config`` file and dotted overrides; the resolved config is saved as ``config.yaml`` in the
run directory, so later commands need only the run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .console import UserError

__all__ = [
    "ModelConfig",
    "DatasetConfig",
    "TrainConfig",
    "RunConfig",
    "PRESETS",
    "preset_path",
    "load_preset",
    "config_to_dict",
    "config_from_dict",
    "ConfigError",
]

PRESETS = ("demo", "cifar10", "celeba64", "celeba128", "imagenet128")


class ConfigError(UserError, ValueError):
    """A user-facing configuration mistake; the message says what to do."""


@dataclass
class ModelConfig:
    """Architecture of G and D."""

    resolution: int = 32
    """Image size in pixels: 32, 64, 128 or 256."""
    z_dim: int = 128
    """Size of the latent vector z."""
    g_ch: int = 64
    """Generator width: block channels are g_ch times the architecture table's multipliers."""
    d_ch: int = 64
    """Discriminator width."""
    g_attn: list[int] = field(default_factory=lambda: [16])
    """Feature-map resolutions at which G has self-attention ([] for none)."""
    d_attn: list[int] = field(default_factory=lambda: [16])
    """Feature-map resolutions at which D has self-attention ([] for none)."""
    attn_pool: bool = True
    """2x2 max-pool keys and values in attention, as the official code does."""
    num_classes: Optional[int] = None
    """Number of classes; null means: take it from the data (0 = unconditional)."""
    img_channels: Optional[int] = None
    """1 (grayscale) or 3 (RGB); null means: take it from the data."""
    sn_eps: float = 1e-6
    """Epsilon of spectral normalisation."""
    shared_dim: int = 0
    """> 0: BigGAN's shared class embedding of this size in G's conditional BN (gain = 1 + f(y))."""
    g_embed_sn: bool = False
    """Spectral-normalise G's class embeddings too (BigGAN leaves them without SN)."""
    bn_eps: float = 1e-5
    """Epsilon of G's batch norm."""
    init: Literal["ortho", "xavier", "normal", "default"] = "ortho"
    """Weight initialisation."""


@dataclass
class DatasetConfig:
    """How images are read and prepared."""

    split: Literal["train", "test"] = "train"
    """For CIFAR python batches and MNIST IDX folders: which split to read."""
    flip: bool = False
    """Random horizontal flips."""
    cache: Literal["auto", "memory", "none"] = "auto"
    """Decode once into a uint8 tensor in memory (auto: when it takes under half the free RAM)."""
    workers: int = -1
    """DataLoader worker processes for decoding (-1: one per CPU core, at most 8)."""


@dataclass
class TrainConfig:
    """Optimisation and logging schedule. Steps count generator updates."""

    batch_size: int = 64
    """Images per D step and per G step, per process: under torchrun with N processes the global
    batch is N x batch_size."""
    n_dis: int = 1
    """D steps per G step."""
    lr_g: float = 1e-4
    """Generator learning rate (TTUR: slower than D)."""
    lr_d: float = 4e-4
    """Discriminator learning rate."""
    betas_g: tuple[float, float] = (0.0, 0.999)
    """Adam betas of G."""
    betas_d: tuple[float, float] = (0.0, 0.999)
    """Adam betas of D."""
    adam_eps: float = 1e-8
    """Adam epsilon (both networks)."""
    loss: Literal["hinge", "nonsaturating", "wasserstein"] = "hinge"
    """Adversarial loss."""
    ema_decay: float = 0.9999
    """Decay of the EMA of G's weights (0 disables averaging: EMA = G)."""
    ema_start: int = 1000
    """Step before which the EMA simply copies G."""
    ema_bn_stats: Literal["average", "copy"] = "copy"
    """G's batch-norm running statistics in the EMA: ``average`` them with the same decay as the
    weights (BigGAN-PyTorch), or ``copy`` the raw G's. Spectral norm's u/v are always copied."""
    ema_bn_batches: int = 0
    """> 0: re-estimate the saved EMA generator's batch-norm statistics at checkpoint time from
    this many batches of fresh noise (standing statistics; 0: keep the running ones)."""
    channels_last: bool = True
    """Keep activations in channels-last memory layout (faster convolutions on CPU and GPU)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision of the forward passes: fp32, bf16 (GPUs from Ampere on; also CPU) or fp16
    (with a gradient scaler). Weights, optimiser states and spectral norm's sigma stay fp32."""
    compile: bool = False
    """Wrap G and D in torch.compile: faster steps after a slow first few (minutes of compilation;
    on CPU it needs a C++ compiler)."""
    sync_bn: bool = False
    """Under torchrun on GPUs: batch norm in G normalises over the global batch (SyncBatchNorm)
    rather than each process's share."""
    seed: int = 0
    """Random seed (weights, data order, noise)."""
    log_every: int = 50
    """Write losses to metrics.jsonl and TensorBoard every N steps."""
    sample_every: int = 500
    """Save a sample grid from fixed z every N steps."""
    ckpt_every: int = 1000
    """Write a checkpoint every N steps (and always at the end)."""
    keep_ckpts: int = 3
    """How many recent checkpoints to keep."""
    grid_columns: int = 10
    """Images per row of the sample grid (one row per class for conditional models)."""
    grid_max_rows: int = 10
    """At most this many rows (classes) in the sample grid."""
    eval_every: int = 0
    """Compute IS, FID, KID (and intra-FID) of the EMA G every N steps and at the end, logged to
    metrics.jsonl and TensorBoard, keeping checkpoints/best.pt by FID (0: never)."""
    eval_samples: int = 10_000
    """Generated samples per evaluation during training (sagan eval defaults to 50k for final figures)."""
    eval_batch_size: int = 250
    """Images per generator/Inception batch during evaluation."""
    eval_reference: Optional[str] = None
    """Reference images for evaluation (null: the training data)."""
    inception_weights: Optional[str] = None
    """Local TF-Inception weights file (null: $SAGAN_INCEPTION_WEIGHTS or the torch hub cache)."""


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    data: Optional[str] = None
    """Images: a folder, a zip, a CIFAR python folder or an MNIST IDX folder (null: bundled MNIST demo)."""
    steps: int = 2000
    """Number of generator steps to train for."""
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Keys that may change between a run and its resumption without making it a different run.
RESUMABLE_KEYS = {
    "steps",
    "dataset.workers",
    "dataset.cache",
    "train.log_every",
    "train.sample_every",
    "train.ckpt_every",
    "train.keep_ckpts",
    "train.grid_columns",
    "train.grid_max_rows",
    "train.eval_every",
    "train.eval_samples",
    "train.eval_batch_size",
    "train.eval_reference",
    "train.inception_weights",
    "train.precision",
    "train.compile",
    "train.sync_bn",
}


def preset_path(name: str) -> Path:
    """Path of the bundled preset YAML called ``name``."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.{hint}")
    return Path(str(resources.files("sagan") / "presets" / f"{name}.yaml"))


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for sec in ("train",):
        for k in ("betas_g", "betas_d"):
            d[sec][k] = list(d[sec][k])
    return d


def _valid_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        keys.append(name)
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            keys += _valid_keys(f.default_factory, name + ".")
    return keys


VALID_KEYS = _valid_keys(RunConfig)


def suggest_key(key: str) -> str:
    """`` (did you mean 'x'?)`` for the valid config key nearest to ``key``, or ''."""
    key = key.lstrip("-")
    close = difflib.get_close_matches(key, VALID_KEYS, n=1, cutoff=0.5)
    if not close:  # match the last component, e.g. 'model.chh' -> 'model.g_ch'
        leaf = key.split(".")[-1]
        leaves = {k.split(".")[-1]: k for k in VALID_KEYS}
        near = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.5)
        close = [leaves[near[0]]] if near else []
    return f" (did you mean '{close[0]}'?)" if close else ""


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from a plain dict, rejecting unknown keys with a suggestion."""
    unknown = [k for k in _flatten(d) if k not in VALID_KEYS]
    if unknown:
        raise ConfigError(f"unknown config key '{unknown[0]}'{suggest_key(unknown[0])}")
    sections = {"model": ModelConfig, "dataset": DatasetConfig, "train": TrainConfig}
    kw = {k: v for k, v in d.items() if k not in sections}
    for name, cls in sections.items():
        sub = dict(d.get(name) or {})
        for k in ("betas_g", "betas_d"):
            if k in sub:
                sub[k] = tuple(sub[k])
        kw[name] = cls(**sub)
    return RunConfig(**kw)


def load_preset(name: str) -> RunConfig:
    """The bundled preset ``name`` as a :class:`RunConfig`."""
    with open(preset_path(name)) as f:
        return config_from_dict(yaml.safe_load(f) or {})


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def load_config(path: Path) -> RunConfig:
    with open(path) as f:
        return config_from_dict(yaml.safe_load(f) or {})


def config_diff(a: RunConfig, b: RunConfig, ignore=RESUMABLE_KEYS) -> list[str]:
    """Dotted keys whose values differ between ``a`` and ``b`` (``ignore`` left out)."""
    fa, fb = _flatten(config_to_dict(a)), _flatten(config_to_dict(b))
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in fa if k not in ignore and fa.get(k) != fb.get(k)]
