"""Checkpoint files: writing, rotation and safe loading.

A checkpoint is a ``torch.save`` of plain containers of tensors, numbers and strings only,
so that it loads with ``torch.load(weights_only=True)``. It is written through
:func:`sagan.files.atomic_write`: a crash at any moment leaves either the old file or the new
one, never a half-written one under the final name. A checkpoint that cannot be read is never
deleted: resuming moves it aside as ``<name>.unreadable`` and says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .console import UserError, warn
from .files import atomic_write, remove_temporaries

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointManager"]

_NAME = re.compile(r"^ckpt_(\d{8,})\.pt$")
BEST_NAME = "best.pt"


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a clear error when it is not readable."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is not readable ({type(e).__name__}); it may be truncated or corrupt") from e
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a sagan checkpoint")
    return state


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
        path = save_checkpoint(state, self.folder / f"ckpt_{step:08d}.pt")
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary files that a process killed in the middle of a save left behind."""
        return remove_temporaries(self.folder)

    @property
    def best_path(self) -> Path:
        return self.folder / BEST_NAME

    def save_best(self, state: dict[str, Any]) -> Path:
        """Write ``best.pt`` (never pruned; numbered checkpoints are counted separately)."""
        return save_checkpoint(state, self.best_path)

    def latest(self, map_location: str | torch.device = "cpu", quiet: bool = False,
               set_aside: bool = False) -> tuple[Path, dict[str, Any]] | None:
        """The newest readable checkpoint, or None when there is none at all. Unreadable newer
        ones are skipped with a warning (and, with ``set_aside``, renamed ``*.unreadable`` so that
        rotation never deletes them); when checkpoints exist but none can be read, a UserError."""
        paths = self.paths()
        bad = []
        for path in reversed(paths):
            try:
                state = load_checkpoint(path, map_location)
            except UserError as e:
                bad.append(path)
                if not quiet:
                    warn(f"{e}; skipping it and trying the previous checkpoint")
                continue
            for b in bad if set_aside else []:
                b.rename(b.with_name(b.name + ".unreadable"))
                warn(f"moved the unreadable {b.name} aside as {b.name}.unreadable")
            return path, state
        if paths:
            raise UserError(f"none of the {len(paths)} checkpoints in {self.folder} can be read (truncated or "
                            "corrupt); they are left as they are: move them elsewhere to start the run over, "
                            "or restore a copy")
        return None
