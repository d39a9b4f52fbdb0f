"""Reading image datasets and streaming training batches.

Sources:

* a folder or a zip archive with torchvision ``ImageFolder`` semantics: class subfolders,
  sorted, give the labels; images directly at the top mean unconditional data. A single
  wrapping folder (``archive.zip: cifar10/<class>/...``) is looked through.
* CIFAR-10/100 python batches (the extracted ``cifar-10-batches-py`` folder or its .tar.gz).
* MNIST IDX files (a folder holding ``train-``/``t10k-images-idx3-ubyte[.gz]``).

Images are resized (shorter side) and centre-cropped to the model's resolution and converted to
grayscale or RGB. Datasets that fit in memory are decoded once, by DataLoader workers, into a
uint8 tensor; larger ones are decoded on the fly by workers during training.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .console import UserError, info, warn
from .files import demo_data_path, expand
from .images import to_model_range

__all__ = ["ImageData", "open_dataset", "BatchStream", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


# --------------------------------------------------------------------------------------------
# Listing files: one interface for folders and zips


class _Files:
    """Lists and opens the files of a folder or a zip archive by relative posix path."""

    def __init__(self, root: Path):
        self.root = root
        self.is_zip = root.is_file()
        self._zip = None
        if self.is_zip:
            try:
                with zipfile.ZipFile(root) as z:
                    names = [n for n in z.namelist() if not _is_junk(n)]
            except (zipfile.BadZipFile, OSError, EOFError):
                raise UserError(f"{root} is not a readable zip archive; check the file or unpack it") from None
            unsafe = [n for n in names if n.startswith("/") or ".." in n.split("/") or ":" in n.split("/")[0]]
            if unsafe:  # absolute or escaping names would make nameless or foreign classes
                warn(f"skipped {len(unsafe)} entr{'ies' if len(unsafe) > 1 else 'y'} of {root} with an absolute or "
                     f"parent path ({', '.join(unsafe[:3])}{', ...' if len(unsafe) > 3 else ''})")
            skipped = set(unsafe)
            self.names = [n for n in names if n not in skipped]
        else:
            self.names = []
            seen, loops = set(), 0
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                real = os.path.realpath(dirpath)
                if real in seen:  # a symlink back into the tree: walking it would never end
                    loops += 1
                    dirnames[:] = []
                    continue
                seen.add(real)
                dirnames[:] = sorted(d for d in dirnames if not _is_junk(d))
                rel = Path(dirpath).relative_to(root)
                for fn in sorted(filenames):
                    if not _is_junk((rel / fn).as_posix()):
                        self.names.append((rel / fn).as_posix())
                for d in dirnames:  # keep empty folders visible so that empty classes are reported
                    if not any(True for _ in os.scandir(Path(dirpath) / d)):
                        self.names.append((rel / d).as_posix() + "/")
            if loops:
                warn(f"skipped {loops} symbolic link{'s' if loops > 1 else ''} in {root} that lead back to a folder "
                     "already read (a loop)")

    def open(self, name: str) -> io.BytesIO:
        if self.is_zip:
            if self._zip is None or self._zip_pid != os.getpid():  # one handle per worker process
                self._zip, self._zip_pid = zipfile.ZipFile(self.root), os.getpid()
            return io.BytesIO(self._zip.read(name))
        with open(self.root / name, "rb") as f:
            return io.BytesIO(f.read())

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"] = None
        return state


def _is_junk(name: str) -> bool:
    """macOS resource forks, hidden files and folders: never part of a dataset."""
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/") if part)


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------
# The dataset


@dataclass
class ImageData:
    """A dataset prepared for one resolution and channel count.

    ``images`` is a uint8 tensor (N, C, R, R) when cached in memory, else None and
    ``__getitem__`` decodes on the fly. ``labels`` is a long tensor (all 0 when unconditional).
    """

    resolution: int
    channels: int
    labels: torch.Tensor
    class_names: list[str]
    source: str
    images: torch.Tensor | None = None
    _files: _Files | None = None
    _names: list[str] = field(default_factory=list)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)
    split: str | None = None  # train or test, for sources that hold both (CIFAR, MNIST)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def fingerprint(self) -> str:
        """A content hash of the dataset as prepared (pixels and labels), computed once; keys
        cached statistics. Without the in-memory cache: names, size and mtime of the source."""
        if self._fingerprint is None:
            h = hashlib.sha256(f"{self.resolution}:{self.channels}:{len(self)}".encode())
            if self.images is not None:
                h.update(self.images.contiguous().numpy())  # hashed in place, no copy
            else:
                h.update(str(self.source).encode())
                for n in self._names:
                    h.update(n.encode())
                try:
                    st = os.stat(self.source)
                    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
                except OSError:
                    pass
            h.update(self.labels.numpy())
            self._fingerprint = h.hexdigest()[:24]
        return self._fingerprint

    def decode(self, i: int) -> torch.Tensor | None:
        """Image ``i`` as uint8 (C, R, R), or None when the file cannot be decoded."""
        if self.images is not None:
            return self.images[i]
        return _decode_file(self._files, self._names[i], self.resolution, self.channels)

    def fetch(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Image ``i``, its label, and -1; or, when ``i`` is unreadable (only possible without
        the cache), the next readable image with *its* label, and ``i``."""
        img = self.decode(i)
        if img is not None:
            return img, self.labels[i], -1
        for step in range(1, 64):
            j = (i + step) % len(self)
            img = self.decode(j)
            if img is not None:
                return img, self.labels[j], i
        raise UserError(f"dozens of unreadable images in a row in {self.source}; check the data")

    def __getitem__(self, i: int):
        img, label, _ = self.fetch(i)
        return img, label


