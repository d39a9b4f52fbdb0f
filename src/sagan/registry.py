"""Where a generator can come from besides the local disk: named pretrained generators, URLs of
safetensors files and the Hugging Face Hub, each verified and cached.

* a **registry name** (``demo``, ...): an entry of ``pretrained/registry.json`` in the package,
  naming a file shipped in the package or a URL, with its sha256, licence, training data,
  command and published scores; new entries need no code;
* ``https://.../file.safetensors`` (``#sha256=<hex>`` pins it): downloaded once into
  ``$SAGAN_CACHE/models`` and checked; a mismatch is refused and nothing stays in the cache;
* ``hf://owner/repo[@revision][/file]`` (default file ``model.safetensors``): through
  ``huggingface_hub`` (``pip install 'torch-sagan[hub]'``) and its cache.

``SAGAN_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` use the caches only: a missing file is one line
naming what to fetch and where to put it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .console import UserError, info, warn
from .files import cache_dir, sha256_of

__all__ = ["entries", "Located", "locate", "offline", "sha256_of"]

_HF = re.compile(r"^hf://(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[\w.-]+))?(?:/(?P<file>[\w./-]+))?$")


def entries() -> dict[str, dict]:
    """The named pretrained generators."""
    return json.loads((resources.files("sagan") / "pretrained" / "registry.json").read_text())


def offline() -> bool:
    return bool(os.environ.get("SAGAN_OFFLINE")) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false")


def _cache() -> Path:
    return cache_dir() / "models"


@dataclass
class Located:
    """A model file on the local disk, what it was called, and where outputs about it go by default."""

    path: Path
    name: str
    remote: bool  # fetched or shipped: outputs go to ./<name>, never beside the file


def _download(url: str, sha256: str | None, what: str) -> Path:
    """``url`` in the cache (downloaded once, checked against ``sha256`` when given)."""
    name = Path(url.split("?")[0]).name or "model.safetensors"
    key = sha256 or hashlib.sha256(url.encode()).hexdigest()[:16]
    dest = _cache() / key / name
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    if offline():
        raise UserError(f"{what} is not in the cache and downloads are off (SAGAN_OFFLINE / HF_HUB_OFFLINE): "
                        f"download {url} and put it at {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part{os.getpid()}")
    info(f"downloading {url} to {dest}")
    try:
        with urllib.request.urlopen(url, timeout=15) as r, open(tmp, "wb") as f:  # noqa: S310 (http(s) only)
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
        got = sha256_of(tmp)
        if sha256 is not None and got != sha256:
            raise UserError(f"{url} does not have the expected sha256 ({got[:16]}... instead of {sha256[:16]}...); "
                            "refusing it (nothing was kept)")
        if sha256 is None:
            warn(f"{url} is not pinned: add #sha256={got} to check it next time")
        os.replace(tmp, dest)
    except (OSError, socket.timeout, ValueError) as e:
        raise UserError(f"could not download {url} ({getattr(e, 'reason', None) or e}); check the address and the "
                        f"network, or put the file at {dest}") from None
    finally:
        tmp.unlink(missing_ok=True)
        if not any(dest.parent.iterdir()):
            dest.parent.rmdir()
    return dest


def _from_hub(source: str) -> Path:
    m = _HF.match(source)
    if not m:
        raise UserError(f"{source}: write Hub models as hf://owner/repo, hf://owner/repo@revision or "
                        "hf://owner/repo/file.safetensors")
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise UserError("loading from the Hugging Face Hub needs huggingface_hub: pip install 'torch-sagan[hub]'") from None
    repo, rev, file = m.group("repo"), m.group("rev"), m.group("file") or "model.safetensors"
    try:
        return Path(huggingface_hub.hf_hub_download(repo, file, revision=rev, local_files_only=offline()))
    except LocalEntryNotFoundError:
        raise UserError(f"{source} is not in the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) and "
                        f"downloads are off or failed: run once online, or `hf download {repo} {file}`") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise UserError(f"{source}: {str(e).splitlines()[0][:160]}") from None


def locate(source: str | os.PathLike) -> Located | None:
    """The local file behind a registry name, a URL or an ``hf://`` address; None for anything else.
    (:func:`sagan.sources.resolve_source` asks only when no local model has that name.)"""
    text = str(source)
    if text.startswith("hf://"):
        path = _from_hub(text)
        return Located(path, _HF.match(text).group("repo").split("/")[1], True)
    if text.startswith(("https://", "http://")):
        url, _, frag = text.partition("#")
        pin = frag[len("sha256="):] if frag.startswith("sha256=") else None
        return Located(_download(url, pin, url), Path(url.split("?")[0]).stem, True)
    e = entries().get(text)
    if e is not None:
        if "file" in e:
            path = Path(str(resources.files("sagan") / "pretrained" / e["file"]))
            if e.get("sha256") and sha256_of(path) != e["sha256"]:
                raise UserError(f"the packaged {text} generator does not match its sha256; reinstall torch-sagan")
        else:
            path = _download(e["url"], e.get("sha256"), f"the pretrained generator {text!r}")
        if e.get("notice"):  # terms a user must see before using the samples (non-commercial data, say)
            info(f"{text}: {e['notice']}")
        return Located(path, text, True)
    return None
