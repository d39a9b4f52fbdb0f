"""Train the demo preset with one of the training differences between torch-sagan and
BigGAN-PyTorch switched to BigGAN-PyTorch's choice, alone or combined, for ablations
(scored afterwards with ``demo_quality.py``).

    python benchmarks/ablate_demo.py --variant ema_avg --seed 0 --out runs/abl-ema_avg-s0
    python benchmarks/ablate_demo.py --variant all --seed 1 --out runs/abl-all-s1 -- --steps 3000

Variants (comma-separated to combine):

* ``base``: the preset as it is;
* ``ema_avg``: the EMA averages G's batch-norm statistics (``train.ema_bn_stats average``);
* ``ema_copy``: the EMA copies the raw G's batch-norm statistics (``train.ema_bn_stats copy``);
* ``sn_eps``: spectral norm's epsilon 1e-8 (``model.sn_eps 1e-8``, BigGAN-PyTorch's default);
* ``bias_default``: conv and linear biases keep PyTorch's default uniform init instead of
  zeros (BigGAN-PyTorch initialises weights only); benchmark-only, not a config key;
* ``all``: ema_avg, sn_eps and bias_default together.

Arguments after ``--`` go to ``sagan train`` (e.g. ``--steps 3000``, ``--train.batch_size 64``).
"""

from __future__ import annotations

import argparse
import sys

from torch import nn

import sagan.layers
from sagan.cli import main as sagan_main

CONFIG_VARIANTS = {
    "ema_avg": ["--train.ema_bn_stats", "average"],
    "ema_copy": ["--train.ema_bn_stats", "copy"],
    "sn_eps": ["--model.sn_eps", "1e-8"],
}


def keep_default_biases() -> None:
    """Patch the layer builder so that biases keep PyTorch's default init."""
    original = sagan.layers._build

    def build(layer_cls, *args, sn, eps, init, **kwargs):
        layer = original(layer_cls, *args, sn=False, eps=eps, init=init, **kwargs)
        if getattr(layer, "bias", None) is not None:
            fan_in = layer.weight[0].numel()
            nn.init.uniform_(layer.bias, -fan_in ** -0.5, fan_in ** -0.5)  # nn.Conv2d/nn.Linear's default
        return sagan.layers.spectral_norm(layer, eps) if sn else layer

    sagan.layers._build = build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    parts = args.variant.split(",")
    if "all" in parts:
        parts = ["ema_avg", "sn_eps", "bias_default"]
    argv = ["train", "--preset", "demo", "--out", args.out, "--train.seed", str(args.seed),
            "--train.ckpt_every", "250", "--train.keep_ckpts", "40", "--no_progress"]
    for p in parts:
        if p in CONFIG_VARIANTS:
            argv += CONFIG_VARIANTS[p]
        elif p == "bias_default":
            keep_default_biases()
        elif p != "base":
            sys.exit(f"unknown variant {p!r}")
    argv += [a for a in args.rest if a != "--"]
    print("sagan " + " ".join(argv), file=sys.stderr)
    sys.exit(sagan_main(argv))


if __name__ == "__main__":
    main()
