"""FID against CPU time and against steps: torch-sagan runs and BigGAN-PyTorch runs side by side,
at the same marks of training time, scored with one protocol.

    python benchmarks/natural_images.py --ref ../shared/data/cifar10/train.zip --minutes 30 end \\
        --ours runs/c10cpu-s0 runs/c10cpu-s1 --peer runs/peer-c10-s0 runs/peer-c10-s1 \\
        --json runs/c10cpu-fid.json [--n 5000] [--record]

What is compared at each mark (minutes of training on this machine, or ``end``: each run's last
checkpoint or samples, which is the equal-time mark when the peer ran with ``--minutes`` set to
the torch-sagan run's training time):

* a torch-sagan run (``sagan train``): its last checkpoint at or before the mark. A run's training
  time comes from its ``metrics.jsonl``: each log interval lasted its images / ``img_per_s``, which
  counts everything the loop did in it (data, steps, sample grids, checkpoints), so a checkpoint's
  time is the sum of the intervals before it. Its EMA generator, in eval mode, draws ``--n``
  class-balanced samples (``sagan eval``'s way);
* a BigGAN-PyTorch run (``benchmarks/peer_biggan.py --sample_minutes ...``): the samples it wrote at
  the first step past the mark (its G_ema in eval mode, ``--modes eval``), as PNG files.

``--figure OUT.png --figure_ours MODEL [--figure_peer FOLDER]`` draws the README's figure instead:
the model's samples (any source ``sagan sample`` takes: a run, a checkpoint, a pretrained name;
fresh noise in every cell, one row per class for a conditional model), the peer's samples from a
sample folder (the first of each class), and real images of ``--ref`` (the first of each class),
side by side, with the FIDs of ``--json`` in the titles when given.

Both go through the same TF-Inception pipeline against the cached statistics of ``--ref``
(uint8 images either way: ours are quantised as PNG files would be), so their FIDs are comparable;
the protocol line says what they are comparable with. Scores are kept in ``--json`` and not
computed again when the script is rerun with more runs or marks (each costs ``--n`` Inception
forwards: about 6.5 minutes for 5,000 on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import add_protocol_args, append_rows, command_line, device_name, print_table, training_seconds  # noqa: E402

from sagan.checkpoints import CheckpointManager, load_checkpoint  # noqa: E402
from sagan.data import open_dataset  # noqa: E402
from sagan.evaluation import evaluate_folders, evaluate_generator, protocol_line  # noqa: E402
from sagan.inception import InceptionExtractor  # noqa: E402
from sagan.loading import generator_from_checkpoint  # noqa: E402
from sagan.rundir import RunDir  # noqa: E402

SECTION = "Natural images: FID against training time (`benchmarks/natural_images.py`)"
HEADER = ["date", "device", "torch", "tool", "run", "mark (min)", "trained (min)", "step", "FID", "KID",
          "protocol", "command"]


def ours_at(run: RunDir, times: dict[int, float], seconds: float) -> tuple[Path, int, float] | None:
    """The last checkpoint of ``run`` at or before ``seconds`` of training (``times``: its
    :func:`training_seconds`; ``inf``: its last checkpoint): (path, step, seconds)."""
    best = None
    for path in CheckpointManager(run.checkpoints).paths():  # oldest first
        step = int(path.stem.split("_")[-1])
        t = times.get(step)
        if t is not None and t <= seconds:
            best = (path, step, t)
    return best


def peer_at(out: Path, seconds: float) -> tuple[Path, int, float] | None:
    """The samples a peer_biggan.py run wrote at the first step past ``seconds`` (``inf``: its last)."""
    summary = json.loads((out / "summary.json").read_text())
    samples = sorted(summary.get("samples", []), key=lambda s: s["train_seconds"])
    if seconds == float("inf") and samples:
        seconds = samples[-1]["train_seconds"]
    for s in samples:
        if s["train_seconds"] >= seconds:
            return out / s["folder"] / "eval", s["step"], s["train_seconds"]
    return None


def parse_mark(text: str) -> float:
    """A ``--minutes`` mark: minutes of training, or ``end`` (each run's last)."""
    if text == "end":
        return float("inf")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes or 'end'") from None


def score_ours(path: Path, ref, n: int, extractor) -> dict:
    state = load_checkpoint(path)
    G = generator_from_checkpoint(state, ema=True)
    return evaluate_generator(G, ref, n=n, extractor=extractor, generator="ema", intra_fid=False)


def score_peer(folder: Path, ref, extractor) -> dict:
    return evaluate_folders(open_dataset(folder, ref.resolution, 3, progress=False, verbose=False), ref, extractor)


def _first_per_class(data, rows: int, cols: int, classes: int) -> torch.Tensor:
    """The first ``cols`` images of each of ``rows`` classes (unconditional: the first rows x cols)."""
    from sagan.images import to_model_range

    if classes <= 1:
        return to_model_range(data.images[: rows * cols])
    labels = data.labels
    picks = [torch.nonzero(labels == k).flatten()[:cols] for k in range(rows)]
    return to_model_range(torch.stack([data.images[i] for p in picks for i in p]))


def _folder_images(folder: Path, rows: int, cols: int, classes: int, resolution: int) -> torch.Tensor:
    """Samples written by peer_biggan.py (``<i>_class<k>.png``): the first ``cols`` of each class."""
    import numpy as np
    from PIL import Image

    by_class: dict[int, list[Path]] = {}
    for f in sorted(folder.glob("*.png")):
        by_class.setdefault(int(f.stem.split("_class")[-1]) if classes > 1 else 0, []).append(f)
    files = [f for k in range(rows) for f in by_class[k][:cols]] if classes > 1 else by_class[0][: rows * cols]
    arr = np.stack([np.asarray(Image.open(f).convert("RGB").resize((resolution, resolution))) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def figure(args) -> None:
    """Samples of ``--figure_ours`` (and ``--figure_peer``) beside real images of ``--ref``."""
    from torchvision.utils import make_grid

    from sagan import load_generator
    from sagan.plots import plt, save_figure, to_display

    G = load_generator(args.figure_ours)
    classes, rows, cols = G.num_classes, args.rows, args.cols
    rows = min(rows, classes) if classes > 0 else rows
    y = torch.arange(rows).repeat_interleave(cols) if classes > 0 else None
    with torch.no_grad():
        ours = G.sample(rows * cols, y=y, seed=args.figure_seed)
    real_data = open_dataset(args.ref, G.resolution, 3, progress=False, verbose=False)
    kept = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}

    def fid_of(prefix: str) -> str:
        hits = [v for k, v in kept.items() if k.startswith(prefix)]
        return f", FID {hits[-1]['fid']:.1f}" if hits else ""

    panels = [(f"torch-sagan{args.figure_ours_label}", ours)]
    if args.figure_peer:
        panels.append((f"BigGAN-PyTorch{fid_of(str(args.figure_peer))}",
                       _folder_images(args.figure_peer, rows, cols, classes, G.resolution)))
    panels.append(("real images", _first_per_class(real_data, rows, cols, classes)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4 * rows / cols + 0.4), dpi=110)
    for ax, (title, images) in zip(axes, panels):
        ax.imshow(to_display(make_grid(images, nrow=cols, padding=1, pad_value=1.0)), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    print(save_figure(fig, args.figure))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="reference images (the training set)")
    ap.add_argument("--minutes", type=parse_mark, nargs="+", default=[],
                    help="marks of training time in minutes, or 'end' for each run's last checkpoint/samples")
    ap.add_argument("--ours", type=Path, nargs="*", default=[], help="torch-sagan run folders")
    ap.add_argument("--peer", type=Path, nargs="*", default=[], help="peer_biggan.py output folders")
    ap.add_argument("--n", type=int, default=5000, help="samples per score (the peer's --n must match)")
    ap.add_argument("--json", type=Path, default=None, help="scores kept here between invocations (needed to score)")
    ap.add_argument("--resolution", type=int, default=None, help="default: the first run's")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--figure", type=Path, default=None, help="draw the samples-beside-real figure here instead")
    ap.add_argument("--figure_ours", default=None, help="the model whose samples to draw")
    ap.add_argument("--figure_ours_label", default="", help="text after 'torch-sagan' in its title")
    ap.add_argument("--figure_peer", type=Path, default=None, help="a peer sample folder to draw beside it")
    ap.add_argument("--figure_seed", type=int, default=1)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--cols", type=int, default=8)
    add_protocol_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.figure:
        return figure(args)
    if args.json is None or not args.minutes:
        ap.error("--json and --minutes are needed to score (or --figure to draw)")
    kept = json.loads(args.json.read_text()) if args.json.exists() else {}
    items = []  # (tool, run, mark, what, step, seconds)
    for run in args.ours:
        times = training_seconds(RunDir(run))
        for m in args.minutes:
            found = ours_at(RunDir(run), times, m * 60)
            items.append(("torch-sagan", run, m, *(found or (None, None, None))))
    for out in args.peer:
        for m in args.minutes:
            found = peer_at(out, m * 60)
            items.append(("BigGAN-PyTorch", out, m, *(found or (None, None, None))))
    resolution = args.resolution
    if resolution is None and args.ours:
        resolution = RunDir(args.ours[0]).saved_config().model.resolution
    if resolution is None:
        from sagan.data import peek_resolution

        resolution = peek_resolution(next(i[3] for i in items if i[3] is not None))
    ref, extractor = None, None
    rows = []
    for tool, run, mark, what, step, seconds in items:
        if what is None:
            print(f"{tool} {run}: nothing at {mark:g} min yet", file=sys.stderr)
            continue
        key = f"{what}:{args.n}"
        if key not in kept:
            if ref is None:
                extractor = InceptionExtractor()
                ref = open_dataset(args.ref, resolution, 3, progress=False)
            print(f"scoring {tool} {what} (step {step}, {seconds / 60:.1f} min)", file=sys.stderr, flush=True)
            res = score_ours(what, ref, args.n, extractor) if tool == "torch-sagan" else score_peer(what, ref, extractor)
            kept[key] = {"fid": res["fid"], "kid": res.get("kid"), "protocol": res["protocol"],
                         "protocol_line": protocol_line(res), "step": step, "train_seconds": seconds}
            args.json.write_text(json.dumps(kept, indent=2))
        r = kept[key]
        rows.append([date.today().isoformat(), device_name(), torch.__version__, tool, run.name, f"{mark:g}" if mark != float("inf") else "end",
                     f"{seconds / 60:.1f}", str(step), f"{r['fid']:.2f}",
                     f"{r['kid']:.4f}" if r.get("kid") is not None else "", r["protocol_line"], command_line("natural_images.py")])
    print_table(HEADER, rows)
    if args.record:
        append_rows(SECTION, HEADER, rows)


if __name__ == "__main__":
    main()
