"""Checkpoint files: atomic writes, rotation, and safe loading.

A checkpoint is a ``torch.save`` of plain containers of tensors, numbers and strings only,
so that it loads with ``torch.load(weights_only=True)``. It is written to a temporary file in
the same directory, fsynced, and moved into place with ``os.replace``: a crash at any moment
leaves either the old file or the new one, never a half-written one under the final name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from .console import UserError, warn

__all__ = ["atomic_save", "load_checkpoint", "CheckpointManager"]

_NAME = re.compile(r"^ckpt_(\d{8,})\.pt$")
BEST_NAME = "best.pt"
_TMP = re.compile(r"^\.(ckpt_\d{8,}|best)\.pt\.tmp\d+$")  # atomic_save's temporaries


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file, fsync and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a clear error when it is not readable."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is not readable ({type(e).__name__}); it may be truncated or corrupt") from e


class CheckpointManager:
    """Numbered checkpoints ``ckpt_<step>.pt`` in one folder; keeps the newest ``keep``."""

    def __init__(self, folder: Path, keep: int = 3):
        self.folder, self.keep = Path(folder), max(1, keep)

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, step: int, state: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"ckpt_{step:08d}.pt"
        atomic_save(state, path)
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary files that a process killed in the middle of a save left behind."""
        gone = []
        if self.folder.is_dir():
            for p in self.folder.iterdir():
                if _TMP.match(p.name):
                    p.unlink(missing_ok=True)
                    gone.append(p)
        return gone

    @property
    def best_path(self) -> Path:
        return self.folder / BEST_NAME

    def save_best(self, state: dict[str, Any]) -> Path:
        """Write ``best.pt`` (never pruned; numbered checkpoints are counted separately)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_save(state, self.best_path)
        return self.best_path

    def latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest readable checkpoint; unreadable newer ones are skipped with a warning."""
        for path in reversed(self.paths()):
            try:
                return path, load_checkpoint(path, map_location)
            except UserError as e:
                warn(f"{e}; skipping it and trying the previous checkpoint")
        return None
