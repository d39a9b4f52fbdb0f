"""Train BigGAN-PyTorch's own networks with its own training function at the size and settings
of a torch-sagan config, on torch-sagan's data tensors, and write its EMA generator's samples.

    python benchmarks/peer_biggan.py --biggan ~/src/BigGAN-PyTorch --preset demo --out runs/peer-demo-s0 \\
        --seed 0 --sample_steps 500 1000 1500
    python benchmarks/demo_quality.py --samples runs/peer-demo-s0/step_00001500/eval
    python benchmarks/peer_biggan.py --biggan ~/src/BigGAN-PyTorch --preset demo --time 100   # step-time ratio
    python benchmarks/peer_biggan.py --biggan ~/src/BigGAN-PyTorch --preset celeba64 --set data=celeba.zip \\
        --out runs/peer-celeba-s0 --modes eval --minutes 60 --sample_minutes 30 60   # RGB, 64 px, unconditional
    sagan score runs/peer-celeba-s0/step_<N>/eval celeba.zip  # its FID, with torch-sagan's protocol
    python benchmarks/natural_images.py --peer runs/peer-celeba-s0 ...     # or all marks, in one table

``--minutes`` stops after that much training time (seconds spent in its training function, data
included, sampling excluded) and ``--sample_minutes`` writes samples at the first step past each
mark, so that it can be compared with a torch-sagan run at equal CPU time; ``summary.json`` lists
every sample folder with its step and training seconds. ``--match RUN`` takes the time from a
torch-sagan run folder: as long as it trained (to its last logged step, measured as
``natural_images.py`` measures it), with samples at half that time unless ``--sample_minutes`` says
otherwise; ``natural_images.py --minutes <half> end`` then compares the two at both marks.

Nothing of BigGAN-PyTorch is copied here: ``--biggan`` points at a checkout
(https://github.com/ajbrock/BigGAN-PyTorch), whose ``BigGAN.py``, ``utils.py`` (``ema``,
``prepare_z_y``) and ``train_fns.py`` (``GAN_training_function``) are imported and used as they
are, the way its ``train.py`` uses them: G, D and G_ema in train mode at every iteration, one
concatenated D forward, ``toggle_grads``, the EMA of every state-dict entry from ``ema_start``.
Its networks are always class-conditional: an unconditional config (celeba64, say) runs them with
one class and every label 0. Three adaptations, all needed to match a torch-sagan config and none
affecting the training maths:

* the image channel count (BigGAN-PyTorch hard-codes 3): G's output conv and D's first block
  are built for ``model.img_channels``;
* its 32-px D table labels all four blocks 16x16, so ``D_attn='16'`` would add four attention
  layers; the labels are set to the true feature-map sizes (16, 8, 8, 8), which puts one
  attention layer after D's first block, as in torch-sagan (and in the parameter count);
* ``h5py``, imported by its dataset module for HDF5 data only, is stubbed when missing.

Its own defaults apply where the torch-sagan config has no say: SN eps 1e-8 (its parser's
default; ``--sn_eps`` to change), PyTorch's default bias init, random SN ``u`` without warm-up.
Samples go to ``OUT/step_<step>/<mode>/<i>_class<k>.png`` (the layout ``demo_quality.py``
reads): ``eval`` is G_ema in eval mode (its ``sample.py``, and ``--G_eval_mode`` of its SAGAN
script), ``train`` uses batch statistics of batches of 100 (its sample sheets without
``--G_eval_mode``).

``--time N`` builds torch-sagan's training step for the same config in the same process and
times N iterations of each, alternating, and prints the ratio of their medians.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, training_seconds  # noqa: E402

from sagan.config import complete, config_from_dict, config_to_dict, load_config, load_preset  # noqa: E402
from sagan.data import BatchStream, open_dataset  # noqa: E402
from sagan.images import to_uint8  # noqa: E402


def import_biggan(path: Path):
    """BigGAN-PyTorch's modules from a checkout at ``path``."""
    if not (path / "BigGAN.py").exists() or not (path / "train_fns.py").exists():
        sys.exit(f"{path} is not a BigGAN-PyTorch checkout (no BigGAN.py / train_fns.py)")
    sys.path.insert(0, str(path))
    try:
        import h5py  # noqa: F401
    except ImportError:
        sys.modules["h5py"] = types.ModuleType("h5py")  # only its HDF5 dataset class uses it
    import BigGAN
    import train_fns
    import utils

    return BigGAN, utils, train_fns


