"""torch-sagan: Self-Attention GANs (Zhang et al., ICML 2019) in PyTorch.

Public API::

    import sagan
    G = sagan.load_generator("demo")             # a registry name, run dir, checkpoint, file or URL
    images = G.sample(16, y=3, seed=0)           # in [-1, 1]

    trainer = sagan.Trainer(sagan.load_preset("demo"), "runs/demo")
    trainer.fit()

Names are imported on first use, so that ``sagan --help`` does not wait for torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_WHERE = {
    "SelfAttention2d": "layers", "ConditionalBatchNorm2d": "layers", "spectral_norm": "layers",
    "record_attention": "layers",
    "Generator": "models", "Discriminator": "models", "build_generator": "models", "build_discriminator": "models",
    "truncate": "models", "standing_stats": "models",
    "d_hinge": "losses", "g_hinge": "losses", "d_nonsaturating": "losses", "g_nonsaturating": "losses",
    "d_wasserstein": "losses", "g_wasserstein": "losses", "get_loss": "losses",
    "GANState": "gan", "Trainer": "training",
    "load_generator": "loading", "export_generator": "export",
    "RunConfig": "config", "ModelConfig": "config", "DatasetConfig": "config", "TrainConfig": "config",
    "load_preset": "config", "load_config": "config",
    "open_dataset": "data", "ImageData": "data", "BatchStream": "data",
}
_MODULES = ("metrics", "evaluation", "features", "inception", "models", "layers", "data", "config", "training", "gan",
            "losses", "loading", "sources", "export", "images", "augment", "interpolation", "attention_maps", "report",
            "registry", "rundir", "files", "checkpoints")

__all__ = sorted(_WHERE) + ["metrics", "evaluation"]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'sagan' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE) | set(_MODULES))
