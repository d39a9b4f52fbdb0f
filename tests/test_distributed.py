"""DistributedDataParallel training under torchrun: two gloo processes on the CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "ddp_script.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(data, out, mode, batch, steps, world, nodes=1):
    cmd = [sys.executable, str(SCRIPT), str(data), str(out), mode, str(batch), str(steps)]
    if world > 1 and nodes == 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
    if nodes == 1:
        run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    else:  # one torchrun per "node", meeting at a c10d rendezvous on this machine
        port = _free_port()
        procs = [subprocess.Popen(cmd[:1] + ["-m", "torch.distributed.run", "--nnodes", str(nodes), "--node_rank",
                                             str(node), "--nproc_per_node", str(world // nodes), "--rdzv-backend",
                                             "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "sagan-test"]
                                  + cmd[1:], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for node in range(nodes)]
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
    return [torch.load(p, weights_only=True) for p in sorted(out.glob("params.*.pt"))]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from helpers import write_class_folder

    root = tmp_path_factory.mktemp("ddp")
    data = write_class_folder(root / "shapes", per_class=64)
    runs = {(mode, world): _run(data, root / f"{mode}{world}", mode, 32 // world, 3, world)
            for mode in ("manual", "manual-aug", "fit") for world in (1, 2)}
    runs[("fit-seed1", 1)] = _run(data, root / "seed1", "fit-seed1", 32, 3, 1)
    runs[("fit", "2 nodes")] = _run(data, root / "two-nodes", "fit", 16, 3, 2, nodes=2)
    return runs


def test_two_nodes_train_into_one_run_exactly_as_one_node_with_two_processes(runs):
    """Multi-node through torchrun, simulated here: two launches of one process each (node ranks
    0 and 1, a c10d rendezvous) train together into one run directory and end with the weights
    of the one-node, two-process run."""
    (a0, _a1), (b0, b1) = runs[("fit", 2)], runs[("fit", "2 nodes")]
    for net in ("G", "D"):
        for k in a0[net]:
            assert torch.equal(a0[net][k], b0[net][k]) and torch.equal(b0[net][k], b1[net][k]), (net, k)


@pytest.mark.parametrize("mode", ["manual", "fit"])
def test_every_rank_holds_the_same_weights(runs, mode):
    r0, r1 = runs[(mode, 2)]
    for net in ("G", "D"):
        for k in r0[net]:
            assert torch.equal(r0[net][k], r1[net][k]), (net, k)


def test_two_processes_match_one_with_the_global_batch(runs):
    """With G in eval mode nothing depends on how the batch is split: the data shards, the
    per-rank noise and DDP's gradient averaging must give one process's updates."""
    (one,), (two, _) = runs[("manual", 1)], runs[("manual", 2)]
    for net in ("G", "D"):
        assert _max_diff(one[net], two[net]) < 1e-5, net


def test_augmented_training_under_torchrun_keeps_the_ranks_identical(runs):
    """train.diffaug under torchrun: every rank augments its slice of the draws made for the global
    batch, and the ranks end with the same weights. (Not the one-process weights exactly: the
    sampler deals images to ranks interleaved, the draws are sliced in blocks, so an image gets
    another, equally random, transform.)"""
    r0, r1 = runs[("manual-aug", 2)]
    (plain,) = runs[("manual", 1)]
    (one,) = runs[("manual-aug", 1)]
    for net in ("G", "D"):
        for k in r0[net]:
            assert torch.equal(r0[net][k], r1[net][k]), (net, k)
    assert _max_diff(one["D"], plain["D"]) > 1e-4  # the augmentation did change the training


def _moved(a, b):
    """|a - b| / |b| over all tensors of two state dicts."""
    return (torch.cat([(a[k] - b[k]).flatten() for k in a]).norm() / torch.cat([v.flatten() for v in b.values()]).norm()).item()


def test_training_with_batch_norm_stays_close_to_one_process(runs):
    """In training, G's batch norm normalises each rank's 16 images rather than all 32 (without
    SyncBN, which needs GPUs), so the runs drift apart a little: far less than two runs that
    differ only in their seed, which start from other weights and see other data and noise.
    Distances are relative to the weights' norm and measured from each run's own start."""
    (one,), (two, _), (other,) = runs[("fit", 1)], runs[("fit", 2)], runs[("fit-seed1", 1)]
    for net in ("G", "D"):
        step = {k: one[net][k] - one["init"][net][k] for k in one[net]}
        apart = _moved({k: two[net][k] - two["init"][net][k] for k in step}, step)
        reseeded = _moved({k: other[net][k] - other["init"][net][k] for k in step}, step)
        print(net, apart, reseeded)
        assert apart < 0.5 * reseeded, net


def _children(pid):
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(k): dict(e.split("=", 1) for e in Path(f"/proc/{k}/environ").read_text().split("\0") if "=" in e)
            for k in kids}


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Preemption under torchrun: a signal reaching only rank 1 is voted on at every step, both
    ranks stop after the same step, rank 0 saves, and the next launch resumes from there."""
    from helpers import write_class_folder

    data = write_class_folder(tmp_path / "shapes", per_class=24)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sagan", "train", "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu",
           "--no_progress", "--steps", "100000", "--model.resolution", "32", "--model.ch", "4", "--model.z_dim", "8",
           "--train.batch_size", "4", "--train.log_every", "1", "--train.ckpt_every", "100000",
           "--train.sample_every", "100000", "--dataset.workers", "0"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    children = _children(proc.pid)
    rank1 = [pid for pid, env in children.items() if env.get("RANK") == "1"]
    assert len(rank1) == 1
    rank0 = [pid for pid, env in children.items() if env.get("RANK") == "0"]
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == rank0[0]  # rank 0 holds the lock
    os.kill(rank1[0], signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("ckpt_*.pt"))
    assert len(ckpts) == 1
    step = int(ckpts[0].stem.split("_")[1])
    assert f"SIGTERM: stopped after step {step:,}" in err
    state = torch.load(ckpts[0], weights_only=True)
    assert state["step"] == step and state["data"]["world"] == 2
    rows = metrics.read_text().splitlines()
    assert len(rows) == step  # rank 0 logged every step up to the agreed one, no more

    resume = [a if a != "100000" or cmd[i - 1] != "--steps" else str(step + 2) for i, a in enumerate(cmd)]
    run = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming from" in run.stderr and f"(step {step:,})" in run.stderr
    assert torch.load(tmp_path / "run" / "checkpoints" / f"ckpt_{step + 2:08d}.pt", weights_only=True)["step"] == step + 2
    assert not (tmp_path / "run" / ".lock").exists()  # released at the end


