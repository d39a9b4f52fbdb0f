"""The SAGAN training loop: TTUR Adam, n_dis D steps per G step, EMA of G, logging, sample
grids, checkpoints and resume. Knows nothing about the command line."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from . import distributed
from .checkpoints import CheckpointManager
from .config import RunConfig, config_diff, config_from_dict, config_to_dict, load_config, save_config
from .console import UserError, info
from .data import BatchStream, ImageData, default_workers, open_dataset
from .losses import get_loss
from .models import D_ARCH, G_ARCH, _check, attention_gammas, build_discriminator, build_generator
from .sampling import CKPT_DIR, CONFIG_FILE, grid_inputs, save_grid

__all__ = ["Trainer", "resolve_device", "TrainingDiverged"]

RUN_ENTRIES = (CONFIG_FILE, CKPT_DIR, "samples", "tb", "metrics.jsonl", "generator_ema.safetensors", "generated",
               "eval", "attention", "interpolation", "report.html")


def validate_config(cfg: RunConfig) -> None:
    """Check a config before any work is done; raises UserError naming the bad value."""
    m, t = cfg.model, cfg.train
    try:
        _check(m.resolution, m.g_attn, G_ARCH, "the generator")
        _check(m.resolution, m.d_attn, D_ARCH, "the discriminator")
    except ValueError as e:
        raise UserError(f"{e} (model.resolution / model.g_attn / model.d_attn)") from None
    checks = [
        (m.img_channels in (None, 1, 3), "model.img_channels must be 1, 3 or null"),
        (m.num_classes is None or m.num_classes >= 0, "model.num_classes must be >= 0 or null"),
        (m.g_ch >= 1 and m.d_ch >= 1 and m.z_dim >= 1, "model.g_ch, model.d_ch and model.z_dim must be positive"),
        (cfg.steps >= 0, "steps must be >= 0"),
        (t.batch_size >= 1 and t.n_dis >= 1, "train.batch_size and train.n_dis must be >= 1"),
        (t.lr_g > 0 and t.lr_d > 0, "learning rates must be positive"),
        (0.0 <= t.ema_decay < 1.0, "train.ema_decay must lie in [0, 1)"),
        (min(t.log_every, t.sample_every, t.ckpt_every, t.keep_ckpts) >= 1,
         "train.log_every, sample_every, ckpt_every and keep_ckpts must be >= 1"),
        (t.eval_every >= 0, "train.eval_every must be >= 0 (0 turns evaluation off)"),
        (t.eval_every == 0 or (t.eval_samples >= 2 and t.eval_batch_size >= 1),
         "train.eval_samples must be >= 2 and train.eval_batch_size >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    for net, attn, ch, table in (("g", m.g_attn, m.g_ch, G_ARCH), ("d", m.d_attn, m.d_ch, D_ARCH)):
        arch = table[m.resolution]
        for res in attn:
            c = arch.out_mult[arch.resolution.index(res)] * ch
            if c % 8:
                raise UserError(f"attention at {res}x{res} in {net.upper()} needs channels divisible by 8, "
                                f"but model.{net}_ch {ch} gives {c}; raise model.{net}_ch")


class TrainingDiverged(UserError):
    """A loss or a weight became NaN or Inf."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return dev