class _Fetch(torch.utils.data.Dataset):
    """DataLoader view of an ImageData that also reports substituted (unreadable) indices."""

    def __init__(self, data: ImageData):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data.fetch(i)


def _decode_file(files: _Files, name: str, resolution: int, channels: int,
                 sizes: list[int] | None = None) -> torch.Tensor | None:
    """Read and decode one file; None when it cannot be read (a bad zip entry included)."""
    try:
        buf = files.open(name)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError):
        return None
    return _decode(buf, resolution, channels, sizes)


def _decode(buf: io.BytesIO, resolution: int, channels: int, sizes: list[int] | None = None) -> torch.Tensor | None:
    """Decode one image file and prepare it; its shorter side is appended to ``sizes``."""
    try:
        with Image.open(buf) as im:
            im.load()
            if sizes is not None:
                sizes.append(min(im.size))
            if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integer or float grayscale: to 8 bits
                im = _to_8bit(im)
                if im is None:
                    return None
            return prepare(im, resolution, channels)
    except Exception:
        return None


def _to_8bit(im: Image.Image) -> Image.Image | None:
    """Integer images scaled from their bit depth; float images from [0, 1] (or [0, 255], or
    [0, 65535]) to 8 bits; None when a float image has no such range (counted as unreadable)."""
    a = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 65535:
            return None
        full = 1.0 if a.max() <= 1.0 else 255.0 if a.max() <= 255 else 65535.0
    else:
        full = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
    return Image.fromarray(np.round(a * 255.0 / full).clip(0, 255).astype(np.uint8))


def prepare(im: Image.Image, res: int, channels: int) -> torch.Tensor:
    """The one preparation of every image, whatever its container: convert to grayscale or RGB,
    resize the shorter side to ``res`` (bicubic up, Lanczos down) and centre-crop; uint8 (C, res, res)."""
    im = im.convert("L" if channels == 1 else "RGB")
    w, h = im.size
    if (w, h) != (res, res):
        s = res / min(w, h)
        nw, nh = max(res, round(w * s)), max(res, round(h * s))
        im = im.resize((nw, nh), Image.Resampling.BICUBIC if s > 1 else Image.Resampling.LANCZOS)
        left, top = (nw - res) // 2, (nh - res) // 2
        im = im.crop((left, top, left + res, top + res))
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _prepare_array(x: torch.Tensor, res: int, channels: int) -> torch.Tensor:
    """:func:`prepare` for every image of a uint8 (N, C, H, W) array (CIFAR, MNIST)."""
    if x.shape[-1] == res and x.shape[-2] == res and x.shape[1] == channels:
        return x.contiguous()
    out = torch.empty(len(x), channels, res, res, dtype=torch.uint8)
    for i, a in enumerate(x.permute(0, 2, 3, 1).numpy()):
        out[i] = prepare(Image.fromarray(a[:, :, 0] if a.shape[-1] == 1 else a), res, channels)
    return out