_UNSHARED = r"""
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from helpers import tiny_config
from sagan.console import UserError
from sagan.distributed import cleanup
from sagan.training import Trainer

data, root = sys.argv[2], Path(sys.argv[3])
# what a node that cannot see rank 0's filesystem finds: rank 1 looks at an empty directory
run = root / ("shared" if os.environ["RANK"] == "0" else "node2-local")
try:
    Trainer(tiny_config(data, steps=4, ckpt_every=1000), run, device="cpu", progress=False)
except UserError as e:
    # one file per rank: two processes printing to one pipe can interleave their words
    (root / f"error_rank{os.environ['RANK']}.txt").write_text(str(e))
finally:
    cleanup()  # as the CLI does: exiting with a live gloo group can abort ("terminate called ...")
"""


def test_ranks_that_resume_from_different_steps_stop_with_a_clear_error(tmp_path):
    """A run directory that one node cannot see would let that node start over while rank 0
    resumes; their loops would drift until a collective hangs. Both stop at once instead."""
    from helpers import write_class_folder

    from sagan.training import Trainer
    from helpers import tiny_config

    data = write_class_folder(tmp_path / "shapes", per_class=16)
    Trainer(tiny_config(data, steps=2, ckpt_every=1000), tmp_path / "runs" / "shared", device="cpu",
            progress=False).fit()
    script = tmp_path / "unshared.py"
    script.write_text(_UNSHARED)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(Path(__file__).parent), str(data), str(tmp_path / "runs")]
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):  # both ranks refuse, each with the clear error
        error = tmp_path / "runs" / f"error_rank{rank}.txt"
        assert error.exists(), f"rank {rank} did not raise the clear error:\n{run.stdout}\n{run.stderr[-3000:]}"
        assert "the processes resumed from different steps (0 and 2)" in error.read_text()


def test_elastic_restart_after_a_rank_is_killed_finishes_with_the_uninterrupted_weights(tmp_path):
    """torchrun --max-restarts 1: kill -9 one rank mid-run; the group restarts, resumes from the
    last checkpoint (taking over the dead run's lock) and ends exactly where an uninterrupted run does."""
    from helpers import write_class_folder

    data = write_class_folder(tmp_path / "shapes", per_class=24)

    def cmd(out, restarts):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "--max-restarts", str(restarts), "-m", "sagan", "train", "--data", str(data), "--out", str(out),
                "--device", "cpu", "--no_progress", "--steps", "200", "--model.ch", "4", "--model.z_dim", "8",
                "--train.batch_size", "4", "--train.ckpt_every", "4", "--train.sample_every", "100000",
                "--dataset.workers", "0"]

    straight = subprocess.run(cmd(tmp_path / "straight", 0), env=ENV, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    proc = subprocess.Popen(cmd(tmp_path / "elastic", 1), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    ckpts = tmp_path / "elastic" / "checkpoints"
    deadline = time.time() + 300
    while not list(ckpts.glob("ckpt_*.pt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    rank1 = [pid for pid, env in _children(proc.pid).items() if env.get("RANK") == "1"]
    os.kill(rank1[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming from" in err  # the restarted group continued from a checkpoint
    a = torch.load(tmp_path / "straight" / "checkpoints" / "ckpt_00000200.pt", weights_only=True)
    b = torch.load(ckpts / "ckpt_00000200.pt", weights_only=True)
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
