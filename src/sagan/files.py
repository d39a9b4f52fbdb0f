"""Ground-floor file work that every verb shares: user paths, atomic writes, refusals, the cache.

Every file a command writes goes through :func:`atomic_write` (a temporary file in the same
folder, fsync, rename, fsync of the folder), so a crash leaves the old file or the new one, and a
full disk is one clear error that keeps the old file and removes the temporary one. This module
imports nothing of the package but :mod:`sagan.console`, so that any module may use it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from .console import UserError

__all__ = ["expand", "demo_data_path", "resolve_data_path", "atomic_write", "write_text", "write_json", "remove_temporaries", "refuse_existing",
           "free_path", "output_folder", "cache_dir", "is_safetensors", "sha256_of", "TMP_PATTERN"]

TMP_PATTERN = re.compile(r"^\..+\.tmp\d+$")  # atomic_write's temporaries


def expand(path: str | os.PathLike) -> Path:
    """A user-given path with ``~`` expanded."""
    return Path(os.path.expanduser(str(path)))


# ---------------------------------------------------------------------------------- writing


def demo_data_path() -> Path:
    """Folder of the bundled MNIST test set (the original t10k IDX files)."""
    from importlib import resources

    return Path(str(resources.files("sagan") / "demo"))


def resolve_data_path(path: str | os.PathLike | None) -> Path:
    """The absolute path of ``--data`` (``~`` expanded); None is the bundled demo data."""
    return demo_data_path() if path is None else expand(path).resolve()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _no_space(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(e) or "file write failed" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None] | bytes | str, durable: bool = True) -> Path:
    """Write ``path`` atomically: ``write(f)`` (or the given bytes/text) goes to a temporary file
    in the same folder, which is fsynced (unless not ``durable``: many small files, where a crash
    may lose the newest but never leaves a partial one) and renamed over ``path``. On any failure the temporary
    file is removed and ``path`` is left as it was; a full disk or an unwritable folder is a
    :class:`UserError` that says so."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {path.parent} ({e.strerror or e}); choose another output path") from None
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write.encode() if isinstance(write, str) else write)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and _no_space(e):
            raise UserError(f"no space left on the device holding {path.parent}; {path.name} was not written "
                            "(earlier files are kept): free some space and run the command again") from None
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path} ({e.strerror or e}); choose another output path") from None
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, text)


def write_json(obj: Any, *paths: Path) -> list[Path]:
    """The same JSON document, atomically, at each of ``paths``."""
    text = json.dumps(obj, indent=2) + "\n"
    return [atomic_write(p, text) for p in paths]


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that a process killed during :func:`atomic_write` left."""
    if not folder.is_dir():
        return []
    gone = [p for p in folder.iterdir() if TMP_PATTERN.match(p.name)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def refuse_existing(path: Path, overwrite: bool) -> None:
    """One refusal for every verb: an existing output file is replaced only with ``--overwrite``,
    and a folder never is."""
    if path.is_dir():
        raise UserError(f"{path} is a folder; give --out a file name")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it or choose another --out")


def free_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, or ``stem_2``, ``stem_3``, ... when taken: results are never overwritten."""
    path, k = folder / f"{stem}{suffix}", 1
    while path.exists():
        k += 1
        path = folder / f"{stem}_{k}{suffix}"
    return path


def output_folder(path: Path, overwrite: bool) -> Path:
    """A folder for a verb's outputs, created; refused when it already holds files, unless ``overwrite``."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file; choose a folder for --out")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"{path} already holds files; pass --overwrite or choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {path} ({e.strerror or e}); choose another --out") from None
    return path


def cache_dir() -> Path:
    """torch-sagan's cache: ``$SAGAN_CACHE``, by default ``~/.cache/torch-sagan`` (reference
    statistics, downloaded models, the converted Inception weights)."""
    return expand(os.environ.get("SAGAN_CACHE") or Path.home() / ".cache" / "torch-sagan")


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an exported safetensors file (by its suffix)."""
    return Path(path).suffix == ".safetensors"


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
