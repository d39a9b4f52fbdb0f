"""Tests for sagan.data: dataset layouts, decoding, resizing and the training batch stream.

Every dataset is written here, under tmp_path, with pixel values chosen so that the expected
result is known independently of the code under test (a solid colour per class, an index encoded
in the pixel value, hand-written IDX headers, CIFAR's documented channel-major row layout).
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sagan.console import UserError
from sagan.data import BatchStream, ImageData, open_dataset
from sagan.files import demo_data_path

# --------------------------------------------------------------------------------------------
# Helpers

# One solid colour per class. Created in this (unsorted) order; sorted order is apple, mango, zebra.
CLASS_COLOURS = {"zebra": (200, 20, 20), "apple": (20, 200, 20), "mango": (20, 20, 200)}
CLASS_COUNTS = {"zebra": 2, "apple": 3, "mango": 1}  # distinct counts, so a label shift shows


def solid(colour, size=(8, 8)) -> np.ndarray:
    """A solid image of ``size`` (w, h): RGB for a 3-tuple, grayscale for an int."""
    w, h = size
    if isinstance(colour, int):
        return np.full((h, w), colour, dtype=np.uint8)
    return np.broadcast_to(np.asarray(colour, dtype=np.uint8), (h, w, 3)).copy()


def write_image(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_class_tree(root: Path, counts=CLASS_COUNTS, size=(8, 8)) -> Path:
    """root/<class>/<i>.png, each a solid image of its class colour, classes created unsorted."""
    for name, n in counts.items():
        for i in range(n):
            write_image(root / name / f"{i}.png", solid(CLASS_COLOURS[name], size))
    return root


def write_class_zip(dest: Path, compression=zipfile.ZIP_DEFLATED, prefix: str = "") -> Path:
    """The class tree of write_class_tree as a zip, members in unsorted class order (zebra first)."""
    with zipfile.ZipFile(dest, "w", compression=compression) as z:
        for name, n in CLASS_COUNTS.items():
            for i in range(n):
                z.writestr(f"{prefix}{name}/{i}.png", png_bytes(solid(CLASS_COLOURS[name])))
    return dest


def open_(path, resolution=8, **kw) -> ImageData:
    kw.setdefault("workers", 0)
    kw.setdefault("verbose", False)
    return open_dataset(path, resolution, **kw)


def colour_at(img: torch.Tensor) -> tuple[int, ...]:
    """The (C,) value of a solid uint8 CHW image, after checking that it is solid."""
    first = img[:, :1, :1]
    assert torch.equal(img, first.expand_as(img)), "image is not solid"
    return tuple(int(v) for v in first.flatten())


def assert_labels_match_colours(data: ImageData) -> None:
    """Each image's colour is the colour of the class its label names."""
    for i in range(len(data)):
        img, label = data[i]
        assert colour_at(img) == CLASS_COLOURS[data.class_names[int(label)]], f"item {i}"


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def write_idx(path: Path, arr: np.ndarray) -> Path:
    """An MNIST IDX file of unsigned bytes: magic 0x0000080N (2051 for 3-d, 2049 for 1-d), dims, data."""
    magic = {3: 2051, 1: 2049}[arr.ndim]
    raw = struct.pack(">I", magic) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


# --------------------------------------------------------------------------------------------
# 1-2. Folders: class subfolders and flat


