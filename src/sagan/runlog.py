"""Where a training run's records go: ``metrics.jsonl``, TensorBoard and sample grids.

The training loop hands :class:`RunLog` plain records (dicts of numbers, ``"eval": True`` for
evaluation rows) and image grids; the run log passes them to its sinks on rank 0 and does
nothing on the other ranks. Adding a tracker means adding a sink: an object with ``record``,
``image`` and ``close``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .images import save_grid
from .rundir import RunDir
from .files import atomic_write

__all__ = ["RunLog", "JsonlSink", "TensorBoardSink"]

# TensorBoard tags of the record keys (gamma/... keys keep their own names)
TB_TAGS = {"d_loss": "loss/d_loss", "g_loss": "loss/g_loss", "d_real": "D/real", "d_fake": "D/fake",
           "img_per_s": "speed/img_per_s", "lr_g": "lr/G", "lr_d": "lr/D", "aug_p": "augment/p",
           "aug_rt": "augment/r_t", "loss_scale_g": "loss_scale/G", "loss_scale_d": "loss_scale/D"}
TB_EVAL_TAGS = {"fid": "eval/FID", "is": "eval/IS", "kid": "eval/KID", "intra_fid": "eval/intra_FID",
                "best_fid": "eval/best_FID", "precision": "eval/precision", "recall": "eval/recall"}


class JsonlSink:
    """One JSON object per line, flushed at once, appended across resumes."""

    def __init__(self, path: Path):
        self.file = open(path, "a")

    def record(self, step: int, rec: dict) -> None:
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()

    def image(self, step: int, tag: str, grid: torch.Tensor) -> None:
        pass

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    """Scalars and sample grids for ``tensorboard --logdir runs``."""

    def __init__(self, folder: Path, step: int, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=step or None)
        if step == 0:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def record(self, step: int, rec: dict) -> None:
        tags = TB_EVAL_TAGS if rec.get("eval") else TB_TAGS
        for key, value in rec.items():
            tag = tags.get(key, key if key.startswith("gamma/") else None)
            if tag is not None and value is not None:
                self.writer.add_scalar(tag, value, step)

    def image(self, step: int, tag: str, grid: torch.Tensor) -> None:
        self.writer.add_image(tag, grid, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Weights & Biases (``pip install 'torch-sagan[wandb]'``): one W&B run per torch-sagan run,
    resumed with it (its id is kept in the run directory). ``WANDB_MODE=offline`` writes the W&B
    run files under ``RUN/wandb`` without a network; ``WANDB_PROJECT`` names the project."""

    def __init__(self, run: RunDir, step: int, config: dict):
        import os
        import uuid

        import wandb

        id_file = run / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        atomic_write(id_file, run_id + "\n")
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "torch-sagan"), name=run.path.name, id=run_id,
                              resume="allow", dir=str(run.path), config=config)

    def record(self, step: int, rec: dict) -> None:
        self.run.log({k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}, step=step)

    def image(self, step: int, tag: str, grid: torch.Tensor) -> None:
        self.run.log({tag: self.wandb.Image(grid.permute(1, 2, 0).numpy())}, step=step)

    def close(self) -> None:
        self.run.finish()


LOGGERS = {"tensorboard": TensorBoardSink, "wandb": WandbSink}


def check_loggers(names: list[str]) -> None:
    """Unknown or uninstalled loggers stop the run before it starts."""
    import importlib.util

    from .console import UserError

    for name in names:
        if name not in LOGGERS:
            raise UserError(f"unknown logger {name!r} in train.loggers; choose from {', '.join(LOGGERS)}")
        if name == "wandb" and importlib.util.find_spec("wandb") is None:
            raise UserError("train.loggers has wandb, which needs the wandb package: pip install 'torch-sagan[wandb]'")


class RunLog:
    """The run's log on rank 0 (``enabled``); a silent stand-in elsewhere. metrics.jsonl always,
    and the ``loggers`` named (tensorboard, wandb)."""

    def __init__(self, run: RunDir, step: int, config: dict, enabled: bool = True, loggers=("tensorboard",)):
        self.run, self.enabled = run, enabled
        self.sinks = []
        if enabled:
            self.sinks = [JsonlSink(run.metrics)]
            for name in loggers:
                self.sinks.append(TensorBoardSink(run.tb, step, config) if name == "tensorboard"
                                  else LOGGERS[name](run, step, config))

    def record(self, step: int, rec: dict) -> None:
        for sink in self.sinks:
            sink.record(step, rec)

    def grid(self, step: int, images: torch.Tensor, columns: int) -> Path | None:
        """Save a sample grid as ``samples/step_<step>.png`` and ``samples/latest.png``, and hand it to the sinks."""
        if not self.enabled:
            return None
        from torchvision.utils import make_grid

        path = save_grid(images, self.run.samples / f"step_{step:08d}.png", columns)
        atomic_write(self.run.samples / "latest.png", path.read_bytes())
        grid = make_grid(images.float().cpu() * 0.5 + 0.5, nrow=columns)
        for sink in self.sinks:
            sink.image(step, "samples/ema", grid)
        return path

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []
