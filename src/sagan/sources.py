"""What a model named on the command line or to :func:`sagan.load_generator` is, decided once.

A source is a **run directory** (its newest readable checkpoint), a **checkpoint** file, or an
**exported** generator (a ``.safetensors`` file, or a folder written by ``sagan export
--hub-dir``). It may be reached through a pretrained name, an ``https://`` URL or an ``hf://``
address, which :func:`sagan.registry.locate` fetches and verifies, once per command. A local
model always wins over a pretrained name of the same spelling; a plain folder does not count
(``./demo`` is where the demo's own outputs go).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .console import UserError
from .files import expand, is_safetensors
from .rundir import CKPT_DIR, HUB_MODEL, RunDir, run_of

__all__ = ["ModelSource", "resolve_source"]


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``kind`` is ``run``, ``checkpoint`` or ``exported``; ``path`` the run
    directory, the ``.pt`` or the ``.safetensors`` file; ``outputs`` where a verb writes by
    default (the run for a run or a checkpoint in one, ``./<name>`` for a pretrained name, a URL
    or a Hub model, never a cache)."""

    given: str
    kind: str
    path: Path
    outputs: Path

    @property
    def exported(self) -> bool:
        return self.kind == "exported"

    def checkpoint(self, map_location="cpu") -> tuple[Path, dict]:
        """(path, state) of the checkpoint behind a run or checkpoint source; exported files,
        which hold the EMA generator only, are refused."""
        from .checkpoints import load_checkpoint

        if self.exported:
            raise UserError(f"{self.path} is an exported generator, not a checkpoint; pass a run directory or a .pt "
                            "checkpoint")
        if self.kind == "run":
            found = RunDir(self.path).latest_checkpoint(map_location)
            if found is None:
                raise UserError(f"{self.path} holds no checkpoint yet; train first (sagan train --out {self.path})")
            return found
        state = load_checkpoint(self.path, map_location)
        if not {"config", "G_ema", "G", "step"} <= set(state):
            raise UserError(f"{self.path} is not a sagan checkpoint")
        return self.path, state


def _is_local_model(p: Path) -> bool:
    """Something local that a pretrained name of the same spelling must not shadow: a file, a run
    (or a folder with a checkpoints folder), or a folder written by ``sagan export --hub-dir``."""
    run = RunDir(p)
    return p.is_file() or run.is_run() or run.checkpoints.is_dir() or (p / HUB_MODEL).is_file()


def _names() -> list[str]:
    from .registry import entries

    return list(entries())


def resolve_source(source: str | os.PathLike | ModelSource, remote: bool = True) -> ModelSource:
    """The one place that decides what ``source`` means (see the module's docstring). With
    ``remote=False`` only local runs and files count (for verbs that need a checkpoint, which
    pretrained names, URLs and the Hub never give)."""
    if isinstance(source, ModelSource):
        return source
    text = str(source)
    path = expand(text)
    found = None
    if not remote:
        if not path.exists():
            raise UserError(f"{path} does not exist; pass a run directory or a checkpoint (.pt)")
    elif text.startswith(("hf://", "https://", "http://")) or not _is_local_model(path):
        from .registry import locate

        found = locate(text)
    if found is not None:
        path = found.path
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run directory, a checkpoint, an exported .safetensors file, "
                        f"a pretrained name ({', '.join(_names())}), an https:// URL or hf://owner/repo")
    if path.is_dir() and (path / HUB_MODEL).is_file() and not RunDir(path).checkpoints.is_dir():  # as above
        path = path / HUB_MODEL  # a folder written by sagan export --hub-dir
    if path.is_dir():
        kind, outputs = "run", path
    elif is_safetensors(path):
        kind, outputs = "exported", path.parent / path.stem
    else:
        kind, outputs = "checkpoint", run_of(path) if path.parent.name == CKPT_DIR else path.parent / path.stem
    return ModelSource(text, kind, path, Path(found.name) if found else outputs)