# --------------------------------------------------------------------------------------------
# Layout detection for folders and zips


def _layout(names: list[str], where: str) -> tuple[str, list[str], list[int], list[str], int]:
    """Decide the layout. Returns (prefix, image names, labels, class names, non-image count)."""
    prefix = ""
    while True:
        rel = [n[len(prefix) :] for n in names if n.startswith(prefix)]
        tops = {r.split("/", 1)[0] for r in rel if "/" in r}
        top_images = [r for r in rel if "/" not in r and _is_image(r)]
        # look through one wrapping folder that holds only subfolders (e.g. a zip of 'cifar10/')
        if not top_images and len(tops) == 1:
            only = next(iter(tops))
            inner = [r[len(only) + 1 :] for r in rel if r.startswith(only + "/")]
            if inner and not any("/" not in r and _is_image(r) for r in inner):
                prefix += only + "/"
                continue
        break
    files = [r for r in rel if r and not r.endswith("/")]
    images = [r for r in files if _is_image(r)]
    skipped = len(files) - len(images)
    top_images = [r for r in images if "/" not in r]
    nested = [r for r in images if "/" in r]
    if not images:
        raise UserError(f"no images found in {where}; expected image files or one subfolder per class")
    if top_images and nested:
        raise UserError(
            f"ambiguous layout in {where}: {len(top_images)} images sit at the top and {len(nested)} in "
            "subfolders; put all images in class subfolders (conditional) or all at the top (unconditional)"
        )
    if top_images:
        return prefix, sorted(top_images), [0] * len(top_images), [], skipped
    classes = sorted({r.split("/", 1)[0] for r in rel if "/" in r})
    per_class = {c: [] for c in classes}
    for r in images:
        per_class[r.split("/", 1)[0]].append(r)
    empty = [c for c in classes if not per_class[c]]
    if empty:
        raise UserError(
            f"class folder '{empty[0]}' in {where} holds no images; remove it or add images "
            f"({len(empty)} empty class folder{'s' if len(empty) > 1 else ''})"
        )
    for c in classes:
        direct = [r for r in per_class[c] if r.count("/") == 1]
        if not direct:
            subs = sorted({r.split("/")[1] for r in per_class[c]})
            if len(subs) > 1:
                raise UserError(
                    f"ambiguous layout in {where}: class folder '{c}' holds only subfolders ({', '.join(subs[:4])}"
                    f"{', ...' if len(subs) > 4 else ''}); point --data at the folder whose subfolders are the classes"
                )
    if len(classes) == 1:
        info(f"one class folder ('{classes[0]}') found: training unconditionally")
        imgs = sorted(per_class[classes[0]])
        return prefix, imgs, [0] * len(imgs), [], skipped
    out_names, labels = [], []
    for k, c in enumerate(classes):
        for r in sorted(per_class[c]):
            out_names.append(r)
            labels.append(k)
    return prefix, out_names, labels, classes, skipped


