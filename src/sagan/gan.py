"""One SAGAN training iteration and everything it updates: G, D, the EMA of G, the two Adam
optimisers (TTUR) and the gradient scalers, with the DDP and torch.compile wrappers.

No files and no logging: a benchmark or a test builds a :class:`GANState` from a complete config
and steps it with batches of real images::

    gan = GANState(cfg, torch.device("cpu"))
    stats, images = gan.train_iteration(batches)   # n_dis D steps, one G step, the EMA update
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from typing import Any, Iterator, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .augment import DiffAugment
from .config import RunConfig
from .console import UserError
from .losses import get_loss
from .models import build_discriminator, build_generator, standing_stats

__all__ = ["GANState", "StepStats", "TrainingDiverged", "bn_statistics"]


class TrainingDiverged(UserError):
    """A loss or a weight became NaN or Inf."""


class StepStats(NamedTuple):
    """What one iteration reports, as device tensors (no sync): the last D step's loss and mean
    logits on real and fake images, and the G step's loss."""

    d_loss: torch.Tensor
    g_loss: torch.Tensor
    d_real: torch.Tensor
    d_fake: torch.Tensor


def bn_statistics(model: nn.Module) -> list[torch.Tensor]:
    """The running means and variances of every batch norm in ``model``."""
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var) if b is not None]


