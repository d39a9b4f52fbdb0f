"""Training throughput of the presets: images per second, time per G+D iteration, peak memory
and model FLOPs utilisation, for each precision and eager or compiled execution.

    python benchmarks/throughput.py                                   # cifar10 + imagenet128, full size
    python benchmarks/throughput.py --preset cifar10 --ch 16 --batch_size 16 --iters 5   # CPU-sized
    python benchmarks/throughput.py --preset imagenet128 --data ../shared/data/celeba.zip  # + loader speed
    python benchmarks/throughput.py ... --record                      # append the rows to RESULTS.md

What is measured is `GANState.train_iteration`, the step that `sagan train` runs: n_dis D steps
on real batches plus one G step and the EMA update, built straight from the config with no run
directory. "img/s" counts real images through D per
second over all n_dis steps. Data come from a synthetic in-memory set, so the loader is not
in the way; `--data` measures the loader on its own (decoding on the fly and from the cache)
to compare with what training consumes. FLOPs are counted with torch.utils.flop_counter on one
eager iteration (forward and backward of G and D); MFU divides them by the iteration time and
the device's dense peak (fp32 against plain fp32, or TF32 when torch enables it). Each
configuration runs in a fresh subprocess, so peak memory (CUDA: max allocated; CPU: the
process's peak RSS) and compile caches belong to it alone.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch
from common import (RESULTS, add_protocol_args, append_rows, command_line, device_name, peak_flops, print_table, run_child,
                    run_isolated, sync)

SECTION = "Throughput (`benchmarks/throughput.py`)"
HEADER = ["date", "device", "torch", "command", "preset", "model", "precision", "mode", "img/s", "ms/iter",
          "peak memory", "GFLOP/iter", "MFU"]
LOADER_SECTION = "Data loading (`benchmarks/throughput.py --data`)"
LOADER_HEADER = ["date", "device", "torch", "command", "data", "resolution", "source", "workers", "img/s"]


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    import resource

    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


COMPILE = {"eager": False, "compiled": True, "reduce-overhead": "reduce-overhead"}  # --mode -> train.compile


def _config(preset: str, precision: str, compiled, ch: int | None, batch_size: int | None, n_dis: int | None):
    from sagan.config import load_preset

    cfg = load_preset(preset)
    if ch:
        cfg.model.g_ch = cfg.model.d_ch = ch
    if batch_size:
        cfg.train.batch_size = batch_size
    if n_dis:
        cfg.train.n_dis = n_dis
    cfg.train.precision, cfg.train.compile = precision, compiled
    cfg.dataset.workers = 0
    return cfg


def _synthetic(cfg, classes: int):
    from sagan.data import ImageData

    n = cfg.train.batch_size * cfg.train.n_dis * 2
    r = cfg.model.resolution
    c = cfg.model.img_channels or (1 if cfg.data is None else 3)  # the demo's bundled MNIST is grayscale
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, r, r), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return ImageData(r, c, labels, [str(i) for i in range(classes)], "synthetic", images=images)


def _count_flops(gan, batches) -> float:
    """FLOPs of one training iteration, counted on the eager modules."""
    from torch.utils.flop_counter import FlopCounterMode

    saved = gan.G_train, gan.D_train, gan.G_fake, gan.D_frozen
    gan.G_train, gan.D_train, gan.G_fake, gan.D_frozen = gan.G, gan.D, gan.G, gan.D
    try:
        with FlopCounterMode(display=False) as counter:
            gan.train_iteration(batches)
    finally:
        gan.G_train, gan.D_train, gan.G_fake, gan.D_frozen = saved
    return float(counter.get_total_flops())


def build(spec: dict, device: torch.device):
    """The step object and a stream of synthetic batches for ``spec``."""
    from sagan.config import complete
    from sagan.data import BatchStream
    from sagan.gan import GANState

    cfg = _config(spec["preset"], spec["precision"], COMPILE[spec["mode"]], spec["ch"], spec["batch_size"],
                  spec["n_dis"])
    classes = {"imagenet128": 1000, "cifar10": 10}.get(spec["preset"], 10)
    data = _synthetic(cfg, classes)
    cfg = complete(cfg, data, workers=0)
    for key, value in spec.get("set", {}).items():  # e.g. {"train.diffaug": "color"}
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    gan = GANState(cfg, device)
    gan.train()
    return gan, BatchStream(data, cfg.train.batch_size, seed=0, device=device)


def _profile(gan, batches, device: torch.device, path: Path) -> None:
    """A torch.profiler table of the top kernels over 3 iterations, into ``path``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            gan.train_iteration(batches)
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=40) + "\n")