def _guess_channels(files: _Files, names: list[str]) -> int:
    step = max(1, len(names) // 32)
    for n in names[::step][:32]:
        try:
            with Image.open(files.open(n)) as im:
                if im.mode not in _GRAY_MODES:
                    return 3
        except Exception:
            continue
    return 1


# --------------------------------------------------------------------------------------------
# CIFAR and MNIST readers


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}: it looks truncated or damaged); "
                        "download the MNIST file again") from None
    if len(data) < 4:
        raise UserError(f"{path} is empty or truncated; download the MNIST file again")
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3) or len(data) < 4 + 4 * ndim:
        raise UserError(f"{path} is not an MNIST IDX file of unsigned bytes")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    need = int(np.prod(dims))
    if len(data) - 4 - 4 * ndim < need:
        raise UserError(f"{path} is truncated: its header announces {dims[0]:,} items but the file ends early; "
                        "download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim, count=need).reshape(dims)


def _find_idx(root: Path, split: str, what: str) -> Path | None:
    stem = {"train": "train", "test": "t10k"}[split]
    pattern = f"{stem}*{what}*idx{3 if what == 'images' else 1}*ubyte*"
    found = sorted(p for p in root.glob(pattern) if p.name.endswith(("ubyte", "ubyte.gz")))
    return found[0] if found else None


def _mnist(root: Path, split: str):
    img, lab = _find_idx(root, split, "images"), _find_idx(root, split, "labels")
    other = "test" if split == "train" else "train"
    if (img is None or lab is None) and _find_idx(root, other, "images") and _find_idx(root, other, "labels"):
        info(f"no MNIST {split} split in {root}; using its {other} split")
        img, lab = _find_idx(root, other, "images"), _find_idx(root, other, "labels")
    if img is None or lab is None:
        raise UserError(f"no MNIST {split} files in {root}; expected {'t10k' if split == 'test' else 'train'}-images-idx3-ubyte[.gz] and its labels")
    x, y = _read_idx(img), _read_idx(lab)
    if x.ndim != 3 or y.ndim != 1:
        raise UserError(f"{img} should hold images (3 dimensions) and {lab} labels (1 dimension)")
    if len(x) != len(y):
        raise UserError(f"{img} has {len(x)} images but {lab} has {len(y)} labels")
    _check_labels(y, 10, lab)
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)), [str(i) for i in range(10)]


def _check_labels(y: np.ndarray, classes: int, where) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise UserError(f"{where} has labels from {int(y.min())} to {int(y.max())}, outside 0..{classes - 1}; "
                        "the file is damaged or not what it claims to be")


