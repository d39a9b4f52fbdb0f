"""The training loop: a run directory, a data stream and a :class:`~sagan.gan.GANState`, stepped
until ``steps`` with logging, sample grids, evaluation, checkpoints, resume and graceful stops.
Knows nothing about the command line.

How ``sagan train`` flows: the CLI resolves the config (:mod:`sagan.config`) and builds a
:class:`Trainer`, which checks and locks the run directory (:mod:`sagan.rundir`), opens the data
(:mod:`sagan.data`), completes the config from it, builds the GAN (:mod:`sagan.gan`), resumes
from the newest checkpoint (:mod:`sagan.checkpoints`), and in :meth:`Trainer.fit` calls
``GANState.train_iteration`` (D steps, G step, EMA) and hands records to the run log
(:mod:`sagan.runlog`).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoints import CheckpointManager
from .config import RunConfig, check_same_run, complete, config_from_dict, config_to_dict, copy_config, validate
from .console import UserError, info, warn
from .data import BatchStream, ImageData, default_workers, open_dataset
from .gan import GANState, StepStats, TrainingDiverged
from .images import grid_inputs
from .loading import initialise_from
from .models import attention_gammas, eval_mode
from .rundir import RunDir
from .runlog import RunLog, check_loggers

__all__ = ["Trainer", "TrainingDiverged", "graceful_stop"]


class Trainer:
    """Train a SAGAN described by ``config`` into ``run_dir``.

    If ``run_dir`` already holds a run, training resumes from its latest checkpoint, provided the
    config matches (``steps``, logging intervals and speed settings may change); ``overwrite=True``
    starts over, deleting the run's own files. While it exists the trainer holds the run's lock,
    so a second trainer on the same directory stops with an error. ``data`` may pass an already
    opened :class:`ImageData`.

    Under torchrun every process builds a Trainer: it joins the process group (NCCL on GPU,
    gloo on CPU), trains its share of each global batch of ``world x train.batch_size`` images
    through DistributedDataParallel, and rank 0 alone logs, samples and writes checkpoints.
    With ``train.eval_every`` set, the EMA generator is scored every so many steps with
    torch-fidelity's TF-Inception (or with ``extractor``, any callable from uint8 images to
    ``(features, logits)``), and ``checkpoints/best.pt`` keeps the state with the lowest FID.

    >>> Trainer(load_preset("demo"), "runs/demo").fit()  # doctest: +SKIP
    """

    def __init__(self, config: RunConfig, run_dir: str | Path, device: str | torch.device = "auto",
                 overwrite: bool = False, data: ImageData | None = None, progress: bool = True, extractor=None):
        self.device = distributed.setup(device)  # joins torchrun's process group, if any
        self.rank, self.world = distributed.rank_world()
        self.is_main_process = self.rank == 0
        self.progress = progress and self.is_main_process
        cfg = validate(copy_config(config))
        _check_device_settings(cfg, self.device, self.world)
        check_loggers(cfg.train.loggers)
        self.run = RunDir(run_dir)
        self.run.check_usable(overwrite)  # refuse a foreign directory before any work
        if self.is_main_process:
            self.run.lock()
        try:
            self._setup(cfg, overwrite, data, extractor)
        except BaseException:
            self.close()
            raise

    def _setup(self, cfg: RunConfig, overwrite: bool, data: ImageData | None, extractor) -> None:
        m, t = cfg.model, cfg.train
        if t.eval_every and extractor is None:  # missing Inception weights stop the run before any decoding
            from .evaluation import InceptionExtractor

            extractor = InceptionExtractor(t.inception_weights, device=self.device)
        self.data = data or open_dataset(cfg.data, m.resolution, m.img_channels, cfg.dataset.split,
                                         cfg.dataset.cache, cfg.dataset.workers, progress=self.progress)
        workers = cfg.dataset.workers if cfg.dataset.workers >= 0 else default_workers()
        self.cfg = cfg = complete(cfg, self.data, workers)
        self.ckpts = CheckpointManager(self.run.checkpoints, t.keep_ckpts)
        found = None if overwrite else self.ckpts.latest(map_location=self.device, set_aside=self.is_main_process)
        if found is not None:  # the run's own record of what it is: its newest readable checkpoint
            check_same_run(config_from_dict(found[1]["config"], str(found[0])), cfg, str(self.run))
            _check_same_data(found[1].get("dataset"), self.data)
        self.evaluator = TrainingEval(cfg, self.data, self.device, extractor, self.progress) if t.eval_every else None
        self.gan = GANState(cfg, self.device, self.rank, self.world)
        if cfg.init_from and found is None:  # a new run from trained weights (a resumed one has its own)
            info(f"initialised from {initialise_from(self.gan, cfg.init_from)}")
        self.stream = BatchStream(self.data, t.batch_size, t.seed, cfg.dataset.flip, self.device,
                                  rank=self.rank, world=self.world, workers=workers)
        self.best_fid, self.steps_run, self.stopped_by = math.inf, 0, None
        # everything is checked and built: only now touch the run directory, from rank 0 alone
        distributed.barrier()  # every rank has checked the directory before rank 0 changes it
        if self.is_main_process:
            if overwrite and self.run.is_run():
                self.run.clear()
                info(f"--overwrite: deleted the previous run in {self.run}")
            self.run.create()
            self.run.save_config(cfg)
            for p in self.ckpts.remove_stale_temporaries():
                info(f"removed {p.name}, left by an interrupted checkpoint write")
        distributed.barrier()
        self._resume(found)

    @property
    def step(self) -> int:
        return self.gan.step

    def close(self) -> None:
        """Release the run directory's lock (done at the end of :meth:`fit` too)."""
        self.run.unlock()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":  # this process's GPU (every rank's draws are the same)
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {**self.gan.state_dict(), "rng": rng, "data": self.stream.state_dict(), "best_fid": self.best_fid,
                "config": config_to_dict(self.cfg),
                "dataset": {"images": len(self.data), "classes": list(self.data.class_names)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gan.load_state_dict(state)
        torch.set_rng_state(state["rng"]["cpu"])
        if state["rng"].get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.stream.load_state_dict(state["data"])
        self.best_fid = float(state.get("best_fid", math.inf))

    def _resume(self, found: tuple[Path, dict] | None) -> None:
        if found is not None:
            self.load_state_dict(found[1])
            info(f"resuming from {found[0]} (step {self.step:,})")
        # every rank must resume from the same step: otherwise some nodes cannot see the run
        # directory rank 0 writes, and their loops would drift apart until a collective hangs
        hi, neg_lo = distributed.all_max([self.step, -self.step])
        if hi != -neg_lo:
            raise UserError(f"the processes resumed from different steps ({-neg_lo:,} and {hi:,}): put the run "
                            f"directory {self.run} on a filesystem that every node sees")

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes the checkpoint (atomically); every rank waits until it is on disk."""
        path = self.ckpts.save(self.step, self.state_dict()) if self.is_main_process else None
        distributed.barrier()
        return path

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        """Train until ``config.steps``; returns the last logged metrics."""
        cfg, t = self.cfg, self.cfg.train
        if self.step >= cfg.steps:
            info(f"{self.run} is already trained to step {self.step:,}; raise --steps to train further")
            self.close()
            return {}
        if self.is_main_process:
            self.run.lock()  # held already, unless fit runs a second time
            self.run.samples.mkdir(exist_ok=True)
        log = RunLog(self.run, self.step, config_to_dict(cfg), enabled=self.is_main_process, loggers=t.loggers)
        grid = grid_inputs(cfg.model.num_classes, cfg.model.z_dim, t.grid_columns, t.grid_max_rows, t.seed + 1)
        self.gan.train()
        _announce_start(t, self.device, self.world, self.run)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not self.progress)
        meter, last = StatsMeter(self.device), {}
        try:
            with graceful_stop() as stop:
                while self.step < cfg.steps:
                    meter.add(*self.gan.train_iteration(self.stream))
                    self.steps_run += 1
                    if t.compile and self.steps_run == 1:
                        info(f"compiled: the first step took {time.perf_counter() - meter.t0:.0f} s")
                    bar.update(1)
                    requested = self._agree_stop(stop.requested)
                    end = self.step >= cfg.steps or requested is not None
                    if self.step % t.log_every == 0 or end:
                        last = self._log(meter, log)
                        bar.set_postfix(d=f"{last['d_loss']:.3f}", g=f"{last['g_loss']:.3f}",
                                        img_s=f"{last['img_per_s']:.0f}")
                    if self.step % t.sample_every == 0 or end:
                        self._sample(grid, log)
                    self._evaluate_and_save(end, log)
                    if requested is not None:
                        self.stopped_by = requested
                        info(f"{requested}: stopped after step {self.step:,} and saved a checkpoint; "
                             "run the same command again to resume")
                        break
        finally:
            bar.close()
            log.close()
            self.close()
        return last

    def _agree_stop(self, requested: str | None) -> str | None:
        """Under torchrun, a signal may reach one rank only: every step the ranks vote, and all
        stop after the same step when any of them was asked to (SIGTERM outranks SIGINT)."""
        if self.world == 1:
            return requested
        vote = distributed.all_max([signal.Signals[requested].value if requested else 0])[0]
        return signal.Signals(vote).name if vote else None

    def _log(self, meter: StatsMeter, log: RunLog) -> dict[str, float]:
        rec = {"step": self.step, **meter.means(self.world)}
        bad = [n for n in ("d_loss", "g_loss", "d_real", "d_fake") if not math.isfinite(rec[n])]
        if bad:
            self.gan.check_finite()  # name the network whose weights went bad, if any did
            what = " and ".join(f"the {'discriminator' if n == 'd_loss' else 'generator'} loss"
                                for n in bad if n.endswith("loss")) or "the discriminator's mean output"
            raise TrainingDiverged(f"training diverged at step {self.step}: {what} is NaN/Inf (d_loss {rec['d_loss']}, "
                                   f"g_loss {rec['g_loss']}); the last good checkpoint is kept (try lower learning rates)")
        rec.update(self.gan.schedule_stats())
        if self.is_main_process:
            for net, model in (("G", self.gan.G), ("D", self.gan.D)):
                rec.update({f"gamma/{net}.{name}": g for name, g in attention_gammas(model).items()})
            log.record(self.step, rec)
        return rec

    @torch.no_grad()
    def _sample(self, grid: tuple[torch.Tensor, torch.Tensor | None], log: RunLog) -> None:
        if not self.is_main_process:
            return
        z, y = grid
        G = self.gan.sampling_generator()
        with eval_mode(G):
            images = G(z.to(self.device), y.to(self.device) if y is not None else None)
        log.grid(self.step, images, self.cfg.train.grid_columns)

    def _evaluate_and_save(self, end: bool, log: RunLog) -> None:
        """Score the EMA G when due (keeping ``best.pt`` by FID) and write the checkpoint when due;
        neither happens on poisoned weights."""
        t = self.cfg.train
        eval_due = bool(t.eval_every) and (self.step % t.eval_every == 0 or self.step == self.cfg.steps)
        ckpt_due = self.step % t.ckpt_every == 0 or end
        if eval_due or ckpt_due:
            self.gan.check_finite()
        if eval_due:
            rec = self.evaluator.run(self.gan.sampling_generator(), self.step, self.best_fid)
            improved = rec["fid"] < self.best_fid
            self.best_fid = rec["best_fid"]
            if self.is_main_process:
                log.record(self.step, rec)
                if improved:
                    self.ckpts.save_best(self.state_dict())
            distributed.barrier()
        if ckpt_due:
            self.save_checkpoint()


class StatsMeter:
    """Sums the iterations' statistics on the device (no sync) until the next log line."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(5, device=device)  # d_loss, g_loss, d_real, d_fake, count
        self.one = torch.ones((), device=device)
        self.images, self.t0 = 0, time.perf_counter()

    def add(self, stats: StepStats, images: int) -> None:
        self.sums += torch.stack([*stats, self.one])
        self.images += images

    def means(self, world: int) -> dict[str, float]:
        """Means since the last call, over every process, and the real images per second through D."""
        elapsed = time.perf_counter() - self.t0
        if world > 1:
            torch.distributed.all_reduce(self.sums)
        s = (self.sums[:4] / self.sums[4].clamp(min=1)).tolist()
        out = dict(zip(StepStats._fields, s), img_per_s=self.images * world / max(elapsed, 1e-9))
        self.sums.zero_()
        self.images, self.t0 = 0, time.perf_counter()
        return out


class TrainingEval:
    """FID, KID, precision/recall, IS with the full Inception file (and intra-FID) of the EMA generator
    during training, each record with its protocol. Its inputs are checked
    when the trainer starts, so that missing Inception weights or reference data stop the run
    before it trains; it leaves the global RNG untouched, so training goes on as without it."""

    def __init__(self, cfg: RunConfig, data: ImageData, device: torch.device, extractor, progress: bool):
        t, m = cfg.train, cfg.model
        self.extractor, self.cfg, self.device = extractor, cfg, device
        self.data = data if t.eval_reference is None else open_dataset(
            t.eval_reference, m.resolution, m.img_channels, "train", cfg.dataset.cache, cfg.dataset.workers,
            progress=progress)

    def run(self, G: torch.nn.Module, step: int, best_fid: float) -> dict:
        from .evaluation import evaluate_generator

        t = self.cfg.train
        if distributed.rank_world()[1] > 1:  # every rank generates a share: all need rank 0's BN statistics
            for b in G.buffers():
                torch.distributed.broadcast(b, src=0)
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            res = evaluate_generator(G, self.data, n=t.eval_samples, extractor=self.extractor,
                                     batch_size=t.eval_batch_size, seed=t.seed, progress=False)
        rec = {"step": step, "eval": True, "eval_samples": res["n_fake"], "eval_seconds": time.perf_counter() - started}
        rec.update({k: res[k] for k in ("fid", "is", "is_std", "kid", "kid_std", "extractor", "intra_fid", "precision",
                                        "recall", "protocol") if k in res})
        rec["best_fid"] = min(best_fid, res["fid"])
        info(f"step {step:,}: FID {res['fid']:.2f}" + (f", IS {res['is']:.2f}" if "is" in res else "")
             + (f", intra-FID {res['intra_fid']:.2f}" if "intra_fid" in res else "")
             + (" (best so far: saved checkpoints/best.pt)" if res["fid"] < best_fid else f" (best {best_fid:.2f})"))
        return rec


def _announce_start(t, device: torch.device, world: int, run: RunDir) -> None:
    """Where and how the training runs, and warnings about what will make it slow."""
    where = f"{world} processes ({device.type})" if world > 1 else str(device)
    extras = [f"precision {t.precision}"] + (["torch.compile (the first steps compile)"] if t.compile else [])
    info(f"training on {where} into {run}, global batch {t.batch_size * world}, {', '.join(extras)}")
    _warn_if_cpu_is_busy(device)
    if t.compile:
        info("compiling G and D with torch.compile: the first steps take minutes, and say nothing until they are done")


def _warn_if_cpu_is_busy(device: torch.device) -> None:
    """Several multi-threaded jobs on one CPU slow each other down many times over: say so."""
    if device.type != "cpu" or not hasattr(os, "getloadavg"):
        return
    cores, threads, load = os.cpu_count() or 1, torch.get_num_threads(), os.getloadavg()[0]
    if threads > 1 and load > cores + 0.5:
        warn(f"the CPU is busy (load {load:.1f} on {cores} cores) and torch uses {threads} threads: jobs that share "
             "the cores slow each other down many times over; give each job fewer threads (OMP_NUM_THREADS=1)")


def _check_same_data(saved: dict | None, data: ImageData) -> None:
    """A resumed run's data may have gained or lost images (a warning), not changed its classes."""
    if not saved:
        return
    if list(saved["classes"]) != list(data.class_names):
        gone = [c for c in saved["classes"] if c not in data.class_names]
        new = [c for c in data.class_names if c not in saved["classes"]]
        what = "; ".join(x for x in (f"gone: {', '.join(gone[:4])}" if gone else "",
                                     f"new: {', '.join(new[:4])}" if new else "") if x) or "reordered"
        raise UserError(f"the data's classes changed since the run started ({what}); the labels would mean other "
                        "classes: restore the data, or start a new run (another --out)")
    if saved["images"] != len(data):
        warn(f"the data holds {len(data):,} images now and held {saved['images']:,} when the run started; "
             "resuming, but the order of the images differs from here on")


def _check_device_settings(cfg: RunConfig, device: torch.device, world: int) -> None:
    t = cfg.train
    if t.sync_bn and world > 1 and device.type != "cuda":
        raise UserError("--sync_bn needs GPUs (SyncBatchNorm runs on CUDA only); drop it for CPU training")
    if t.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16 support; use --precision fp16 (or fp32)")


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
