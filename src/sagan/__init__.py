"""torch-sagan: Self-Attention GANs (Zhang et al., ICML 2019) in PyTorch.

Public API::

    import sagan
    G = sagan.load_generator("runs/demo")        # run dir, checkpoint or exported .safetensors
    images = G.sample(16, y=3, seed=0)           # in [-1, 1]

    trainer = sagan.Trainer(sagan.load_preset("demo"), "runs/demo")
    trainer.fit()
"""

from .config import DatasetConfig, ModelConfig, RunConfig, TrainConfig, load_config, load_preset
from .data import BatchStream, ImageData, open_dataset
from .export import export_generator
from .gan import GANState
from .layers import ConditionalBatchNorm2d, SelfAttention2d, record_attention, spectral_norm
from .loading import load_generator
from .losses import (
    d_hinge,
    d_nonsaturating,
    d_wasserstein,
    g_hinge,
    g_nonsaturating,
    g_wasserstein,
    get_loss,
)
from .models import Discriminator, Generator, build_discriminator, build_generator, standing_stats, truncate
from .training import Trainer
from . import metrics  # noqa: E402  (sagan.metrics.evaluate_generator etc.)

__version__ = "0.1.0"

__all__ = [
    "SelfAttention2d",
    "ConditionalBatchNorm2d",
    "spectral_norm",
    "record_attention",
    "Generator",
    "Discriminator",
    "build_generator",
    "build_discriminator",
    "truncate",
    "standing_stats",
    "d_hinge",
    "g_hinge",
    "d_nonsaturating",
    "g_nonsaturating",
    "d_wasserstein",
    "g_wasserstein",
    "get_loss",
    "GANState",
    "Trainer",
    "metrics",
    "load_generator",
    "export_generator",
    "RunConfig",
    "ModelConfig",
    "DatasetConfig",
    "TrainConfig",
    "load_preset",
    "load_config",
    "open_dataset",
    "ImageData",
    "BatchStream",
]