def test_class_folders_labels_follow_sorted_names(tmp_path):
    data = open_(write_class_tree(tmp_path / "d"))
    assert data.class_names == ["apple", "mango", "zebra"]
    assert data.num_classes == 3
    assert len(data) == sum(CLASS_COUNTS.values()) == 6
    assert data.channels == 3
    assert data.images.shape == (6, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.long
    assert Counter(data.labels.tolist()) == {0: 3, 1: 1, 2: 2}
    assert_labels_match_colours(data)


def test_class_folder_images_nested_deeper_keep_their_class(tmp_path):
    root = write_class_tree(tmp_path / "d")
    write_image(root / "mango" / "more" / "deep.png", solid(CLASS_COLOURS["mango"]))
    data = open_(root)
    assert Counter(data.labels.tolist()) == {0: 3, 1: 2, 2: 2}
    assert_labels_match_colours(data)


def test_flat_folder_is_unconditional(tmp_path):
    values = [10, 60, 110, 160]
    for v in values:
        write_image(tmp_path / "d" / f"img{v}.png", solid(v))
    data = open_(tmp_path / "d")
    assert data.num_classes == 0 and data.class_names == []
    assert len(data) == 4
    assert data.labels.tolist() == [0, 0, 0, 0]
    assert data.channels == 1
    assert sorted(colour_at(data[i][0])[0] for i in range(len(data))) == values


def test_single_class_folder_trains_unconditionally(tmp_path, capsys):
    write_class_tree(tmp_path / "d", {"apple": 3})
    data = open_(tmp_path / "d")
    assert data.num_classes == 0 and len(data) == 3
    assert all(colour_at(data[i][0]) == CLASS_COLOURS["apple"] for i in range(3))
    assert "one class folder" in capsys.readouterr().err


def test_wrapping_folder_is_looked_through(tmp_path):
    write_class_tree(tmp_path / "root" / "train")
    data = open_(tmp_path / "root")
    assert data.class_names == ["apple", "mango", "zebra"]
    assert len(data) == 6
    assert_labels_match_colours(data)


# --------------------------------------------------------------------------------------------
# 3. Zip archives


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
@pytest.mark.parametrize("cache", ["memory", "none"])
def test_zip_with_class_folders_is_read_in_place(tmp_path, compression, cache):
    archive = write_class_zip(tmp_path / "data.zip", compression)
    assert zipfile.ZipFile(archive).namelist()[0].startswith("zebra/")
    assert all(i.compress_type == compression for i in zipfile.ZipFile(archive).infolist())
    (tmp_path / "work").mkdir()
    before = sorted((tmp_path / "work").iterdir())
    data = open_(archive, cache=cache)
    assert data.source == str(archive)
    assert data.class_names == ["apple", "mango", "zebra"]
    assert len(data) == 6
    assert Counter(data.labels.tolist()) == {0: 3, 1: 1, 2: 2}
    assert (data.images is None) == (cache == "none")
    assert_labels_match_colours(data)
    assert sorted((tmp_path / "work").iterdir()) == before  # nothing extracted


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_zip_with_single_wrapping_folder_is_looked_through(tmp_path, compression):
    archive = write_class_zip(tmp_path / "data.zip", compression, prefix="wrap/")
    assert all(n.startswith("wrap/") for n in zipfile.ZipFile(archive).namelist())
    data = open_(archive)
    assert data.class_names == ["apple", "mango", "zebra"]
    assert len(data) == 6
    assert_labels_match_colours(data)


def test_flat_zip_is_unconditional(tmp_path):
    with zipfile.ZipFile(tmp_path / "flat.zip", "w") as z:
        for v in (30, 90, 150):
            z.writestr(f"img{v}.png", png_bytes(solid(v)))
    data = open_(tmp_path / "flat.zip")
    assert data.num_classes == 0 and len(data) == 3 and data.channels == 1
    assert sorted(colour_at(data.images[i])[0] for i in range(3)) == [30, 90, 150]


def test_empty_class_folder_in_zip_is_reported_like_in_a_folder(tmp_path):
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as z:
        z.writestr("apple/0.png", png_bytes(solid(CLASS_COLOURS["apple"])))
        z.writestr("mango/", b"")
        z.writestr("zebra/0.png", png_bytes(solid(CLASS_COLOURS["zebra"])))
    with pytest.raises(UserError, match="mango"):
        open_(tmp_path / "data.zip")


# --------------------------------------------------------------------------------------------
# 4. Unreadable and non-image files


def test_corrupt_image_is_skipped_with_one_counted_warning(tmp_path, capsys):
    root = write_class_tree(tmp_path / "d")
    (root / "apple" / "1b_broken.png").write_bytes(b"this is not a png at all" * 10)
    data = open_(root)
    assert len(data) == 6  # 7 files, one skipped
    assert data.images.shape[0] == 6 and data.labels.shape[0] == 6
    assert Counter(data.labels.tolist()) == {0: 3, 1: 1, 2: 2}
    assert_labels_match_colours(data)  # labels stay aligned with images after the removal
    warns = warnings_in(capsys.readouterr().err)
    assert len(warns) == 1
    assert "skipped 1 unreadable image" in warns[0] and "1b_broken.png" in warns[0]


def test_several_corrupt_images_counted_in_one_warning(tmp_path, capsys):
    root = write_class_tree(tmp_path / "d")
    for name in ("apple/x.png", "zebra/y.png", "mango/z.jpg"):
        (root / name).write_bytes(b"\x89PNG garbage")
    data = open_(root)
    assert len(data) == 6
    assert_labels_match_colours(data)
    warns = warnings_in(capsys.readouterr().err)
    assert len(warns) == 1 and "skipped 3 unreadable images" in warns[0]


def test_non_image_file_is_ignored_with_warning(tmp_path, capsys):
    root = write_class_tree(tmp_path / "d")
    (root / "notes.txt").write_text("not an image")
    (root / "apple" / "labels.csv").write_text("a,b")
    data = open_(root)
    assert data.class_names == ["apple", "mango", "zebra"]
    assert len(data) == 6
    assert_labels_match_colours(data)
    warns = warnings_in(capsys.readouterr().err)
    assert len(warns) == 1 and "ignored 2 non-image files" in warns[0]


def test_all_images_unreadable_raises(tmp_path):
    for i in range(3):
        (tmp_path / "d").mkdir(exist_ok=True)
        (tmp_path / "d" / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="none of the 3 images"):
        open_(tmp_path / "d")


def test_lazy_substitute_for_unreadable_image_keeps_a_consistent_label(tmp_path):
    write_image(tmp_path / "d" / "apple" / "0.png", solid(CLASS_COLOURS["apple"]))
    (tmp_path / "d" / "apple" / "1.png").write_bytes(b"garbage")  # last apple; its neighbour is a zebra
    write_image(tmp_path / "d" / "zebra" / "0.png", solid(CLASS_COLOURS["zebra"]))
    data = open_(tmp_path / "d", cache="none")
    assert_labels_match_colours(data)


# --------------------------------------------------------------------------------------------
# 5. Layout mistakes


def assert_one_line_user_error(path, match: str) -> str:
    with pytest.raises(UserError, match=match) as e:
        open_(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_path_raises(tmp_path):
    assert_one_line_user_error(tmp_path / "nope", "does not exist")


def test_empty_folder_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_user_error(tmp_path / "empty", "no images")


def test_folder_of_non_images_only_raises(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x")
    assert_one_line_user_error(tmp_path / "d", "no images")


def test_images_at_top_and_in_subfolders_is_ambiguous(tmp_path):
    root = write_class_tree(tmp_path / "d")
    write_image(root / "stray.png", solid(5))
    assert_one_line_user_error(root, "ambiguous")


def test_empty_class_folder_is_named(tmp_path):
    root = write_class_tree(tmp_path / "d")
    (root / "kiwi").mkdir()
    msg = assert_one_line_user_error(root, "kiwi")
    assert "no images" in msg


def test_class_folder_holding_only_subfolders_is_ambiguous(tmp_path):
    root = tmp_path / "d"
    write_image(root / "a" / "x" / "1.png", solid(1))
    write_image(root / "a" / "y" / "2.png", solid(2))
    write_image(root / "b" / "3.png", solid(3))
    msg = assert_one_line_user_error(root, "ambiguous")
    assert "'a'" in msg


def test_train_and_test_split_folders_are_ambiguous(tmp_path):
    write_class_tree(tmp_path / "root" / "train")
    write_class_tree(tmp_path / "root" / "test")
    assert_one_line_user_error(tmp_path / "root", "ambiguous")


def test_file_that_is_not_a_zip_raises(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"plain bytes")
    assert_one_line_user_error(tmp_path / "data.bin", "neither a folder nor a zip")


# --------------------------------------------------------------------------------------------
# 6. Resize and centre crop


def three_bands(w: int, h: int, horizontal: bool = True) -> np.ndarray:
    """Red | green | blue in three equal bands, side by side (horizontal) or stacked."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    for k, c in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        if horizontal:
            a[:, k * w // 3 : (k + 1) * w // 3] = c
        else:
            a[k * h // 3 : (k + 1) * h // 3, :] = c
    return a


@pytest.mark.parametrize("size", [(40, 20), (20, 40), (16, 16), (7, 5), (100, 17)])
def test_any_size_becomes_square_at_resolution(tmp_path, size):
    write_image(tmp_path / "d" / "x.png", solid((90, 120, 150), size))
    data = open_(tmp_path / "d", resolution=16)
    assert data.images.shape == (1, 3, 16, 16)
    assert colour_at(data.images[0]) == (90, 120, 150)  # a solid colour survives resampling


@pytest.mark.parametrize("horizontal", [True, False], ids=["wide", "tall"])
def test_crop_is_centred_exactly_when_no_scaling(tmp_path, horizontal):
    w, h = (48, 16) if horizontal else (16, 48)
    write_image(tmp_path / "d" / "x.png", three_bands(w, h, horizontal))
    img = open_(tmp_path / "d", resolution=16).images[0]
    assert colour_at(img) == (0, 255, 0)  # exactly the middle band


@pytest.mark.parametrize("horizontal", [True, False], ids=["wide", "tall"])
def test_crop_is_centred_after_downscaling(tmp_path, horizontal):
    w, h = (96, 32) if horizontal else (32, 96)
    write_image(tmp_path / "d" / "x.png", three_bands(w, h, horizontal))
    img = open_(tmp_path / "d", resolution=16).images[0].int()
    assert img.shape == (3, 16, 16)
    r, g, b = img
    assert (g >= 230).all() and (r <= 25).all() and (b <= 25).all()  # middle band, with filter bleed at edges
    centre = slice(3, 13)
    if horizontal:
        assert (img[:, :, centre] == torch.tensor([0, 255, 0]).view(3, 1, 1)).all()
        assert torch.equal(r[:, 0], b[:, 15])  # red bleeds in on the left as much as blue on the right
    else:
        assert (img[:, centre, :] == torch.tensor([0, 255, 0]).view(3, 1, 1)).all()
        assert torch.equal(r[0, :], b[15, :])


# --------------------------------------------------------------------------------------------
# 7. Grayscale, RGB and mixed


def test_mixed_gray_and_rgb_gives_rgb_with_equal_gray_channels(tmp_path):
    write_image(tmp_path / "d" / "a_rgb.png", solid((10, 100, 200)))
    write_image(tmp_path / "d" / "b_gray.png", solid(77))
    data = open_(tmp_path / "d")
    assert data.channels == 3
    assert data.images.shape == (2, 3, 8, 8)
    got = sorted(colour_at(data.images[i]) for i in range(2))
    assert got == [(10, 100, 200), (77, 77, 77)]


def test_all_grayscale_gives_one_channel(tmp_path):
    for v in (40, 200):
        write_image(tmp_path / "d" / f"{v}.png", solid(v))
    data = open_(tmp_path / "d")
    assert data.channels == 1
    assert data.images.shape == (2, 1, 8, 8)
    assert sorted(colour_at(data.images[i]) for i in range(2)) == [(40,), (200,)]


def test_forcing_one_channel_on_rgb(tmp_path):
    colours = {"r": (255, 0, 0), "g": (0, 255, 0), "w": (255, 255, 255)}
    for k, c in colours.items():
        write_image(tmp_path / "d" / f"{k}.png", solid(c))
    data = open_(tmp_path / "d", channels=1)
    assert data.channels == 1 and data.images.shape == (3, 1, 8, 8)
    luma = {k: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] for k, c in colours.items()}  # ITU-R 601-2
    for i, k in enumerate(sorted(colours)):  # flat folder: files in sorted order
        assert abs(colour_at(data.images[i])[0] - luma[k]) <= 1


def test_forcing_three_channels_on_grayscale(tmp_path):
    write_image(tmp_path / "d" / "g.png", solid(33))
    data = open_(tmp_path / "d", channels=3)
    assert data.channels == 3 and colour_at(data.images[0]) == (33, 33, 33)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    write_image(tmp_path / "d" / "deep.png", np.full((8, 8), 30000, dtype=np.uint16))
    assert Image.open(tmp_path / "d" / "deep.png").mode.startswith("I")
    data = open_(tmp_path / "d")
    assert abs(colour_at(data.images[0])[0] - 30000 / 257) <= 1


# --------------------------------------------------------------------------------------------
# 8. MNIST IDX


@pytest.fixture
def mnist_dir(tmp_path):
    """train split raw, t10k split gzipped, with different contents."""
    rng = np.random.default_rng(1)
    d = tmp_path / "mnist"
    d.mkdir()
    train_x, train_y = rng.integers(0, 256, (5, 6, 6), dtype=np.uint8), np.array([3, 1, 4, 1, 5], np.uint8)
    test_x, test_y = rng.integers(0, 256, (3, 6, 6), dtype=np.uint8), np.array([9, 2, 6], np.uint8)
    write_idx(d / "train-images-idx3-ubyte", train_x)
    write_idx(d / "train-labels-idx1-ubyte", train_y)
    write_idx(d / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", test_y)
    return d, {"train": (train_x, train_y), "test": (test_x, test_y)}


@pytest.mark.parametrize("split", ["train", "test"], ids=["raw", "gzip"])
def test_mnist_idx_pixels_and_labels(mnist_dir, split):
    d, expected = mnist_dir
    x, y = expected[split]
    data = open_(d, resolution=6, split=split)
    assert data.channels == 1 and data.num_classes == 10
    assert data.class_names == [str(i) for i in range(10)]
    assert data.images.shape == (len(x), 1, 6, 6)
    assert np.array_equal(data.images[:, 0].numpy(), x)
    assert data.labels.tolist() == y.tolist()
    assert data[1][0][0, 2, 3].item() == x[1, 2, 3]


def test_mnist_missing_split_falls_back_to_the_other(tmp_path, capsys):
    d = tmp_path / "mnist"
    d.mkdir()
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    write_idx(d / "t10k-images-idx3-ubyte.gz", x)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.array([7, 8], np.uint8))
    data = open_(d, resolution=4, split="train")
    assert np.array_equal(data.images[:, 0].numpy(), x)
    assert data.labels.tolist() == [7, 8]
    assert "using its test split" in capsys.readouterr().err


def test_mnist_resized_and_channels(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    x = np.stack([np.full((6, 6), v, np.uint8) for v in (0, 100, 255)])
    write_idx(d / "train-images-idx3-ubyte", x)
    write_idx(d / "train-labels-idx1-ubyte", np.array([0, 1, 2], np.uint8))
    data = open_(d, resolution=12, channels=3)
    assert data.images.shape == (3, 3, 12, 12) and data.channels == 3
    assert [colour_at(data.images[i]) for i in range(3)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]


def test_mnist_bad_magic_raises(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0D03, 1, 2, 2) + bytes(4))  # float type
    write_idx(d / "train-labels-idx1-ubyte", np.array([0], np.uint8))
    with pytest.raises(UserError, match="not an MNIST IDX"):
        open_(d, resolution=2)


def test_mnist_count_mismatch_raises(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(UserError, match="3 images but .* 2 labels"):
        open_(d, resolution=2)


def test_bundled_demo_is_mnist_t10k():
    data = open_(None, resolution=28)
    assert len(data) == 10000 and data.num_classes == 10 and data.channels == 1
    assert data.images.shape == (10000, 1, 28, 28)
    # independent read of the bundled files: 16-byte image header, 8-byte label header
    raw_x = gzip.decompress((demo_data_path() / "t10k-images-idx3-ubyte.gz").read_bytes())
    raw_y = gzip.decompress((demo_data_path() / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert struct.unpack(">IIII", raw_x[:16]) == (2051, 10000, 28, 28)
    assert data.images[0, 0].flatten().tolist() == list(raw_x[16 : 16 + 784])
    assert data.images[-1, 0].flatten().tolist() == list(raw_x[-784:])
    assert data.labels.tolist() == list(raw_y[8:])
    assert sorted(set(data.labels.tolist())) == list(range(10))


# --------------------------------------------------------------------------------------------
# 9. CIFAR-10 python batches

CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


@pytest.fixture
def cifar_dir(tmp_path):
    """cifar-10-batches-py with 2 images per train batch and 3 test images; rows are raw CIFAR rows."""
    rng = np.random.default_rng(2)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rows, labels = {}, {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        n = 3 if name == "test_batch" else 2
        rows[name] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels[name] = [(k * 3 + j) % 10 for j in range(n)]
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rows[name], b"labels": labels[name], b"batch_label": name.encode()}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": CIFAR_NAMES, b"num_vis": 3072}, f)
    return d, rows, labels


def cifar_pixel(row: np.ndarray, c: int, y: int, x: int) -> int:
    """CIFAR row layout: 1024 red values, then 1024 green, then 1024 blue, each row-major 32x32."""
    return int(row[1024 * c + 32 * y + x])


def check_cifar(data: ImageData, rows: list[np.ndarray], labels: list[int]) -> None:
    assert len(data) == len(rows) == len(labels)
    assert data.images.shape == (len(rows), 3, 32, 32)
    assert data.labels.tolist() == labels
    for n, row in enumerate(rows):
        for c, y, x in [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 5, 17), (1, 31, 2), (2, 12, 31), (2, 31, 31)]:
            assert data.images[n, c, y, x].item() == cifar_pixel(row, c, y, x), (n, c, y, x)


def test_cifar10_train_concatenates_five_batches(cifar_dir):
    d, rows, labels = cifar_dir
    names = [f"data_batch_{i}" for i in range(1, 6)]
    data = open_(d, resolution=32, split="train")
    assert data.class_names == [c.decode() for c in CIFAR_NAMES] and data.channels == 3
    check_cifar(data, [r for n in names for r in rows[n]], [lab for n in names for lab in labels[n]])


def test_cifar10_test_reads_test_batch(cifar_dir):
    d, rows, labels = cifar_dir
    data = open_(d, resolution=32, split="test")
    check_cifar(data, list(rows["test_batch"]), labels["test_batch"])


def test_cifar10_tar_gz(cifar_dir, tmp_path):
    d, rows, labels = cifar_dir
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(d, arcname=d.name)
    data = open_(archive, resolution=32, split="test")
    check_cifar(data, list(rows["test_batch"]), labels["test_batch"])


def test_cifar10_to_grayscale_and_resized(tmp_path):
    d = tmp_path / "cifar"
    d.mkdir()
    row = np.concatenate([np.full(1024, v, np.uint8) for v in (30, 60, 120)])[None]
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": row, b"labels": [4]}, f)
    data = open_(d, resolution=16, channels=1)
    assert data.images.shape == (5, 1, 16, 16) and data.channels == 1
    # one preparation for every container: ITU-R 601-2 luma, as for image files (58, not the mean 70)
    assert all(colour_at(data.images[i]) == (58,) for i in range(5))  # 0.299*30 + 0.587*60 + 0.114*120
    assert data.class_names == [str(i) for i in range(5)]  # no meta: numbered up to the largest label


def test_cifar10_missing_batch_is_a_user_error(cifar_dir):
    d, _, _ = cifar_dir
    (d / "data_batch_3").unlink()
    with pytest.raises(UserError):
        open_(d, resolution=32, split="train")


# --------------------------------------------------------------------------------------------
# 10. Lazy decoding


def test_lazy_decoding_matches_cached(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "d"
    sizes = {"apple": [(12, 10), (8, 8)], "zebra": [(5, 9), (30, 13), (16, 16)]}
    for cls, ss in sizes.items():
        for i, (w, h) in enumerate(ss):
            write_image(root / cls / f"{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    lazy = open_(root, cache="none")
    cached = open_(root, cache="memory")
    assert lazy.images is None and cached.images is not None
    assert len(lazy) == len(cached) == 5
    assert lazy.labels.tolist() == cached.labels.tolist() == [0, 0, 1, 1, 1]
    for i in range(5):
        img, label = lazy[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 8, 8)
        assert torch.equal(img, cached.images[i])
        assert int(label) == int(cached.labels[i])
    # an exact-size image is decoded without resampling: compare with the file's own pixels
    exact = np.asarray(Image.open(root / "apple" / "1.png"))
    assert np.array_equal(lazy[1][0].permute(1, 2, 0).numpy(), exact)


# --------------------------------------------------------------------------------------------
# 11. BatchStream


def indexed_data(n: int = 16, res: int = 4, classes: int = 3) -> ImageData:
    """Image i: left half = 10 + 15 * (i mod 16) + (i // 16), right half 0; label i % classes.

    The index is recoverable from the brightest pixel, and a horizontal flip moves it to the right.
    """
    assert n <= 64
    images = torch.zeros(n, 3, res, res, dtype=torch.uint8)
    for i in range(n):
        images[i, :, :, : res // 2] = index_value(i)
    labels = torch.arange(n) % classes
    return ImageData(res, 3, labels, [str(c) for c in range(classes)], "memory", images=images)


def index_value(i: int) -> int:
    return 10 + 15 * (i % 16) + i // 16


def batch_indices(x: torch.Tensor) -> list[int]:
    values = ((x.amax(dim=(1, 2, 3)) + 1) * 127.5).round().int().tolist()
    lookup = {index_value(i): i for i in range(64)}
    return [lookup[v] for v in values]


def is_flipped(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, -1] > x[:, 0, 0, 0]


def take(stream: BatchStream, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(stream) for _ in range(k)]


def test_stream_maps_uint8_exactly_to_minus_one_one():
    images = torch.tensor([0, 255, 128, 1], dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    data = ImageData(2, 1, torch.zeros(4, dtype=torch.long), [], "memory", images=images)
    x, y = next(BatchStream(data, batch_size=4, seed=0))
    assert x.dtype == torch.float32 and x.shape == (4, 1, 2, 2) and y.dtype == torch.long
    assert x.min() >= -1 and x.max() <= 1
    got = sorted(x[:, 0, 0, 0].tolist())
    assert got[0] == -1.0 and got[-1] == 1.0  # 0 and 255 land exactly on the endpoints
    assert got[1:3] == pytest.approx([1 / 127.5 - 1, 128 / 127.5 - 1], abs=1e-6)
    assert torch.equal(data.images, images)  # the cache is not modified in place


def test_stream_epoch_visits_every_index_once_with_matching_labels():
    data = indexed_data(16)
    stream = BatchStream(data, batch_size=4, seed=5)
    epochs = []
    for _ in range(2):
        seen = []
        for x, y in take(stream, 4):
            assert x.shape == (4, 3, 4, 4)
            idx = batch_indices(x)
            assert y.tolist() == [i % 3 for i in idx]
            seen += idx
        assert sorted(seen) == list(range(16))
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_stream_drops_the_incomplete_last_batch():
    stream = BatchStream(indexed_data(10), batch_size=4, seed=0)
    first_epoch = [i for x, _ in take(stream, 2) for i in batch_indices(x)]
    assert len(set(first_epoch)) == 8
    second = batch_indices(next(stream)[0])  # starts a new permutation, not the 2 leftovers
    assert len(second) == 4


def test_stream_same_seed_same_batches_other_seed_differs():
    data = indexed_data(16)
    a = take(BatchStream(data, 4, seed=7, flip=True), 6)
    b = take(BatchStream(data, 4, seed=7, flip=True), 6)
    c = take(BatchStream(data, 4, seed=8, flip=True), 6)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert [batch_indices(x) for x, _ in a] != [batch_indices(x) for x, _ in c]


@pytest.mark.parametrize("k", [0, 3, 4, 6])  # start, mid-epoch, at the epoch boundary, into epoch 2
def test_stream_resumes_exactly_from_state_dict(k):
    data = indexed_data(16)
    original = BatchStream(data, 4, seed=3, flip=True)
    take(original, k)
    state = original.state_dict()
    resumed = BatchStream(data, 4, seed=3, flip=True)
    resumed.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(take(original, 6), take(resumed, 6)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_stream_ranks_take_disjoint_parts_of_the_epoch():
    data = indexed_data(16)
    parts = []
    for rank in (0, 1):
        stream = BatchStream(data, 4, seed=11, rank=rank, world=2)
        parts.append([i for x, _ in take(stream, 2) for i in batch_indices(x)])
    assert len(parts[0]) == len(parts[1]) == 8
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(16))


def test_stream_flip_mirrors_about_half_deterministically():
    data = indexed_data(64)
    batches = take(BatchStream(data, 16, seed=1, flip=True), 8)
    again = take(BatchStream(data, 16, seed=1, flip=True), 8)
    flips = torch.cat([is_flipped(x) for x, _ in batches])
    assert torch.equal(flips, torch.cat([is_flipped(x) for x, _ in again]))
    assert 0.3 < flips.float().mean().item() < 0.7
    assert len({tuple(is_flipped(x).tolist()) for x, _ in batches[:4]}) > 1  # a fresh draw per batch in an epoch
    for x, _ in batches:  # flipped images are exact horizontal mirrors of their source
        originals = data.images[batch_indices(x)].float() / 127.5 - 1
        expected = torch.where(is_flipped(x).view(-1, 1, 1, 1), originals.flip(3), originals)
        assert torch.equal(x, expected)
    unflipped = take(BatchStream(data, 16, seed=1, flip=False), 8)
    assert not any(is_flipped(x).any() for x, _ in unflipped)


def test_stream_over_lazy_data_equals_stream_over_cache(tmp_path):
    root = tmp_path / "d"
    for i in range(8):
        write_image(root / ("a" if i % 2 else "b") / f"{i}.png", solid((30 * i, 255 - 30 * i, 7)))
    lazy, cached = open_(root, cache="none"), open_(root, cache="memory")
    a = take(BatchStream(lazy, 4, seed=2, flip=True), 5)
    b = take(BatchStream(cached, 4, seed=2, flip=True), 5)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("n,batch,world", [(3, 4, 1), (6, 4, 2)])
def test_stream_dataset_smaller_than_a_batch_raises(n, batch, world):
    with pytest.raises(UserError, match="fewer than one batch"):
        BatchStream(indexed_data(n), batch_size=batch, seed=0, world=world)


def test_stream_dataset_of_exactly_one_batch_works():
    stream = BatchStream(indexed_data(4), batch_size=4, seed=0)
    for x, _ in take(stream, 3):
        assert sorted(batch_indices(x)) == [0, 1, 2, 3]


def test_lazy_unreadable_images_get_one_counted_warning_per_epoch(tmp_path, capsys):
    from sagan.data import BatchStream

    root = tmp_path / "flat"
    root.mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
    for i in range(6, 8):
        (root / f"{i}.png").write_bytes(b"not an image")
    data = open_dataset(root, 8, cache="none", workers=0, verbose=False)
    stream = BatchStream(data, batch_size=8, seed=0)
    capsys.readouterr()
    next(stream)
    next(stream)  # starting epoch 1 reports epoch 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "skipped 2 unreadable images" in err
    next(stream)
    assert "warning" not in capsys.readouterr().err  # the same files are not reported again


# ---------------------------------------------------------------------------- hostile and careless input


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {os.environ['PWNED_MARKER']}",))


def test_a_crafted_cifar_batch_runs_no_code_and_is_one_line(cifar_dir, tmp_path, monkeypatch):
    d, _, _ = cifar_dir
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_MARKER", str(marker))
    with open(d / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _RunsCode(), b"labels": [1]}, f)
    with pytest.raises(UserError, match=r"data_batch_3 is not a CIFAR batch: it refers to posix.system") as e:
        open_(d, resolution=32)
    assert not marker.exists() and "\n" not in str(e.value)
    with open(d / "data_batch_3", "wb") as f:  # damaged, not malicious: one line as well
        f.write(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]})[:40])
    with pytest.raises(UserError, match="data_batch_3 is not a readable CIFAR batch"):
        open_(d, resolution=32)


def test_a_truncated_cifar_archive_is_one_line(cifar_dir, tmp_path):
    d, _, _ = cifar_dir
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(d, arcname=d.name)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or damaged"):
        open_(archive, resolution=32)


@pytest.mark.parametrize("damage", ["truncated", "empty gz", "labels out of range"])
def test_damaged_mnist_files_are_one_line(mnist_dir, damage):
    d, _ = mnist_dir
    images, labels = d / "t10k-images-idx3-ubyte.gz", d / "t10k-labels-idx1-ubyte.gz"
    if damage == "truncated":
        blob = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(blob[: len(blob) - 10]))
        message = "is truncated"
    elif damage == "empty gz":
        images.write_bytes(b"")
        message = "empty or truncated"
    else:
        y = np.frombuffer(gzip.decompress(labels.read_bytes())[8:], np.uint8).copy()
        y[0] = 12
        write_idx(labels, y)
        message = "labels from .* to 12, outside 0..9"
    with pytest.raises(UserError, match=message) as e:
        open_(d, resolution=28, split="test")
    assert "\n" not in str(e.value)


def test_a_symlink_loop_is_skipped_with_one_counted_warning(tmp_path, capsys):
    root = tmp_path / "d"
    for c in ("a", "b"):
        write_image(root / c / "x.png", solid((10, 20, 30)))
    (root / "a" / "again").symlink_to(root, target_is_directory=True)  # a -> d -> a -> ...
    (root / "b" / "self").symlink_to(root / "b", target_is_directory=True)
    data = open_(root)
    assert len(data) == 2 and data.class_names == ["a", "b"]
    assert "skipped 2 symbolic links" in capsys.readouterr().err


def test_zip_entries_with_absolute_or_parent_paths_are_skipped_not_made_classes(tmp_path, capsys):
    z = tmp_path / "d.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for c in ("cat", "dog"):
            zf.writestr(f"{c}/1.png", png_bytes(solid((1, 2, 3))))
        zf.writestr("/etc/evil.png", png_bytes(solid((9, 9, 9))))
        zf.writestr("../up.png", png_bytes(solid((9, 9, 9))))
    data = open_(z)
    assert data.class_names == ["cat", "dog"] and len(data) == 2
    assert "skipped 1 entry" in capsys.readouterr().err and "/etc/evil.png" not in str(data._names)


def test_float_tiffs_are_scaled_not_black(tmp_path):
    a = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(a, mode="F").save(tmp_path / "f.tif")
    Image.fromarray(a * 255.0, mode="F").save(tmp_path / "g.tif")
    data = open_(tmp_path, channels=1)
    for img in data.images:
        assert img.max() == 255 and img.min() == 0
        assert abs(int(img[0, 4, 4]) - round(a[4, 4] * 255)) <= 1


def test_scoring_a_folder_of_mixed_sizes_says_which_size_it_picks(tmp_path, capsys):
    from sagan.data import peek_resolution

    write_image(tmp_path / "a.png", solid((1, 2, 3), (32, 32)))
    write_image(tmp_path / "b.png", solid((1, 2, 3), (64, 64)))
    assert peek_resolution(tmp_path) == 32
    assert "several sizes (shorter sides 32 px, 64 px" in capsys.readouterr().err