def measure_one(spec: dict) -> dict:
    """Build the training step for ``spec`` and time ``iters`` iterations after ``warmup``."""
    from sagan.distributed import resolve_device

    device = resolve_device(spec["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gan, batches = build(spec, device)
    started = time.perf_counter()
    for _ in range(spec["warmup"]):
        gan.train_iteration(batches)
    sync(device)
    warm_s = time.perf_counter() - started
    t0 = time.perf_counter()
    for _ in range(spec["iters"]):
        stats, imgs = gan.train_iteration(batches)
    torch.stack(list(stats)).tolist()  # the losses must be finite numbers, and a sync
    sync(device)
    elapsed = time.perf_counter() - t0
    peak_mem = _peak_memory(device)
    flops = _count_flops(gan, batches)
    if spec.get("profile"):
        _profile(gan, batches, device, Path(spec["profile"]) / f"profile_{spec['preset']}_{spec['precision']}_{spec['mode']}.txt")
    per_iter = elapsed / spec["iters"]
    peak = peak_flops(device, spec["precision"])
    cfg = gan.cfg
    return {
        "img_per_s": imgs * spec["iters"] / elapsed,
        "ms_per_iter": per_iter * 1e3,
        "warmup_s": warm_s,
        "peak_memory": peak_mem,
        "gflop_per_iter": flops / 1e9,
        "mfu": flops / per_iter / peak if peak else None,
        "model": f"{cfg.model.resolution}px, g_ch/d_ch {cfg.model.g_ch}/{cfg.model.d_ch}, "
                 f"batch {cfg.train.batch_size}, n_dis {cfg.train.n_dis}",
        "device": device_name(device),
    }


def measure_loader(path: str, resolution: int, batch_size: int, workers: int, batches: int) -> list[dict]:
    """Images per second that BatchStream delivers, decoding on the fly and from the cache."""
    from sagan.data import BatchStream, open_dataset
    from sagan.distributed import resolve_device

    device = resolve_device("auto")
    out = []
    for cache in ("none", "memory"):
        t0 = time.perf_counter()
        data = open_dataset(path, resolution, 3, cache=cache, workers=workers, progress=False)
        prep = time.perf_counter() - t0
        stream = BatchStream(data, batch_size, seed=0, flip=True, device=device, workers=workers)
        next(stream)  # start the workers
        t0 = time.perf_counter()
        n = 0
        for _ in range(batches):
            x, _ = next(stream)
            n += x.shape[0]
        sync(device)
        rate = n / (time.perf_counter() - t0)
        source = "decoded on the fly" if cache == "none" else f"in-memory cache (filled in {prep:.0f} s)"
        out.append({"source": source, "img_per_s": rate})
    return out


def _settings(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key.count(".") != 1:
            sys.exit(f"--set takes section.key=value, e.g. train.n_dis=2; got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["cifar10", "imagenet128"])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--mode", nargs="+", default=["eager", "compiled"], choices=list(COMPILE),
                    help="eager, compiled (torch.compile's default mode), reduce-overhead (CUDA graphs)")
    ap.add_argument("--ch", type=int, default=None, help="G and D width (default: the preset's)")
    ap.add_argument("--batch_size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--n_dis", type=int, default=None, help="default: the preset's")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config values for every measurement, e.g. train.diffaug=color,translation")
    ap.add_argument("--profile", default=None, help="also save a torch.profiler table of each configuration here")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations first (compilation happens here)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds one configuration may take, compilation included (default: no limit)")
    ap.add_argument("--data", default=None, help="also measure the data loader on these images")
    ap.add_argument("--workers", type=int, default=8, help="decoding workers for --data")
    add_protocol_args(ap)
    args = ap.parse_args()
    if run_child(args, measure_one):
        return

    command = command_line("throughput.py")
    today, torch_v = str(datetime.date.today()), f"torch {torch.__version__}"
    rows, speed = [], {}
    for mode in args.mode:  # every eager row first: compilation is the slow, fragile part
        for preset in args.preset:
            for precision in args.precision:
                spec = dict(preset=preset, precision=precision, mode=mode, ch=args.ch, batch_size=args.batch_size,
                            n_dis=args.n_dis, iters=args.iters, warmup=args.warmup, device=args.device,
                            set=_settings(args.set), profile=args.profile, timeout=args.timeout)
                print(f"{preset} {precision} {mode} ...", file=sys.stderr, flush=True)
                r, err = run_isolated(__file__, spec)
                if r is None:
                    print(f"  failed: {err}", file=sys.stderr)
                    rows.append([today, device_name(), torch_v, f"`{command}`", preset, "", precision, mode,
                                 f"failed: {err}", "", "", "", ""])
                    if args.record:
                        append_rows(SECTION, HEADER, rows[-1:])
                    continue
                speed[(preset, precision, mode)] = r["img_per_s"]
                mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no peak for a CPU)"
                rows.append([today, r["device"], torch_v, f"`{command}`", preset, r["model"], precision, mode,
                             f"{r['img_per_s']:.1f}", f"{r['ms_per_iter']:.1f}", r["peak_memory"],
                             f"{r['gflop_per_iter']:.1f}", mfu])
                if args.record:  # row by row: a run cut short keeps what it measured
                    append_rows(SECTION, HEADER, rows[-1:])
                print(f"  {r['img_per_s']:.1f} img/s, {r['ms_per_iter']:.1f} ms/iter, {r['peak_memory']}, "
                      f"{r['gflop_per_iter']:.1f} GFLOP/iter, MFU {mfu}, warm-up {r['warmup_s']:.1f} s",
                      file=sys.stderr)
    for preset in args.preset:
        base = speed.get((preset, "fp32", "eager"))
        for (p, precision, mode), v in speed.items():
            if p == preset and base and (precision, mode) != ("fp32", "eager"):
                print(f"{preset} {precision} {mode}: {v / base:.2f}x the images/s of fp32 eager", file=sys.stderr)
    print_table(HEADER, rows)

    loader_rows = []
    if args.data:
        from sagan.config import load_preset

        cfg = load_preset(args.preset[-1])
        res, bs = cfg.model.resolution, args.batch_size or cfg.train.batch_size
        for r in measure_loader(args.data, res, bs, args.workers, batches=max(20, 2000 // bs)):
            loader_rows.append([today, device_name(), torch_v, f"`{command}`", args.data, str(res), r["source"],
                                str(args.workers), f"{r['img_per_s']:.0f}"])
            print(f"loader, {r['source']}: {r['img_per_s']:.0f} img/s at {res}px", file=sys.stderr)
    if args.record:
        if loader_rows:
            append_rows(LOADER_SECTION, LOADER_HEADER, loader_rows)
        print(f"recorded in {RESULTS}", file=sys.stderr)
    if any(str(r[8]).startswith("failed") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
