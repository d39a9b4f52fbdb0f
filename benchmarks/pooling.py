"""D's 2x2 average pooling, two ways, in the training step: torch's ``avg_pool2d`` kernel against
four strided slices (``layers.avg_pool2x2_slices``, what CUDA runs), with everything else equal.

    python benchmarks/pooling.py --preset demo cifar10_cpu --data ../shared/data/cifar10/test.zip [--record]

For each preset, the same ``GANState.train_iteration`` is timed with each pooling in turn
(``--rounds`` alternations of ``--iters`` iterations, the first ``--warmup`` of each dropped), and
the medians are printed. ``--data`` is used for presets without their own data (the demo has the
bundled digits); the data only feed the step.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import add_protocol_args, append_rows, command_line, device_name, print_table, sync  # noqa: E402

import sagan.models as models  # noqa: E402
from sagan.config import complete, load_preset  # noqa: E402
from sagan.data import BatchStream, open_dataset  # noqa: E402
from sagan.gan import GANState  # noqa: E402
from sagan.layers import avg_pool2x2_slices  # noqa: E402

SECTION = "D's pooling in the training step (`benchmarks/pooling.py`)"
HEADER = ["date", "device", "torch", "command", "preset", "precision", "avg_pool2d ms/iter", "slices ms/iter",
          "slices / kernel"]
WAYS = {"avg_pool2d": lambda x: F.avg_pool2d(x, 2), "slices": avg_pool2x2_slices}


def measure(preset: str, data: str | None, device: torch.device, rounds: int, iters: int, warmup: int) -> dict:
    cfg = load_preset(preset)
    if cfg.data is None and preset != "demo":
        cfg.data = data
    ds = open_dataset(cfg.data, cfg.model.resolution, cfg.model.img_channels, progress=False, verbose=False)
    cfg = complete(cfg, ds, workers=0)
    kept = models.avg_pool2x2
    times: dict[str, list[float]] = {k: [] for k in WAYS}
    try:
        for _ in range(rounds):
            for name, fn in WAYS.items():
                models.avg_pool2x2 = fn  # what the D blocks call
                torch.manual_seed(0)
                gan = GANState(cfg, device)
                gan.train()
                batches = BatchStream(ds, cfg.train.batch_size, 0, False, device)
                for i in range(warmup + iters):
                    t0 = time.perf_counter()
                    gan.train_iteration(batches)
                    sync(device)
                    if i >= warmup:
                        times[name].append(time.perf_counter() - t0)
    finally:
        models.avg_pool2x2 = kept
    med = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
    return {"preset": preset, "precision": cfg.train.precision, **med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["demo", "cifar10_cpu"])
    ap.add_argument("--data", default=None, help="images for presets without data of their own")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    add_protocol_args(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for preset in args.preset:
        r = measure(preset, args.data, device, args.rounds, args.iters, args.warmup)
        rows.append([datetime.date.today().isoformat(), device_name(device), torch.__version__,
                     f"`{command_line('pooling.py')}`", preset, r["precision"], f"{r['avg_pool2d']:.1f}",
                     f"{r['slices']:.1f}", f"{r['slices'] / r['avg_pool2d']:.2f}x"])
    print_table(HEADER, rows)
    if args.record:
        append_rows(SECTION, HEADER, rows)


if __name__ == "__main__":
    main()