class Trainer:
    """Train a SAGAN described by ``config`` into ``run_dir``.

    If ``run_dir`` already holds a run, training resumes from its latest checkpoint, provided the
    config matches (``steps``, logging intervals and speed settings may change); ``overwrite=True``
    starts over, deleting the run's files. ``data`` may pass an already opened :class:`ImageData`.

    Under torchrun every process builds a Trainer: it joins the process group (NCCL on GPU,
    gloo on CPU), trains its share of each global batch of ``world x train.batch_size`` images
    through DistributedDataParallel, and rank 0 alone logs, samples and writes checkpoints.
    With ``train.eval_every`` set, the EMA generator is scored every so many steps with
    torch-fidelity's TF-Inception (or with ``extractor``, any callable from uint8 images to
    ``(features, logits)``), and ``checkpoints/best.pt`` keeps the state with the lowest FID.

    >>> Trainer(load_preset("demo"), "runs/demo").fit()  # doctest: +SKIP
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        device: str | torch.device = "auto",
        overwrite: bool = False,
        data: ImageData | None = None,
        progress: bool = True,
        extractor=None,
    ):
        self.run_dir = Path(run_dir)
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.device = distributed.init_from_env(self.device)  # a no-op outside torchrun
        self.rank, self.world = distributed.rank_world()
        self.main = self.rank == 0
        self.progress = progress and self.main
        cfg = copy_config(config)
        validate_config(cfg)
        t = cfg.train
        if t.sync_bn and self.world > 1 and self.device.type != "cuda":
            raise UserError("--sync_bn needs GPUs (SyncBatchNorm runs on CUDA only); drop it for CPU training")
        if t.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("this GPU has no bf16 support; use --precision fp16 (or fp32)")
        # a gloo group for small CPU-side votes and barriers, whatever the main backend
        self._cpu_group = None
        if self.world > 1 and dist.get_backend() == "nccl":
            self._cpu_group = dist.new_group(backend="gloo")
        if cfg.data is not None:
            cfg.data = str(Path(cfg.data).expanduser().resolve())
        self._check_run_dir(overwrite)  # refuse a foreign directory before any work
        m = cfg.model
        self.data = data or open_dataset(
            cfg.data, m.resolution, m.img_channels, cfg.dataset.split, cfg.dataset.cache, cfg.dataset.workers,
            progress=self.progress,
        )
        if m.num_classes is None:
            m.num_classes = self.data.num_classes
        elif m.num_classes > 0 and m.num_classes != self.data.num_classes:
            raise UserError(
                f"model.num_classes is {m.num_classes} but the data has {self.data.num_classes} classes; "
                "leave model.num_classes unset to take it from the data, or 0 for an unconditional model"
            )
        if m.img_channels is None:
            m.img_channels = self.data.channels
        self.cfg = cfg
        if not overwrite:
            self._check_against_saved()
        self.extractor, self.eval_data = None, None
        if cfg.train.eval_every:  # fail now, not hours in, when the weights or the reference are missing
            self._setup_eval(extractor)

        # the same seed on every rank: identical initial weights, and one stream of noise that each
        # rank slices its share from (see _noise), so results do not depend on the process count
        torch.manual_seed(t.seed)
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.G = build_generator(m).to(self.device, memory_format=self.memory_format)
        self.D = build_discriminator(m).to(self.device, memory_format=self.memory_format)
        # the EMA keeps plain batch norm, even when G's is synchronised, so sampling needs no group
        self.ema = AveragedModel(self.G, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=False)
        self._ema_bn = bn_statistics(self.ema.module)
        if t.sync_bn and self.world > 1:
            self.G = nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=t.lr_g, betas=t.betas_g, eps=t.adam_eps, **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=t.lr_d, betas=t.betas_d, eps=t.adam_eps, **fused)
        # fp16 needs loss scaling; bf16 and fp32 do not (the scalers are then pass-throughs)
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.d_loss_fn, self.g_loss_fn = get_loss(t.loss)
        self._one = torch.ones((), device=self.device)  # the count column of the logged sums
        self._build_forwards()
        workers = cfg.dataset.workers if cfg.dataset.workers >= 0 else default_workers()
        self.stream = BatchStream(self.data, t.batch_size, t.seed, cfg.dataset.flip, self.device,
                                  rank=self.rank, world=self.world, workers=workers)
        self.ckpts = CheckpointManager(self.run_dir / CKPT_DIR, t.keep_ckpts)
        self.step = 0
        self.steps_run = 0
        self.best_fid = math.inf
        self.stopped_by: str | None = None
        # everything is checked and built: only now touch the run directory, from rank 0 alone
        self._barrier()  # every rank has checked the directory before rank 0 changes it
        if self.main:
            if overwrite:
                self._delete_previous_run()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / CONFIG_FILE)
            for p in self.ckpts.remove_stale_temporaries():
                info(f"removed {p.name}, left by an interrupted checkpoint write")
        self._barrier()
        self._resume()
        self._check_ranks_agree()

    def _check_ranks_agree(self) -> None:
        """Every rank must have resumed from the same step: otherwise some nodes cannot see the
        run directory rank 0 writes, and their loops would drift apart until a collective hangs."""
        if self.world == 1:
            return
        steps = torch.tensor([self.step, -self.step])
        dist.all_reduce(steps, op=dist.ReduceOp.MAX, group=self._cpu_group)
        hi, lo = int(steps[0]), -int(steps[1])
        if hi != lo:
            raise UserError(f"the processes resumed from different steps ({lo:,} and {hi:,}): put the run "
                            f"directory {self.run_dir} on a filesystem that every node sees")

    def _build_forwards(self) -> None:
        """The callables the steps run. Gradients flow through ``G_train``/``D_train``, wrapped in
        DistributedDataParallel under torchrun; ``G_fake`` (fakes for D, without gradient) and
        ``D_frozen`` (D inside G's step, frozen) are the bare modules, so that DDP never waits for
        gradients that are not computed. ``train.compile`` wraps each in torch.compile."""
        self.G_train, self.D_train, self.G_fake, self.D_frozen = self.G, self.D, self.G, self.D
        if self.world > 1:
            kw: dict[str, Any] = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            # buffers are not synchronised in forward: SN's vectors evolve identically on every
            # rank, and G's batch-norm statistics are each rank's own (rank 0's are saved)
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
                kw["forward_sync_buffers"] = False
            else:  # torch < 2.14
                kw["broadcast_buffers"] = False
            self.G_train = DistributedDataParallel(self.G, **kw)
            self.D_train = DistributedDataParallel(self.D, **kw)
        if self.cfg.train.compile:
            compiled = {}
            for name in ("G_train", "D_train", "G_fake", "D_frozen"):
                mod = getattr(self, name)
                if id(mod) not in compiled:
                    compiled[id(mod)] = torch.compile(mod)
                setattr(self, name, compiled[id(mod)])

    def _autocast(self):
        p = self.cfg.train.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self._cpu_group)

    # ------------------------------------------------------------------ run directory
    def _check_run_dir(self, overwrite: bool) -> None:
        d = self.run_dir
        if d.exists() and not d.is_dir():
            raise UserError(f"{d} is a file; choose a directory for --out")
        if d.is_dir() and any(d.iterdir()) and not (d / CONFIG_FILE).exists():
            raise UserError(f"{d} exists and is not a sagan run directory; choose a new or empty --out")

    def _delete_previous_run(self) -> None:
        d = self.run_dir
        if not (d / CONFIG_FILE).exists():
            return
        for name in RUN_ENTRIES:
            p = d / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        info(f"--overwrite: deleted the previous run in {d}")

    def _check_against_saved(self) -> None:
        path = self.run_dir / CONFIG_FILE
        if not path.exists() or not CheckpointManager(self.run_dir / CKPT_DIR).paths():
            return  # nothing trained yet: a changed config simply replaces the saved one
        saved = load_config(path)
        diff = config_diff(saved, self.cfg)
        if diff:
            shown = "; ".join(diff[:5]) + ("; ..." if len(diff) > 5 else "")
            raise UserError(
                f"{self.run_dir} holds a different run ({shown}); "
                "use another --out, or --overwrite to start over there"
            )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":  # this process's GPU (every rank's draws are the same)
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": 1,
            "step": self.step,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.ema.module.state_dict(),
            "ema_n_averaged": self.ema.n_averaged.detach().cpu(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "rng": rng,
            "data": self.stream.state_dict(),
            "best_fid": self.best_fid,
            "config": config_to_dict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.ema.module.load_state_dict(state["G_ema"])
        self.ema.n_averaged.copy_(state["ema_n_averaged"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        for key, scaler in (("scaler_g", self.scaler_g), ("scaler_d", self.scaler_d)):
            if state.get(key) and scaler.is_enabled():  # empty when saved without fp16
                scaler.load_state_dict(state[key])
        torch.set_rng_state(state["rng"]["cpu"])
        cuda_rng = state["rng"].get("cuda")
        if cuda_rng is not None and self.device.type == "cuda":
            if isinstance(cuda_rng, (list, tuple)):  # older checkpoints: every visible GPU;
                torch.cuda.set_rng_state(cuda_rng[0], self.device)  # the same entry on every rank
            else:
                torch.cuda.set_rng_state(cuda_rng, self.device)
        self.stream.load_state_dict(state["data"])
        self.step = int(state["step"])
        self.best_fid = float(state.get("best_fid", math.inf))

    def _resume(self) -> None:
        found = self.ckpts.latest(map_location=self.device)
        if found is None:
            return
        path, state = found
        diff = config_diff(config_from_dict(state["config"]), self.cfg)
        if diff:
            raise UserError(f"checkpoint {path} comes from a different config ({'; '.join(diff[:5])})")
        self.load_state_dict(state)
        info(f"resuming from {path} (step {self.step:,})")

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes the checkpoint (atomically); every rank waits until it is on disk."""
        path = self.ckpts.save(self.step, self.state_dict()) if self.main else None
        self._barrier()
        return path

    # ------------------------------------------------------------------ training
    def _noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z (and fake labels) for this rank: drawn for the global batch of ``n x world`` from
        the RNG every rank shares, of which this rank takes its slice."""
        total = n * self.world
        z = torch.randn(total, self.cfg.model.z_dim, device=self.device)
        k = self.cfg.model.num_classes
        y = torch.randint(0, k, (total,), device=self.device) if k else None
        part = slice(self.rank * n, (self.rank + 1) * n)
        return z[part], (y[part] if y is not None else None)

    def d_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One D update on real ``x, y``; returns (loss, mean D(real), mean D(fake)), unsynchronised."""
        cond = self.cfg.model.num_classes > 0
        z, yf = self._noise(x.shape[0])
        with self._autocast():
            with torch.no_grad():
                fake = self.G_fake(z, yf).to(x.dtype)
            # one D forward on cat(real, fake): valid because D has no batch-dependent layers
            logits = self.D_train(torch.cat([x, fake]), torch.cat([y, yf]) if cond else None)
        real_l, fake_l = logits.float().split([x.shape[0], fake.shape[0]])
        loss = self.d_loss_fn(real_l, fake_l)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss).backward()
        self.scaler_d.step(self.opt_d)  # skipped when fp16 gradients overflowed
        self.scaler_d.update()
        return loss.detach(), real_l.detach().mean(), fake_l.detach().mean()

    def g_step(self) -> torch.Tensor:
        """One G update; returns the loss, unsynchronised."""
        z, yf = self._noise(self.cfg.train.batch_size)
        self.D.requires_grad_(False)
        with self._autocast():
            logits = self.D_frozen(self.G_train(z, yf), yf)
        loss = self.g_loss_fn(logits.float())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.D.requires_grad_(True)
        return loss.detach()

    def train_iteration(self) -> tuple[torch.Tensor, int]:
        """One training iteration: ``n_dis`` D steps on real batches, one G step, the EMA update.
        Returns (d_loss, g_loss, D(real), D(fake), 1) of the last D step and the G step, without
        a device sync, and the number of real images this process fed to D."""
        imgs = 0
        for _ in range(self.cfg.train.n_dis):
            x, y = next(self.stream)
            x = x.contiguous(memory_format=self.memory_format)
            d_loss, d_real, d_fake = self.d_step(x, y)
            imgs += x.shape[0]
        g_loss = self.g_step()
        self.step += 1
        self.update_ema()
        return torch.stack([d_loss, g_loss, d_real, d_fake, self._one]), imgs

    def update_ema(self) -> None:
        t = self.cfg.train
        if self.step < t.ema_start:
            self.ema.n_averaged.zero_()  # the next update copies G
        # AveragedModel averages the parameters and copies every buffer; BN statistics are then
        # averaged like the weights (SN's u/v stay copied: averaging would shrink them)
        average_bn = t.ema_bn_stats == "average" and int(self.ema.n_averaged) > 0 and t.ema_decay > 0
        if average_bn:
            previous = [b.clone() for b in self._ema_bn]
        self.ema.update_parameters(self.G)
        if average_bn:
            torch._foreach_lerp_(self._ema_bn, previous, t.ema_decay)  # decay * old + (1 - decay) * G's

    def fit(self) -> dict[str, float]:
        """Train until ``config.steps``; returns the last logged metrics."""
        cfg, t = self.cfg, self.cfg.train
        if self.step >= cfg.steps:
            info(f"{self.run_dir} is already trained to step {self.step:,}; raise --steps to train further")
            return {}
        writer = metrics_file = None
        if self.main:  # rank 0 alone logs, samples and checkpoints
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step or None)
            if self.step == 0:
                writer.add_text("config", "```\n" + json.dumps(config_to_dict(cfg), indent=2) + "\n```", 0)
            metrics_file = open(self.run_dir / "metrics.jsonl", "a")
            (self.run_dir / "samples").mkdir(exist_ok=True)
        grid_z, grid_y = grid_inputs(cfg.model.num_classes, cfg.model.z_dim, t.grid_columns, t.grid_max_rows, t.seed + 1)
        self.G.train()
        self.D.train()
        where = f"{self.world} processes ({self.device.type})" if self.world > 1 else str(self.device)
        extras = [f"precision {t.precision}"] + (["torch.compile (the first steps compile)"] if t.compile else [])
        info(f"training on {where} into {self.run_dir}, global batch {t.batch_size * self.world}, {', '.join(extras)}")
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True, disable=not self.progress)
        sums = torch.zeros(5, device=self.device)  # d_loss, g_loss, d_real, d_fake, count
        last: dict[str, float] = {}
        t0, imgs = time.perf_counter(), 0
        try:
            with graceful_stop() as stop:
                while self.step < cfg.steps:
                    stats, n = self.train_iteration()
                    sums += stats
                    imgs += n
                    self.steps_run += 1
                    bar.update(1)
                    requested = self._agree_stop(stop.requested)
                    end = self.step >= cfg.steps or requested is not None
                    if self.step % t.log_every == 0 or end:
                        elapsed = time.perf_counter() - t0
                        if self.world > 1:
                            dist.all_reduce(sums)  # means over the global batch
                        last = self._log(sums, imgs * self.world / max(elapsed, 1e-9), writer, metrics_file)
                        bar.set_postfix(d=f"{last['d_loss']:.3f}", g=f"{last['g_loss']:.3f}", img_s=f"{last['img_per_s']:.0f}")
                        sums.zero_()
                        t0, imgs = time.perf_counter(), 0
                    if self.main and (self.step % t.sample_every == 0 or end):
                        self._sample(grid_z, grid_y, writer)
                    eval_due = t.eval_every and (self.step % t.eval_every == 0 or self.step == cfg.steps)
                    ckpt_due = self.step % t.ckpt_every == 0 or end
                    if eval_due or ckpt_due:
                        self._check_finite()  # never score or save poisoned weights
                    if eval_due:
                        self._evaluate(writer, metrics_file)
                    if ckpt_due:
                        self.save_checkpoint()
                    if requested is not None:
                        self.stopped_by = requested
                        info(f"{requested}: stopped after step {self.step:,} and saved a checkpoint; "
                             "run the same command again to resume")
                        break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
                metrics_file.close()
        return last

    def _agree_stop(self, requested: str | None) -> str | None:
        """Under torchrun, a signal may reach one rank only: every step the ranks vote, and all
        stop after the same step when any of them was asked to (SIGTERM outranks SIGINT)."""
        if self.world == 1:
            return requested
        vote = torch.tensor([signal.Signals[requested].value if requested else 0])
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self._cpu_group)
        return signal.Signals(int(vote)).name if int(vote) else None

    def _check_finite(self) -> None:
        """Raise TrainingDiverged naming every network (and its first parameter) with NaN/Inf."""
        bad = []
        for name, net in (("discriminator", self.D), ("generator", self.G)):
            finite = torch.stack([torch.isfinite(p).all() for p in net.parameters()])
            if not finite.all():  # one device sync per network
                first = int((~finite).nonzero()[0])
                bad.append(f"the {name}'s {[n for n, _ in net.named_parameters()][first]}")
        if bad:
            raise TrainingDiverged(
                f"training diverged at step {self.step}: {' and '.join(bad)} hold{'s' if len(bad) == 1 else ''} "
                "NaN/Inf; the last good checkpoint is kept (try lower learning rates)"
            )

    def _log(self, sums: torch.Tensor, img_per_s: float, writer, metrics_file) -> dict[str, float]:
        s = (sums[:4] / sums[4].clamp(min=1)).tolist()
        rec = {"step": self.step, "d_loss": s[0], "g_loss": s[1], "d_real": s[2], "d_fake": s[3], "img_per_s": img_per_s}
        if not all(math.isfinite(v) for v in s):
            self._check_finite()  # name the network whose weights went bad, if any did
            bad = " and ".join(f"the {n} loss" for n, v in (("discriminator", s[0]), ("generator", s[1]))
                               if not math.isfinite(v)) or "the discriminator's mean output"
            raise TrainingDiverged(
                f"training diverged at step {self.step}: {bad} is NaN/Inf "
                f"(d_loss {s[0]}, g_loss {s[1]}); the last good checkpoint is kept (try lower learning rates)"
            )
        rec["lr_g"], rec["lr_d"] = self.opt_g.param_groups[0]["lr"], self.opt_d.param_groups[0]["lr"]
        if self.cfg.train.precision == "fp16":
            rec["loss_scale_g"], rec["loss_scale_d"] = self.scaler_g.get_scale(), self.scaler_d.get_scale()
        if not self.main:
            return rec
        for net, model in (("G", self.G), ("D", self.D)):
            for name, g in attention_gammas(model).items():
                rec[f"gamma/{net}.{name}"] = g
        metrics_file.write(json.dumps(rec) + "\n")
        metrics_file.flush()
        for k in ("d_loss", "g_loss"):
            writer.add_scalar(f"loss/{k}", rec[k], self.step)
        writer.add_scalar("D/real", rec["d_real"], self.step)
        writer.add_scalar("D/fake", rec["d_fake"], self.step)
        writer.add_scalar("speed/img_per_s", img_per_s, self.step)
        writer.add_scalar("lr/G", rec["lr_g"], self.step)
        writer.add_scalar("lr/D", rec["lr_d"], self.step)
        for k, v in rec.items():
            if k.startswith("gamma/"):
                writer.add_scalar(k, v, self.step)
        return rec

    # ------------------------------------------------------------------ evaluation
    def _setup_eval(self, extractor) -> None:
        t, m = self.cfg.train, self.cfg.model
        if extractor is None:
            from .metrics import InceptionExtractor

            extractor = InceptionExtractor(t.inception_weights, device=self.device)
        self.extractor = extractor
        if t.eval_reference is None:
            self.eval_data = self.data
        else:
            self.eval_data = open_dataset(t.eval_reference, m.resolution, m.img_channels, "train",
                                          self.cfg.dataset.cache, self.cfg.dataset.workers, progress=self.progress)

    def _evaluate(self, writer, metrics_file) -> dict:
        """Score the EMA G, log the metrics and keep ``best.pt`` by FID. Global RNG states are
        left untouched, so a run with evaluation trains exactly as one without."""
        from .metrics import evaluate_generator

        t = self.cfg.train
        devices = [self.device] if self.device.type == "cuda" else []
        if self.world > 1:  # every rank generates a share: all need rank 0's batch-norm statistics
            for b in self.ema.module.buffers():
                dist.broadcast(b, src=0)
        started = time.perf_counter()
        with torch.random.fork_rng(devices=devices):
            res = evaluate_generator(self.ema.module, self.eval_data, n=t.eval_samples, extractor=self.extractor,
                                     batch_size=t.eval_batch_size, seed=t.seed, progress=False)
        rec = {"step": self.step, "eval": True, "eval_samples": res["n_fake"], "eval_seconds": time.perf_counter() - started}
        rec.update({k: res[k] for k in ("fid", "is", "is_std", "kid", "kid_std", "extractor", "intra_fid") if k in res})
        improved = res["fid"] < self.best_fid
        if improved:
            self.best_fid = res["fid"]
        rec["best_fid"] = self.best_fid
        if self.main:  # rank 0 logs and writes best.pt; the others wait for it
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()
            for key, tag in (("fid", "FID"), ("is", "IS"), ("kid", "KID"), ("intra_fid", "intra_FID")):
                if key in rec:
                    writer.add_scalar(f"eval/{tag}", rec[key], self.step)
            writer.add_scalar("eval/best_FID", self.best_fid, self.step)
            if improved:
                self.ckpts.save_best(self.state_dict())
        self._barrier()
        info(f"step {self.step:,}: FID {res['fid']:.2f}, IS {res['is']:.2f}"
             + (f", intra-FID {res['intra_fid']:.2f}" if "intra_fid" in res else "")
             + (" (best so far: saved checkpoints/best.pt)" if improved else f" (best {self.best_fid:.2f})"))
        return rec

    @torch.no_grad()
    def _sample(self, z: torch.Tensor, y: torch.Tensor | None, writer) -> Path:
        G = self.ema.module
        was_training = G.training
        G.eval()
        imgs = G(z.to(self.device), y.to(self.device) if y is not None else None)
        G.train(was_training)
        path = self.run_dir / "samples" / f"step_{self.step:08d}.png"
        save_grid(imgs, path, self.cfg.train.grid_columns)
        shutil.copyfile(path, self.run_dir / "samples" / "latest.png")
        from torchvision.utils import make_grid

        writer.add_image("samples/ema", make_grid(imgs.float().cpu() * 0.5 + 0.5, nrow=self.cfg.train.grid_columns), self.step)
        return path