class _Refused(pickle.UnpicklingError):
    """A global that a CIFAR batch never refers to."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR python batch holds (dicts, lists, bytes, ints and numpy arrays)
    and refuses everything else: a crafted batch must not run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def _unpickle_cifar(blob: bytes, where: str) -> dict:
    try:
        d = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except _Refused as e:
        raise UserError(f"{where} is not a CIFAR batch: it refers to {e}, which a CIFAR batch never holds; "
                        "refusing to load it (it could run code)") from None
    except Exception as e:
        raise UserError(f"{where} is not a readable CIFAR batch ({type(e).__name__}); re-extract the archive") from None
    if not isinstance(d, dict):
        raise UserError(f"{where} is not a CIFAR batch (no dictionary inside)")
    return d


def _cifar_members(root: Path):
    """(basename, bytes reader) for the files of a CIFAR folder or .tar.gz."""
    if root.is_file():
        def read(m):
            try:
                return tf.extractfile(m).read()
            except (OSError, EOFError, tarfile.TarError, zlib.error):
                raise UserError(f"{root} is truncated or damaged (reading {m.name} failed); download it again") from None

        try:
            tf = tarfile.open(root)
            members = tf.getmembers()
        except (OSError, EOFError, tarfile.TarError, zlib.error):
            raise UserError(f"{root} is not a readable .tar.gz (truncated or damaged); download it again") from None
        return {Path(m.name).name: (lambda m=m: read(m)) for m in members if m.isfile()}
    return {p.name: (lambda p=p: p.read_bytes()) for p in root.iterdir() if p.is_file()}


def _cifar(root: Path, split: str):
    files = _cifar_members(root)
    if "batches.meta" in files or "test_batch" in files or any(n.startswith("data_batch_") for n in files):  # CIFAR-10
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key, meta, meta_key = b"labels", "batches.meta", b"label_names"
    else:  # CIFAR-100
        names, key, meta, meta_key = [split], b"fine_labels", "meta", b"fine_label_names"
    missing = [n for n in names if n not in files]
    if missing:
        raise UserError(f"{root} lacks the CIFAR file(s) {', '.join(missing)} for the {split} split; re-extract the archive")
    xs, ys = [], []
    for n in names:
        d = _unpickle_cifar(files[n](), f"{root}: {n}")
        try:
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64).reshape(-1))
        except (KeyError, ValueError, TypeError):
            raise UserError(f"{root}: {n} lacks CIFAR's data or {key.decode()} (or they have other shapes)") from None
        if len(xs[-1]) != len(ys[-1]):
            raise UserError(f"{root}: {n} has {len(xs[-1])} images but {len(ys[-1])} labels")
    classes = None
    if meta in files:
        try:
            classes = [c.decode() for c in _unpickle_cifar(files[meta](), f"{root}: {meta}")[meta_key]]
        except (KeyError, AttributeError, TypeError):
            raise UserError(f"{root}: {meta} lacks the class names") from None
    y = np.concatenate(ys)
    classes = classes or [str(i) for i in range(int(y.max()) + 1)]
    _check_labels(y, len(classes), root)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(y), classes


def _array_kind(root: Path) -> str | None:
    if root.is_dir():
        names = {p.name for p in root.iterdir()}
        if {"data_batch_1", "test_batch"} & names or {"train", "meta"} <= names:
            return "cifar"
        if any("idx3-ubyte" in n for n in names):
            return "mnist"
    elif root.name.endswith((".tar.gz", ".tgz")) and "cifar" in root.name.lower():
        return "cifar"
    return None


# --------------------------------------------------------------------------------------------


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def peek_resolution(path: str | os.PathLike, sample: int = 200) -> int:
    """The shorter side of the first image of a folder or zip (for scoring sets at their own
    size); a warning when the first ``sample`` images have several sizes."""
    root = expand(path)
    if not root.exists():
        raise UserError(f"{root} does not exist")
    if _array_kind(root) is not None:
        return 32 if _array_kind(root) == "cifar" else 28
    files = _Files(root)
    sizes: list[int] = []
    for n in [n for n in files.names if _is_image(n)][:sample]:
        try:
            with Image.open(files.open(n)) as im:
                sizes.append(min(im.size))
        except Exception:
            continue
    if not sizes:
        raise UserError(f"no readable image in {root}")
    if len(set(sizes)) > 1:
        shown = ", ".join(f"{s} px" for s in sorted(set(sizes))[:4])
        warn(f"{root} holds images of several sizes (shorter sides {shown} among the first {len(sizes)}); "
             f"scoring at {sizes[0]} px, the first image's: pass --resolution to choose")
    return sizes[0]


def default_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1)))


def open_dataset(
    path: str | os.PathLike | None,
    resolution: int,
    channels: int | None = None,
    split: str = "train",
    cache: str = "auto",
    workers: int = -1,
    verbose: bool = True,
    progress: bool = True,
) -> ImageData:
    """Open ``path`` (None: the bundled MNIST demo) at ``resolution``.

    ``channels`` None picks 1 for grayscale data and 3 otherwise; mixed data is converted.
    Prints what was found; unreadable images are skipped with one counted warning.
    """
    root = demo_data_path() if path is None else expand(path)
    if path is None:
        split = "test"  # the bundled demo data is the MNIST test set
    if not root.exists():
        raise UserError(f"{root} does not exist; give a folder or a zip of images, a CIFAR folder or .tar.gz, or an "
                        "MNIST folder")
    workers = default_workers() if workers < 0 else workers
    kind = _array_kind(root)
    if kind is not None:
        x, y, classes = (_mnist if kind == "mnist" else _cifar)(root, split)
        ch = channels or x.shape[1]
        data = ImageData(resolution, ch, y, classes, str(root), images=_prepare_array(x, resolution, ch), split=split)
        if verbose:
            _announce(data, kind.upper())
        return data

    if not (root.is_dir() or zipfile.is_zipfile(root)):
        raise UserError(f"{root} is neither a folder nor a zip archive of images")
    files = _Files(root)
    prefix, names, labels, classes, non_images = _layout(files.names, str(root))
    names = [prefix + n for n in names]
    if non_images:
        warn(f"ignored {non_images} non-image file{'s' if non_images > 1 else ''} in {root}")
    ch = channels or _guess_channels(files, names)
    data = ImageData(resolution, ch, torch.tensor(labels, dtype=torch.long), classes, str(root), _files=files, _names=names)
    need = len(names) * ch * resolution * resolution
    # under torchrun every process on a node holds its own cache: share the budget among them
    budget = _available_memory() // 2 // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    use_cache = cache == "memory" or (cache == "auto" and need < budget)
    if use_cache:
        _fill_cache(data, workers, verbose and progress)
    elif verbose:
        info(f"decoding on the fly with {workers} workers (a cache would need {need / 2**30:.1f} GiB)")
    if verbose:
        _announce(data, "zip" if files.is_zip else "folder")
    return data


class _DecodeAll(torch.utils.data.Dataset):
    def __init__(self, data: ImageData):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        d, sizes = self.data, []
        img = _decode_file(d._files, d._names[i], d.resolution, d.channels, sizes)
        ok = img is not None
        if not ok:
            img = torch.zeros(d.channels, d.resolution, d.resolution, dtype=torch.uint8)
        return img, ok, (sizes[0] if sizes else 0)


def _fill_cache(data: ImageData, workers: int, verbose: bool) -> None:
    n, r = len(data), data.resolution
    images = torch.empty(n, data.channels, r, r, dtype=torch.uint8)
    ok = torch.empty(n, dtype=torch.bool)
    side = torch.empty(n, dtype=torch.long)
    loader = torch.utils.data.DataLoader(_DecodeAll(data), batch_size=256, num_workers=workers)
    i = 0
    for x, good, sides in tqdm(loader, desc="decoding images", unit="batch", disable=not verbose, leave=False):
        images[i : i + len(x)], ok[i : i + len(x)], side[i : i + len(x)] = x, good, sides
        i += len(x)
    small = (ok & (side < r)).nonzero().flatten().tolist()
    if small:
        examples = ", ".join(f"{data._names[j]} ({int(side[j])} px)" for j in small[:3])
        warn(f"{len(small)} image{'s are' if len(small) > 1 else ' is'} smaller than {r}x{r} and "
             f"{'were' if len(small) > 1 else 'was'} upscaled, which blurs {'them' if len(small) > 1 else 'it'} "
             f"({examples}{', ...' if len(small) > 3 else ''}); consider a lower model.resolution")
    bad = (~ok).nonzero().flatten().tolist()
    if bad:
        examples = ", ".join(data._names[j] for j in bad[:3])
        warn(f"skipped {len(bad)} unreadable image{'s' if len(bad) > 1 else ''} ({examples}{', ...' if len(bad) > 3 else ''})")
        if len(bad) == n:
            raise UserError(f"none of the {n} images in {data.source} could be decoded")
    data.images, data.labels = images[ok].contiguous() if bad else images, data.labels[ok]
    data._names = [nm for nm, g in zip(data._names, ok.tolist()) if g]


def _announce(data: ImageData, kind: str) -> None:
    """Say what was found: how many images, from where, which classes, at what size."""
    if data.num_classes:
        shown = ", ".join(f"{i}={c}" for i, c in enumerate(data.class_names[:12]))
        more = f", ... ({data.num_classes} in all)" if data.num_classes > 12 else ""
        cls = f"{data.num_classes} classes: {shown}{more}"
    else:
        cls = "no classes (unconditional)"
    info(
        f"data: {len(data):,} images from {data.source} ({kind}), {cls}; "
        f"{'grayscale' if data.channels == 1 else 'RGB'} at {data.resolution}x{data.resolution}"
        + (", cached in memory" if data.images is not None else "")
    )


# --------------------------------------------------------------------------------------------
# Streaming batches


class BatchStream:
    """Endless, resumable stream of training batches.

    Each epoch's order comes from a :class:`~torch.utils.data.DistributedSampler` seeded with
    ``seed`` and set to the epoch, so the order is a pure function of (seed, epoch) and the stream
    resumes exactly from ``state_dict()``. Under distributed training rank ``r`` of ``world`` takes
    every world-th index of the permutation, so the ranks' batches together are the batch one
    process would draw with ``world x batch_size``; flips are drawn for that global batch too.
    Batches come out as float images in [-1, 1] on ``device``, with random flips when ``flip``.
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        seed: int = 0,
        flip: bool = False,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
    ):
        per_rank = len(data) // world
        if per_rank < batch_size:
            raise UserError(
                f"the dataset has {len(data)} images, fewer than one batch of {batch_size} per process; lower --train.batch_size"
            )
        self.data, self.batch_size, self.seed, self.flip = data, batch_size, seed, flip
        self.device, self.rank, self.world, self.workers = torch.device(device), rank, world, workers
        self.batches_per_epoch = per_rank // batch_size
        self.epoch, self.position = 0, 0
        self._iter: Iterator | None = None
        self._unreadable: set[int] = set()
        self._reported: set[int] = set()

    def _order(self, epoch: int) -> torch.Tensor:
        sampler = torch.utils.data.DistributedSampler(
            range(len(self.data)), num_replicas=self.world, rank=self.rank, shuffle=True,
            seed=self.seed * 1_000_003, drop_last=True,
        )
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler), dtype=torch.long)

    def _batch_indices(self, epoch: int, start: int) -> Iterator[torch.Tensor]:
        order = self._order(epoch)
        for b in range(start, self.batches_per_epoch):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]

    def _new_iter(self) -> Iterator:
        indices = self._batch_indices(self.epoch, self.position)
        if self.data.images is not None:
            return ((self.data.images[i], self.data.labels[i]) for i in indices)
        # the loader's own generator, seeded from the run's state: a new iterator would otherwise
        # draw its worker seed from the global RNG and change the training noise after a resume
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 100_003 + self.position)
        loader = torch.utils.data.DataLoader(
            _Fetch(self.data),
            batch_sampler=[i.tolist() for i in indices],
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=gen,
        )
        return iter(loader)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self._report_unreadable()
            self.epoch, self.position, self._iter = self.epoch + 1, 0, None
        if self._iter is None:
            self._iter = self._new_iter()
        item = next(self._iter)
        if len(item) == 3:  # decoded on the fly: note unreadable files that were substituted
            x, y, bad = item
            self._unreadable.update(int(b) for b in bad.tolist() if b >= 0)
        else:
            x, y = item
        if self.flip:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 100_003 + self.position)
            mask = (torch.rand(len(x) * self.world, generator=g) < 0.5)[self.rank :: self.world]
            x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
        self.position += 1
        x = to_model_range(x.to(self.device, non_blocking=True))
        return x, y.to(self.device, non_blocking=True)

    def _report_unreadable(self) -> None:
        new = sorted(self._unreadable - self._reported)
        if new:
            names = ", ".join(self.data._names[i] for i in new[:3]) + (", ..." if len(new) > 3 else "")
            warn(f"skipped {len(new)} unreadable image{'s' if len(new) > 1 else ''} in epoch {self.epoch} "
                 f"({names}); neighbours were used in their place")
            self._reported.update(new)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "world": self.world}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._iter = int(state["epoch"]), int(state["position"]), None
        self.position = min(self.position, self.batches_per_epoch)  # the data may have shrunk
        saved_world = int(state.get("world", 1))
        if saved_world != self.world:
            # another number of processes splits epochs into other batches: keep the fraction
            # of the epoch already seen, so that no image is seen twice as often as the others
            self.position = min(self.batches_per_epoch, self.position * saved_world // self.world)
            warn(f"resuming on {self.world} processes a run saved on {saved_world}: the data order "
                 "continues from the same point of the epoch, but not bit for bit")