def _fix_d_arch(BigGAN, channels: int) -> None:
    """D tables with the true feature-map size after each block, and ``channels`` input channels."""
    original = BigGAN.D_arch

    def d_arch(ch=64, attention="64", *a, **k):
        arch = original(ch, attention, *a, **k)
        for res, table in arch.items():
            size, sizes = res, []
            for down in table["downsample"]:
                size = size // 2 if down else size
                sizes.append(size)
            table["resolution"] = sizes
            table["in_channels"][0] = channels
        return arch

    BigGAN.D_arch = d_arch


def _attn(res: list[int]) -> str:
    return "_".join(str(r) for r in res) if res else "0"


def classes_of(cfg) -> int:
    """BigGAN-PyTorch's networks are always class-conditional: an unconditional config runs them
    with one class, every label 0 (its usual way), so that the class terms are plain learned
    gains, biases and a linear term of D."""
    return max(1, cfg.model.num_classes)


def build(BigGAN, utils, cfg, sn_eps: float):
    """G, D, G_ema and the EMA helper, as BigGAN-PyTorch's train.py builds them."""
    m, t = cfg.model, cfg.train
    _fix_d_arch(BigGAN, m.img_channels)
    relu = nn.ReLU(inplace=False)  # its SAGAN script's --G_nl relu --D_nl relu
    common = dict(resolution=m.resolution, n_classes=classes_of(cfg), SN_eps=sn_eps, adam_eps=t.adam_eps)
    gkw = dict(common, G_ch=m.g_ch, dim_z=m.z_dim, G_attn=_attn(m.g_attn), G_shared=m.shared_dim > 0,
               shared_dim=m.shared_dim, hier=False, G_lr=t.lr_g, G_B1=t.betas_g[0], G_B2=t.betas_g[1],
               BN_eps=m.bn_eps, G_init="ortho" if m.init == "ortho" else "xavier", G_activation=relu)
    dkw = dict(common, D_ch=m.d_ch, D_wide=True, D_attn=_attn(m.d_attn), D_lr=t.lr_d, D_B1=t.betas_d[0],
               D_B2=t.betas_d[1], D_init="ortho" if m.init == "ortho" else "xavier", D_activation=relu)

    def generator(**extra):
        G = BigGAN.Generator(**gkw, **extra)
        if m.img_channels != 3:  # its output conv is hard-coded to 3 channels
            G.output_layer[2] = G.which_conv(G.arch["out_channels"][-1], m.img_channels)
            if not extra.get("skip_init"):
                G.init_weights()
            if not extra.get("no_optim"):
                G.optim = torch.optim.Adam(G.parameters(), lr=G.lr, betas=(G.B1, G.B2), weight_decay=0,
                                           eps=G.adam_eps)
        return G

    G, D = generator(), BigGAN.Discriminator(**dkw)
    G_ema = generator(skip_init=True, no_optim=True)
    ema = utils.ema(G, G_ema, t.ema_decay, t.ema_start)
    return G, D, G_ema, ema


def train_config(cfg) -> dict:
    t = cfg.train
    return {"batch_size": t.batch_size, "toggle_grads": True, "num_D_steps": t.n_dis, "num_D_accumulations": 1,
            "split_D": False, "D_ortho": 0.0, "num_G_accumulations": 1, "G_ortho": 0.0, "ema": True}


