"""The CUDA paths: run with ``pytest -m gpu`` on a machine with a GPU (benchmarks/gpu_check.sh
does). Skipped everywhere else."""

import os
import subprocess
import sys

import pytest
import torch

from sagan.config import complete
from sagan.data import BatchStream, open_dataset
from sagan.gan import GANState

from helpers import TINY, tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _gan(folder, **train):
    cfg = tiny_config(folder, **train)
    data = open_dataset(cfg.data, 32, None, workers=0, progress=False)
    cfg = complete(cfg, data, workers=0)
    dev = torch.device("cuda")
    return GANState(cfg, dev), BatchStream(data, cfg.train.batch_size, seed=0, device=dev)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_iterations_on_cuda_with_fused_adam_and_channels_last(tiny_folder, precision):
    gan, batches = _gan(tiny_folder, precision=precision)
    assert gan.opt_d.defaults["fused"] and gan.opt_g.defaults["fused"]
    seen = {}
    conv = next(m for m in gan.D.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda mod, args, out: seen.update(
        dtype=out.dtype, channels_last=args[0].is_contiguous(memory_format=torch.channels_last)))
    before = {k: v.clone() for k, v in gan.D.state_dict().items()}
    for _ in range(3):
        stats, _ = gan.train_iteration(batches)
    assert all(torch.isfinite(v).item() for v in stats)
    want = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert seen == {"dtype": want, "channels_last": True}
    assert all(p.dtype == torch.float32 and p.is_cuda for p in gan.G.parameters())
    assert any(not torch.equal(before[k], v) for k, v in gan.D.state_dict().items())


@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_compiled_step_matches_eager_losses_on_cuda(tiny_folder, mode):
    """torch.compile's default mode, and reduce-overhead (CUDA graphs, replayed from the third
    iteration on): the same losses as eager, iteration after iteration."""
    eager, b1 = _gan(tiny_folder, seed=3)
    compiled, b2 = _gan(tiny_folder, seed=3, compile=mode)
    compiled.G.load_state_dict(eager.G.state_dict())
    compiled.D.load_state_dict(eager.D.state_dict())
    for it in range(4 if mode == "reduce-overhead" else 1):
        torch.manual_seed(5 + it)
        s1, _ = eager.train_iteration(b1)
        torch.manual_seed(5 + it)
        s2, _ = compiled.train_iteration(b2)
        for a, b in zip(s1, s2):  # the same maths: fused kernels may round differently
            assert torch.allclose(a, b, rtol=2e-3, atol=2e-3), (it, s1, s2)


def test_avg_pool2x2_matches_avg_pool2d_on_cuda():
    from sagan.layers import avg_pool2x2

    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(4, 64, 32, 32, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        ref, ours = torch.nn.functional.avg_pool2d(x, 2), avg_pool2x2(x)
        torch.testing.assert_close(ours, ref, rtol=0, atol=0 if dtype == torch.float32 else 1e-2)
        up = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(ours, x, up)[0], torch.autograd.grad(ref, x, up)[0])


def test_torchrun_trains_with_nccl(tmp_path, tiny_folder):
    """One process under torchrun: the NCCL process group, its stop vote and checkpoint barriers
    (DDP itself needs two GPUs: NCCL refuses two ranks on one device; compilation is checked
    above, without the minute it costs again here)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "sagan", "train", "--data", str(tiny_folder), "--out", str(tmp_path / "run"), "--steps", "3",
           "--device", "cuda", *TINY]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints").is_dir() and any((tmp_path / "run" / "checkpoints").iterdir())