class _StopRequest:
    requested: str | None = None


@contextmanager
def graceful_stop(echo_s: float = 2.0):
    """While active, SIGINT and SIGTERM ask the loop to finish its step, checkpoint and stop;
    a second signal interrupts at once. Under torchrun, a second signal within ``echo_s``
    seconds of the first is taken for an echo and ignored: on Ctrl-C, torchrun forwards SIGINT
    to processes that the terminal has already signalled. Outside the main thread, signals are left alone."""
    req = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield req
        return
    if not distributed.launched_by_torchrun():
        echo_s = 0.0  # no launcher re-sends signals: a second Ctrl-C always stops at once
    first = [0.0]

    def handler(signum, frame):
        if req.requested is not None:
            if time.monotonic() - first[0] < echo_s:
                return
            raise KeyboardInterrupt
        req.requested = signal.Signals(signum).name
        first[0] = time.monotonic()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield req
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def bn_statistics(model: nn.Module) -> list[torch.Tensor]:
    """The running means and variances of every batch norm in ``model``."""
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var) if b is not None]


def copy_config(cfg: RunConfig) -> RunConfig:
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, g_attn=list(cfg.model.g_attn), d_attn=list(cfg.model.d_attn)),
        dataset=dataclasses.replace(cfg.dataset),
        train=dataclasses.replace(cfg.train),
    )
