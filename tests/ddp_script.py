"""Run by tests/test_distributed.py, alone or under torchrun: train a tiny SAGAN and save each
rank's parameters. ``manual`` drives d_step/g_step with G in eval mode, so that no layer sees
batch statistics and one process with the global batch must compute the same updates."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import tiny_config  # noqa: E402

from sagan.distributed import cleanup, rank_world  # noqa: E402
from sagan.training import Trainer  # noqa: E402

data, out, mode, batch, steps = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
cfg = tiny_config(data, steps=steps, batch_size=batch, n_dis=2, ckpt_every=1000, log_every=1, sample_every=1000)
cfg.dataset.flip = True
cfg.train.seed = 1 if mode == "fit-seed1" else 0
if mode == "manual-aug":  # augmentation drawn for the global batch, each rank taking its slice
    cfg.train.diffaug = "color,translation,cutout"
tr = Trainer(cfg, out / "run", device="cpu", progress=False)
rank, world = rank_world()
init = {net: {k: v.detach().clone() for k, v in m.named_parameters()} for net, m in (("G", tr.gan.G), ("D", tr.gan.D))}
if mode.startswith("manual"):
    tr.gan.G.eval()  # running statistics: every sample is processed on its own
    for _ in range(steps):
        for _ in range(cfg.train.n_dis):
            tr.gan.d_step(*next(tr.stream))
        tr.gan.g_step()
else:
    tr.fit()
torch.save({"G": {k: v.detach() for k, v in tr.gan.G.named_parameters()},
            "D": {k: v.detach() for k, v in tr.gan.D.named_parameters()},
            "init": init}, out / f"params.{rank}.pt")
cleanup()  # as the CLI does: exiting with a live gloo group can abort
