"""The run directory: the one place that knows its layout, writes into it safely and guards it.

A run directory holds everything a user made with ``sagan train`` and the verbs that read it::

    RUN/.sagan-run          marker written at creation: only a directory holding it (or readable
                            checkpoints) is a run that --overwrite may clear
    RUN/.lock               host and pid of the process training in it (while it trains)
    RUN/config.yaml         the resolved config
    RUN/checkpoints/        ckpt_<step>.pt, best.pt
    RUN/samples/            training grids
    RUN/metrics.jsonl, RUN/tb/   training logs
    RUN/eval/, attention/, interpolation/, generated/, report.html, generator_ema.safetensors

Every file written here goes through :func:`atomic_write` (a temporary file in the same folder,
fsync, rename, fsync of the folder), so a crash leaves the old file or the new one, and a full
disk is one clear error that keeps the old file and removes the temporary one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import ConfigError, config_from_dict, config_to_dict, load_config
from .console import UserError, info, warn
from .files import atomic_write, expand, write_text

__all__ = ["RunDir", "RunLock", "run_of"]

MARKER = ".sagan-run"
LOCK = ".lock"
CONFIG_FILE = "config.yaml"
CKPT_DIR = "checkpoints"
SAMPLES = "samples"
METRICS = "metrics.jsonl"
TB = "tb"
EVAL = "eval"
ATTENTION = "attention"
INTERPOLATION = "interpolation"
GENERATED = "generated"
REPORT = "report.html"
EXPORT = "generator_ema.safetensors"
HUB_MODEL = "model.safetensors"  # the model file of a folder written by sagan export --hub-dir
HUB_CONFIG, HUB_SAMPLES, HUB_CARD = "config.json", "samples.png", "README.md"  # the rest of that folder
HUB_FILES = (HUB_MODEL, HUB_CONFIG, CONFIG_FILE, HUB_SAMPLES, HUB_CARD)  # all it holds, as export_hub_dir writes them
# what --overwrite deletes: the run's own entries, nothing else in the folder
ENTRIES = (CONFIG_FILE, CKPT_DIR, SAMPLES, TB, METRICS, EXPORT, GENERATED, EVAL, ATTENTION, INTERPOLATION, REPORT,
           "wandb", "wandb_id")


# ---------------------------------------------------------------------------------- the lock


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` (Linux), to tell a live holder from a recycled pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _process_start(pid)
    return started is None or now is None or now == started


@dataclass
class RunLock:
    """A lock file naming the host and process that train in a run directory."""

    path: Path
    held: bool = False

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # a lock file being written, or an empty one from a crash
                    time.sleep(0.2)
                    if self._holder() is None:
                        self.path.unlink(missing_ok=True)
                    continue
                if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
                    self.held = True  # this very process (a second Trainer in one Python session)
                    return
                if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1)), holder.get("started")):
                    info(f"taking over the lock of {self.path.parent}: its holder (pid {holder.get('pid')} on "
                         f"{holder.get('host')}) is no longer running")
                    self.path.unlink(missing_ok=True)
                    continue
                raise UserError(
                    f"{self.path.parent} is in use by another sagan train (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('since')}); wait for it to finish, or, if that "
                    f"process is gone, delete {self.path}")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise UserError(f"could not take the lock {self.path}; delete it if no sagan train runs there")

    def _holder(self) -> dict | None:
        try:
            d = json.loads(self.path.read_text())
            return d if isinstance(d, dict) and "pid" in d else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.held = False


# ---------------------------------------------------------------------------------- the run


class RunDir:
    """A run directory: its paths, whether it is a run, creating, clearing, locking it, and its config."""

    def __init__(self, path: str | os.PathLike):
        self.path = expand(path)
        self._lock: RunLock | None = None
        self._made = False  # this process created the folder (to take it back if the start fails)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    config_path = property(lambda self: self.path / CONFIG_FILE)
    checkpoints = property(lambda self: self.path / CKPT_DIR)
    samples = property(lambda self: self.path / SAMPLES)
    metrics = property(lambda self: self.path / METRICS)
    tb = property(lambda self: self.path / TB)
    eval = property(lambda self: self.path / EVAL)
    generated = property(lambda self: self.path / GENERATED)
    attention = property(lambda self: self.path / ATTENTION)
    interpolation = property(lambda self: self.path / INTERPOLATION)
    report = property(lambda self: self.path / REPORT)
    export = property(lambda self: self.path / EXPORT)

    def has_checkpoints(self) -> bool:
        from .checkpoints import CheckpointManager  # here, not at the top: it brings torch, which `sagan --help` skips

        return bool(CheckpointManager(self.checkpoints).paths())

    def is_run(self) -> bool:
        """Recognisably a torch-sagan run: it holds the marker, or checkpoints."""
        return (self.path / MARKER).is_file() or self.has_checkpoints()

    def check_usable(self, overwrite: bool) -> None:
        """Refuse an --out that is a file, or a non-empty folder that is not a run (whatever
        the flags: nothing but a run's own entries is ever deleted)."""
        d = self.path
        if d.exists() and not d.is_dir():
            raise UserError(f"{d} is a file; choose a directory for --out")
        if d.is_dir() and any(p.name not in (LOCK,) for p in d.iterdir()) and not self.is_run():
            what = "has a config.yaml but no sagan marker or checkpoints" if self.config_path.exists() else "holds other files"
            raise UserError(f"{d} {what}, so it is not a sagan run directory and is left alone"
                            f"{' (even with --overwrite)' if overwrite else ''}; choose a new or empty --out")

    def lock(self) -> RunLock:
        """Take the run's lock (released by :meth:`unlock`, or found stale after a crash)."""
        try:
            self._made = self._made or not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {self.path} ({e.strerror or e}); choose another --out") from None
        self._lock = RunLock(self.path / LOCK)
        self._lock.acquire()
        return self._lock

    def unlock(self) -> None:
        """Release the lock; a folder this process created and left empty goes too."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._made and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def create(self) -> None:
        """Make the directory a run (the marker), keeping anything already there."""
        if not (self.path / MARKER).is_file():
            atomic_write(self.path / MARKER, json.dumps({"created": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                         "by": "torch-sagan"}) + "\n")

    def clear(self) -> list[str]:
        """Delete the run's own entries (never other files); only in a recognisable run."""
        if not self.is_run():
            raise UserError(f"{self.path} is not a sagan run directory; refusing to delete anything in it")
        gone = []
        for name in ENTRIES:
            p = self.path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
                gone.append(name)
            elif p.exists() or p.is_symlink():
                p.unlink()
                gone.append(name)
        return gone

    # ------------------------------------------------------------------------- config
    def save_config(self, cfg) -> None:
        write_text(self.config_path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    def saved_config(self):
        """The run's config: ``config.yaml``, or, when that is missing or damaged, the config the
        newest readable checkpoint carries (then ``config.yaml`` is unreadable, not the run); None
        for a new run."""
        if self.config_path.exists():
            try:
                if self.config_path.stat().st_size == 0:  # a write cut short (older versions)
                    raise ConfigError(f"{self.config_path} is empty")
                return load_config(self.config_path)
            except ConfigError as e:
                found = self.latest_checkpoint(quiet=True)
                if found is None:
                    raise
                warn(f"{e}; using the config saved in {found[0].name} instead")
                return config_from_dict(found[1]["config"])
        found = self.latest_checkpoint(quiet=True) if self.has_checkpoints() else None
        return config_from_dict(found[1]["config"]) if found else None

    # ------------------------------------------------------------------------- checkpoints
    def latest_checkpoint(self, map_location="cpu", quiet: bool = False):
        """(path, state) of the newest readable checkpoint, or None when there is none."""
        from .checkpoints import CheckpointManager

        return CheckpointManager(self.checkpoints).latest(map_location, quiet=quiet)


def run_of(path: Path) -> Path:
    """The run directory a checkpoint lives in (else the checkpoint's folder); a run directory itself."""
    path = expand(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == CKPT_DIR else path.parent