class Peer:
    """BigGAN-PyTorch training at a torch-sagan config's size, one iteration per call."""

    def __init__(self, bg, cfg, seed: int, sn_eps: float, data):
        BigGAN, utils, train_fns = bg
        torch.manual_seed(seed)
        self.cfg = cfg
        self.G, self.D, self.G_ema, self.ema = build(BigGAN, utils, cfg, sn_eps)
        GD = BigGAN.G_D(self.G, self.D)
        z_, y_ = utils.prepare_z_y(cfg.train.batch_size, self.G.dim_z, classes_of(cfg), device="cpu")
        self.state = {"itr": 0, "epoch": 0}
        self.train = train_fns.GAN_training_function(self.G, self.D, GD, z_, y_, self.ema, self.state,
                                                     train_config(cfg))
        self.stream = BatchStream(data, cfg.train.batch_size * cfg.train.n_dis, seed, cfg.dataset.flip, "cpu")

    def step(self) -> dict:
        self.state["itr"] += 1
        self.G.train()
        self.D.train()
        self.G_ema.train()
        x, y = next(self.stream)
        return self.train(x, y if self.cfg.model.num_classes else torch.zeros_like(y))  # unconditional: class 0

    @torch.no_grad()
    def samples(self, n: int, seed: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        G = copy.deepcopy(self.G_ema)  # train-mode sampling would change its statistics
        G.train(mode == "train")
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % classes_of(self.cfg)
        z = torch.randn(n, G.dim_z, generator=g)
        out = [G(z[i : i + 100], G.shared(labels[i : i + 100])) for i in range(0, n, 100)]
        return torch.cat(out), labels


def write_samples(images: torch.Tensor, labels: torch.Tensor, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    arr = to_uint8(images).permute(0, 2, 3, 1).numpy()
    for i in range(len(arr)):
        a = arr[i, :, :, 0] if arr.shape[-1] == 1 else arr[i]
        Image.fromarray(a).save(folder / f"{i:06d}_class{int(labels[i])}.png")


def parameter_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def time_both(bg, cfg, data, iters: int, sn_eps: float) -> dict:
    """Median seconds per iteration of each, alternating in one process."""
    from sagan.gan import GANState

    peer = Peer(bg, cfg, 0, sn_eps, data)
    ours = GANState(cfg, torch.device("cpu"))
    ours.train()
    batches = BatchStream(data, cfg.train.batch_size, 0, cfg.dataset.flip, "cpu")
    times = {"torch-sagan": [], "BigGAN-PyTorch": []}
    for i in range(iters + 5):
        for name, fn in (("torch-sagan", lambda: ours.train_iteration(batches)), ("BigGAN-PyTorch", peer.step)):
            t0 = time.perf_counter()
            fn()
            if i >= 5:  # warm-up
                times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"seconds_per_iter": med, "ratio_biggan_over_ours": med["BigGAN-PyTorch"] / med["torch-sagan"],
            "iters": iters, "device": device_name(), "torch": torch.__version__,
            "params": {"torch-sagan G": parameter_count(ours.G), "torch-sagan D": parameter_count(ours.D),
                       "BigGAN-PyTorch G": parameter_count(peer.G), "BigGAN-PyTorch D": parameter_count(peer.D)}}


def resolve_config(args):
    cfg = load_config(Path(args.config)) if args.config else load_preset(args.preset)
    d = config_to_dict(cfg)
    for item in args.set:
        key, _, value = item.partition("=")
        import yaml

        node = d
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = yaml.safe_load(value)
    cfg = config_from_dict(d)
    if args.steps is not None:
        cfg.steps = args.steps
    data = open_dataset(cfg.data, cfg.model.resolution, cfg.model.img_channels, cfg.dataset.split, progress=False)
    return complete(cfg, data, workers=0), data


def match_run(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--match RUN``: --minutes from a torch-sagan run's training time, --sample_minutes at half."""
    from sagan.rundir import RunDir

    if args.minutes is not None or args.steps is not None:
        ap.error("--match sets the training time; leave out --minutes and --steps")
    run = RunDir(args.match)
    if not run.metrics.is_file():
        ap.error(f"{args.match} is not a torch-sagan run folder with a training log (metrics.jsonl)")
    times = training_seconds(run)
    if not times:
        ap.error(f"{args.match} has logged no training step yet")
    args.minutes = times[max(times)] / 60
    args.sample_minutes = args.sample_minutes or [args.minutes / 2]
    print(f"matching {args.match}: {args.minutes:.3f} minutes to its step {max(times)}, samples at "
          f"{', '.join(f'{m:.3f}' for m in args.sample_minutes)} and at the end", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--biggan", type=Path, required=True, help="a BigGAN-PyTorch checkout")
    ap.add_argument("--preset", default="demo", help="torch-sagan preset whose size and settings to use")
    ap.add_argument("--config", default=None, help="or a torch-sagan config.yaml (a run's, say)")
    ap.add_argument("--set", nargs="*", default=[], help="dotted overrides, e.g. train.batch_size=64")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=None, help="stop after this many minutes of training")
    ap.add_argument("--match", type=Path, default=None,
                    help="a torch-sagan run folder: train as long as it did (sets --minutes), sample at half")
    ap.add_argument("--sample_minutes", type=float, nargs="*", default=[],
                    help="also write samples at the first step past each of these minutes of training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sn_eps", type=float, default=1e-8, help="BigGAN-PyTorch's default")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--sample_steps", type=int, nargs="*", default=None, help="default: the last step")
    ap.add_argument("--n", type=int, default=5000, help="samples per sample step")
    ap.add_argument("--modes", nargs="*", default=["eval", "train"], help="eval and/or train (see above)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--time", type=int, default=0, help="only time N iterations of each, alternating")
    args = ap.parse_args()
    if args.match is not None:
        match_run(ap, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    bg = import_biggan(args.biggan.expanduser().resolve())
    cfg, data = resolve_config(args)
    if args.time:
        print(json.dumps(time_both(bg, cfg, data, args.time, args.sn_eps), indent=2))
        return
    if args.out is None:
        sys.exit("--out is needed to train")
    if args.out.exists():
        sys.exit(f"{args.out} exists; choose a new --out")
    peer = Peer(bg, cfg, args.seed, args.sn_eps, data)
    timed = args.minutes is not None and args.steps is None  # --minutes alone: until the time is up
    print(f"BigGAN-PyTorch: G {parameter_count(peer.G):,} and D {parameter_count(peer.D):,} parameters; "
          f"{f'{args.minutes} minutes' if timed else f'{cfg.steps} steps'}, seed {args.seed}", file=sys.stderr)
    last = 10**9 if timed else cfg.steps
    sample_steps = set(args.sample_steps or ([] if args.minutes else [cfg.steps]))
    marks = sorted(m * 60 for m in args.sample_minutes)
    log, written, t0, train_s = [], [], time.perf_counter(), 0.0
    args.out.mkdir(parents=True)
    for step in range(1, last + 1):
        s0 = time.perf_counter()
        metrics = peer.step()
        train_s += time.perf_counter() - s0
        if step % 25 == 0:
            log.append({"step": step, **metrics, "train_seconds": train_s})
        out_of_time = args.minutes is not None and train_s >= args.minutes * 60
        past_mark = False
        while marks and train_s >= marks[0]:
            marks.pop(0)
            past_mark = True
        if step in sample_steps or past_mark or out_of_time:
            for mode in args.modes:
                images, labels = peer.samples(args.n, args.seed, mode)
                write_samples(images, labels, args.out / f"step_{step:08d}" / mode)
            written.append({"step": step, "train_seconds": train_s, "folder": f"step_{step:08d}"})
            print(f"step {step}: samples written ({train_s:.0f} s of training)", file=sys.stderr, flush=True)
        if out_of_time:
            break
    (args.out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    summary = {"steps": step, "seed": args.seed, "train_seconds": train_s, "samples": written,
               "wall_seconds": time.perf_counter() - t0, "device": device_name(), "torch": torch.__version__,
               "config": config_to_dict(cfg), "command": " ".join(sys.argv)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done: {train_s / step:.3f} s per step", file=sys.stderr)


if __name__ == "__main__":
    main()