class GANState:
    """G, D, the EMA of G, optimisers and scalers, and the steps that update them.

    ``cfg`` must be complete (classes and channels known). Under torchrun pass this process's
    ``rank`` and the ``world`` size: G and D are wrapped in DistributedDataParallel, and each rank
    draws its slice of noise drawn for the global batch, so results do not depend on the number
    of processes. The same seed gives every rank the same initial weights.
    """

    def __init__(self, cfg: RunConfig, device: torch.device, rank: int = 0, world: int = 1):
        m, t = cfg.model, cfg.train
        self.cfg, self.device, self.rank, self.world = cfg, torch.device(device), rank, world
        torch.manual_seed(t.seed)
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.G = build_generator(m).to(self.device, memory_format=self.memory_format)
        self.D = build_discriminator(m).to(self.device, memory_format=self.memory_format)
        # the EMA keeps plain batch norm, even when G's is synchronised, so sampling needs no group
        self.ema = AveragedModel(self.G, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=False)
        self._ema_bn = bn_statistics(self.ema.module)
        if t.sync_bn and world > 1:
            self.G = nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
        for stage in self.D.blocks[: t.freeze_d]:  # FreezeD: D's first blocks keep their weights
            stage.requires_grad_(False)
        self._d_trainable = [p for p in self.D.parameters() if p.requires_grad]
        self.augment = DiffAugment(t.diffaug, self.device, t.diffaug_target, t.diffaug_kimg) if t.diffaug else None
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=t.lr_g, betas=t.betas_g, eps=t.adam_eps, **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=t.lr_d, betas=t.betas_d, eps=t.adam_eps, **fused)
        # fp16 needs loss scaling; bf16 and fp32 do not (the scalers are then pass-throughs)
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.d_loss_fn, self.g_loss_fn = get_loss(t.loss)
        self._build_forwards()
        self.step = 0

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
                    compiled[id(mod)] = torch.compile(mod, mode=self.compile_mode)
                setattr(self, name, compiled[id(mod)])

    @property
    def compile_mode(self) -> str | None:
        """torch.compile's mode for ``train.compile`` (None: its default)."""
        c = self.cfg.train.compile
        return None if c is True or c in (False, "default") else c

    def _new_graph_step(self) -> None:
        """With CUDA graphs (``reduce-overhead``), tell torch a new step begins, so that the
        previous step's graph outputs may be overwritten (its losses are already detached)."""
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()

    def autocast(self):
        p = self.cfg.train.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    # ------------------------------------------------------------------ the steps
    def noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
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
        self._new_graph_step()
        z, yf = self.noise(x.shape[0])
        with self.autocast():
            with torch.no_grad():
                fake = self.G_fake(z, yf).to(x.dtype)
            real_in, fake_in = (self._augment(x), self._augment(fake)) if self.augment else (x, fake)
            # one D forward on cat(real, fake): valid because D has no batch-dependent layers
            logits = self.D_train(torch.cat([real_in, fake_in]), torch.cat([y, yf]) if cond else None)
        real_l, fake_l = logits.float().split([x.shape[0], fake.shape[0]])
        if self.augment:
            self.augment.observe(real_l)
        loss = self.d_loss_fn(real_l, fake_l)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss).backward()
        self.scaler_d.step(self.opt_d)  # skipped when fp16 gradients overflowed
        self.scaler_d.update()
        return loss.detach(), real_l.detach().mean(), fake_l.detach().mean()

    def g_step(self) -> torch.Tensor:
        """One G update; returns the loss, unsynchronised."""
        self._new_graph_step()
        z, yf = self.noise(self.cfg.train.batch_size)
        for p in self._d_trainable:
            p.requires_grad_(False)
        with self.autocast():
            fake = self.G_train(z, yf)
            logits = self.D_frozen(self._augment(fake) if self.augment else fake, yf)
        loss = self.g_loss_fn(logits.float())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        for p in self._d_trainable:
            p.requires_grad_(True)
        return loss.detach()

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        return self.augment(images, self.rank, self.world)

    def train_iteration(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> tuple[StepStats, int]:
        """``n_dis`` D steps on real batches from ``batches``, one G step, the EMA update.
        Returns the iteration's statistics (no device sync) and the number of real images used."""
        imgs = 0
        for _ in range(self.cfg.train.n_dis):
            x, y = next(batches)
            x = x.contiguous(memory_format=self.memory_format)
            d_loss, d_real, d_fake = self.d_step(x, y)
            imgs += x.shape[0]
        g_loss = self.g_step()
        self.step += 1
        self.update_ema()
        if self.augment and self.step % self.cfg.train.diffaug_interval == 0:
            self.augment.adjust()  # adaptive probability (a no-op without train.diffaug_target)
        return StepStats(d_loss, g_loss, d_real, d_fake), imgs

    def update_ema(self) -> None:
        """EMA of G's parameters; G's BN statistics averaged the same way (``ema_bn_stats
        average``) or copied; spectral norm's u/v always copied (averaging would shrink them)."""
        t = self.cfg.train
        if self.step < t.ema_start:
            self.ema.n_averaged.zero_()  # the next update copies G
        average_bn = t.ema_bn_stats == "average" and t.ema_decay > 0 and bool(self.ema.n_averaged > 0)
        if average_bn:
            previous = [b.clone() for b in self._ema_bn]
        self.ema.update_parameters(self.G)  # averages the parameters, copies every buffer
        if average_bn:
            torch._foreach_lerp_(self._ema_bn, previous, t.ema_decay)  # decay * old + (1 - decay) * G's

    def sampling_generator(self) -> nn.Module:
        """The EMA generator as it is saved and sampled: with ``train.ema_bn_batches`` > 0, a copy
        whose batch-norm statistics are re-estimated from that many batches of fresh noise (its
        own RNG: training is unaffected); otherwise the EMA generator itself."""
        t = self.cfg.train
        if not t.ema_bn_batches:
            return self.ema.module
        G = copy.deepcopy(self.ema.module)
        return standing_stats(G, t.ema_bn_batches, batch_size=t.batch_size, seed=t.seed + self.step)

    def train(self) -> None:
        self.G.train()
        self.D.train()

    def schedule_stats(self) -> dict[str, float]:
        """What the optimisers and augmentation are set to now: learning rates, the augmentation
        probability and its overfitting signal, fp16's loss scales."""
        rec = {"lr_g": self.opt_g.param_groups[0]["lr"], "lr_d": self.opt_d.param_groups[0]["lr"]}
        if self.augment is not None:
            rec["aug_p"] = self.augment.p
            if self.augment.last_rt is not None:
                rec["aug_rt"] = self.augment.last_rt
        if self.cfg.train.precision == "fp16":
            rec["loss_scale_g"], rec["loss_scale_d"] = self.scaler_g.get_scale(), self.scaler_d.get_scale()
        return rec

    def check_finite(self) -> None:
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
                "NaN/Inf; the last good checkpoint is kept (try lower learning rates)")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Networks, EMA, optimisers, scalers and the step (the trainer adds RNG and data position)."""
        state = {
            "step": self.step,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.ema.module.state_dict(),
            "ema_n_averaged": self.ema.n_averaged.detach().cpu(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
        }
        if self.augment:
            state["augment"] = self.augment.state_dict()
        sampler = self.sampling_generator()
        if sampler is not self.ema.module:  # samplers get the standing statistics, resume the running ones
            state["G_ema_running_bn"] = {k: v for k, v in state["G_ema"].items() if k.endswith(_BN_KEYS)}
            state["G_ema"] = sampler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.ema.module.load_state_dict({**state["G_ema"], **state.get("G_ema_running_bn", {})})
        self.ema.n_averaged.copy_(state["ema_n_averaged"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        for key, scaler in (("scaler_g", self.scaler_g), ("scaler_d", self.scaler_d)):
            if state.get(key) and scaler.is_enabled():  # empty when saved without fp16
                scaler.load_state_dict(state[key])
        if self.augment and "augment" in state:
            self.augment.load_state_dict(state["augment"])
        self.step = int(state["step"])


_BN_KEYS = ("running_mean", "running_var", "num_batches_tracked")
