"""Devices and torch.distributed plumbing shared by every verb: pick the device, join the process
group torchrun describes, and the few collectives the training loop needs. Single-process runs
never touch torch.distributed."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .console import UserError

__all__ = ["resolve_device", "setup", "launched_by_torchrun", "init_from_env", "rank_world", "is_main",
           "comm_device", "barrier", "all_max", "cleanup"]

_CPU_GROUP = None  # a gloo group for small CPU-side votes and barriers when the main backend is NCCL


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; a clear error for unknown or absent devices."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return dev


def setup(device: str | torch.device = "auto") -> torch.device:
    """The device this process works on, after joining torchrun's process group if any."""
    return init_from_env(resolve_device(device))


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes: NCCL on CUDA, gloo on CPU. Returns this
    rank's device (``cuda:LOCAL_RANK`` on GPU). A no-op outside torchrun."""
    global _CPU_GROUP
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kw = {"timeout": timedelta(minutes=30), "device_id": device if device.type == "cuda" else None}
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is not None and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # the elastic agent's store outlives a restart: keys of the dead group would send the new
        # one to addresses nobody listens on, so every attempt gets keys of its own
        agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              int(os.environ["WORLD_SIZE"]), is_master=False, timeout=kw["timeout"])
        kw.update(store=dist.PrefixStore(f"sagan/attempt_{restart}", agent), rank=int(os.environ["RANK"]),
                  world_size=int(os.environ["WORLD_SIZE"]))
    dist.init_process_group(backend, **kw)
    _CPU_GROUP = dist.new_group(backend="gloo") if backend == "nccl" else None
    return device


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when no process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def comm_device() -> torch.device:
    """Where tensors must live for collectives: the current GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if rank_world()[1] > 1:
        dist.barrier(group=_CPU_GROUP)


def all_max(values: list[int]) -> list[int]:
    """The element-wise maximum of ``values`` over every process (CPU side, small)."""
    if rank_world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CPU_GROUP)
    return t.tolist()


def cleanup() -> None:
    global _CPU_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CPU_GROUP = None
