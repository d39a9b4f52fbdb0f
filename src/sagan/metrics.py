"""Inception Score, FID, KID, precision/recall and intra-FID, computed the way published numbers are.

Features come from :mod:`sagan.inception` (torch-fidelity's port of the TensorFlow Inception
network, with either the full weights file or the bundled features of the ``fid`` extra). The
features-to-metric steps are torch-fidelity's own functions (``fid_statistics_to_metric``,
``isc_features_to_metric``, ``kid_features_to_metric``), called directly on uint8 image batches;
its generator-wrapper path is not used (it breaks on NumPy 2). Every result carries its
``protocol``: the extractor and the sha256 of its weights, the numbers of generated and reference
images, the reference set and its split, the resize, the truncation and which generator.

Any callable taking a uint8 (N, 3, H, W) batch and returning ``(pool, logits)`` can stand in
for Inception (``extractor=``), which is how the tests run offline; logits of width 0 mean that
the extractor has no classifier, and IS is left out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .console import UserError
from .data import default_workers
from .distributed import comm_device, is_main, rank_world
from .files import cache_dir
from .images import to_uint8
from .inception import InceptionExtractor
from .models import eval_mode

__all__ = [
    "InceptionExtractor",
    "Features",
    "extract",
    "fid_from_features",
    "inception_score",
    "kid",
    "compute_metrics",
]

Extractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _name_of(extractor) -> str:
    """The name that keys cached reference statistics to an extractor."""
    return getattr(extractor, "name", type(extractor).__name__)


@dataclass
class Features:
    """Features of a set of images: pool features (N, D), logits (N, K) and labels (N,), kept
    in float32 on the CPU (the extractor's precision); the metrics work in float64."""

    pool: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    def of_class(self, k: int) -> torch.Tensor:
        return self.pool[self.labels == k]


def _to_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8:
        raise TypeError("the extractor takes uint8 images")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def extract(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], extractor: Extractor, total: int | None = None,
            desc: str = "features", progress: bool = True) -> Features:
    """Run ``extractor`` over ``(uint8 images, labels)`` batches (this rank's share of ``total``)."""
    pools, logits, labels = [], [], []
    bar = tqdm(total=total and -(-total // rank_world()[1]), desc=desc, unit="img",
               disable=not (progress and is_main()), leave=False)
    for x, y in batches:
        p, lg = extractor(_to_rgb_uint8(x))
        pools.append(p.detach().float().cpu())
        logits.append(lg.detach().float().cpu())
        labels.append(torch.as_tensor(y).long().cpu())
        bar.update(len(x))
    bar.close()
    return Features(torch.cat(pools), torch.cat(logits), torch.cat(labels))


def _batches_of(rank: int, world: int, n: int, batch_size: int) -> list[tuple[int, int, int]]:
    """Rank ``rank``'s share of ``n`` items in batches: (batch index, start, size) for batches
    rank, rank + world, ... so that every rank's work is a fixed function of the batch index."""
    return [(b, b * batch_size, min(batch_size, n - b * batch_size)) for b in range(rank, -(-n // batch_size), world)]


def _my_batches(n: int, batch_size: int) -> list[tuple[int, int, int]]:
    return _batches_of(*rank_world(), n, batch_size)


def _batch_seed(seed: int, b: int) -> int:
    return (seed * 0x9E3779B1 + b * 0x85EBCA77 + 1) % (1 << 62)


@torch.no_grad()
def generator_batches(G, n: int, batch_size: int = 250, seed: int = 0, classes: torch.Tensor | None = None,
                      truncation: float | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 samples of ``G`` with their labels, in batches. ``classes`` fixes every sample's
    label (else uniform random labels for a conditional G). Batch ``b`` depends only on
    ``seed`` and ``b``, so under torchrun each rank draws its share of the very samples that
    a single process would draw."""
    for b, i, m in _my_batches(n, batch_size):
        gen = torch.Generator().manual_seed(_batch_seed(seed, b))
        if classes is not None:
            y = classes[i : i + m]
        elif G.num_classes > 0:
            y = torch.randint(0, G.num_classes, (m,), generator=gen)
        else:
            y = torch.zeros(m, dtype=torch.long)
        imgs = G.sample(m, y=y if G.num_classes > 0 else None, seed=int(torch.randint(0, 2**62, (1,), generator=gen)),
                        truncation=truncation, batch_size=m)
        yield to_uint8(imgs), y


def reference_indices(total: int, limit: int | None = None) -> torch.Tensor:
    """Which images of a dataset of ``total`` a reference of ``limit`` images uses: all of them,
    or a fixed random subset in dataset order (datasets are stored class by class, so the
    first ``limit`` would be a few classes only)."""
    if limit is None or limit >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:limit].sort().values


def data_batches(data, batch_size: int = 250, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 batches of an :class:`sagan.data.ImageData` in order (``limit``: a fixed random
    subset of that many images, see :func:`reference_indices`); under torchrun, this rank's share."""
    idx = reference_indices(len(data), limit)
    mine = _my_batches(len(idx), batch_size)
    if data.images is not None:
        for _, i, m in mine:
            sel = idx[i : i + m]
            yield data.images[sel], data.labels[sel]
        return
    if not mine:
        return
    loader = torch.utils.data.DataLoader(data, batch_sampler=[idx[i : i + m].tolist() for _, i, m in mine],
                                         num_workers=default_workers())
    yield from loader


def _gather(feats: Features, n: int, batch_size: int) -> Features:
    """Put every rank's share back together, in the order one process would have produced."""
    rank, world = rank_world()
    if world == 1:
        return feats
    import torch.distributed as dist

    dev = comm_device()
    # where batch b sits in rank r's rows: (b, r, first row, size)
    layout = []
    for r in range(world):
        at = 0
        for b, _, m in _batches_of(r, world, n, batch_size):
            layout.append((b, r, at, m))
            at += m
    rows = max(at + m for _, _, at, m in layout)
    out = []
    for t in (feats.pool, feats.logits, feats.labels.float().unsqueeze(1)):
        padded = torch.zeros(rows, t.shape[1], device=dev)
        padded[: len(t)] = t.to(dev)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        parts = [p.cpu() for p in parts]
        out.append(torch.cat([parts[r][at : at + m] for _, r, at, m in sorted(layout)]))
    return Features(out[0], out[1], out[2].squeeze(1).long())


# ---------------------------------------------------------------------------- the metrics


def fid_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (torch-fidelity's formula)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    if len(a) < 2 or len(b) < 2:
        raise UserError("FID needs at least 2 samples on each side")
    out = fid_statistics_to_metric(fid_features_to_statistics(a.double()), fid_features_to_statistics(b.double()), False)
    return float(out["frechet_inception_distance"])


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """IS mean and std over ``splits`` (torch-fidelity's formula, which applies the softmax)."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    out = isc_features_to_metric(logits.double(), splits=splits, shuffle=True, rng_seed=2020)
    return float(out["inception_score_mean"]), float(out["inception_score_std"])


def kid(a: torch.Tensor, b: torch.Tensor, subsets: int = 100, subset_size: int = 1000) -> tuple[float, float]:
    """Unbiased KID (polynomial kernel of degree 3), mean and std over random subsets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    size = min(subset_size, len(a), len(b))
    out = kid_features_to_metric(a.float(), b.float(), kid_subsets=subsets, kid_subset_size=size, verbose=False,
                                 kid_kernel="poly", kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=2020)
    return float(out["kernel_inception_distance_mean"]), float(out["kernel_inception_distance_std"])


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019) with k-nearest-neighbour
    balls (torch-fidelity's implementation), on the same pool features as FID: precision is the
    share of generated samples inside some real sample's ball, recall the share of real samples
    inside some generated sample's ball."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    out = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=k, prc_batch_size=10_000,
                                 save_cpu_ram=True, verbose=False)
    return float(out["precision"]), float(out["recall"])


def compute_metrics(fake: Features, real: Features, intra_fid: bool = True) -> dict[str, float]:
    """IS of ``fake`` (when the extractor gives logits); FID and KID of ``fake`` against ``real``; and, when both carry the same
    classes, intra-FID: the mean over classes of the FID between same-class features."""
    res: dict[str, float] = {}
    if fake.logits.shape[1] > 0:  # the bundled features have no classifier, so no IS
        res["is"], res["is_std"] = inception_score(fake.logits)
    res["fid"] = fid_from_features(fake.pool, real.pool)
    res["kid"], res["kid_std"] = kid(fake.pool, real.pool)
    classes = sorted(set(real.labels.tolist()))
    if intra_fid and len(classes) > 1:
        per_class = []
        for k in classes:
            f, r = fake.of_class(k), real.of_class(k)
            if len(f) < 2 or len(r) < 2:
                raise UserError(f"intra-FID needs at least 2 samples of class {k} on each side")
            per_class.append(fid_from_features(f, r))
        res["intra_fid"] = float(np.mean(per_class))
        res["intra_fid_per_class"] = per_class
    if min(len(fake.pool), len(real.pool)) > 3:  # k = 3 neighbours need 4 samples a side
        res["precision"], res["recall"] = precision_recall(fake.pool, real.pool)
    res["n_fake"], res["n_real"] = len(fake.pool), len(real.pool)
    return res


# ---------------------------------------------------------------------------- reference cache


def _broadcast(obj):
    """rank 0's ``obj`` on every rank (itself outside torchrun)."""
    if rank_world()[1] == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=comm_device())
    return box[0]


def reference_features(data, extractor: Extractor, extractor_name: str | None = None, limit: int | None = None,
                       batch_size: int = 250, progress: bool = True) -> tuple[Features | None, bool]:
    """Features of the reference set, cached on disk by content, resolution and extractor.
    Returns (features, True if they came from the cache). Under torchrun every rank extracts
    its share; the features are returned on rank 0 only (None elsewhere) when cached."""
    extractor_name = extractor_name or _name_of(extractor)
    key = hashlib.sha256(f"{data.fingerprint()}:{limit}:{extractor_name}".encode()).hexdigest()[:24]
    path = cache_dir() / "reference" / f"{key}.pt"
    main = is_main()
    cached = None
    if main and path.is_file():
        try:
            d = torch.load(path, weights_only=True)
            cached = Features(d["pool"], d["logits"], d["labels"])
        except Exception:
            cached = None  # a damaged cache entry is recomputed
    if _broadcast(cached is not None):
        return cached, True
    n = len(data) if limit is None else min(limit, len(data))
    feats = extract(data_batches(data, batch_size, limit), extractor, total=n, desc="reference features",
                    progress=progress)
    feats = _gather(feats, n, batch_size)
    if main:
        from .checkpoints import save_checkpoint

        save_checkpoint({"pool": feats.pool, "logits": feats.logits[:, :0], "labels": feats.labels,
                     "meta": json.dumps({"source": str(data.source), "n": n, "extractor": extractor_name})}, path)
    return feats, False


# ---------------------------------------------------------------------------- whole evaluations

IS_NEEDS_FULL_FILE = ("IS needs the full TF-Inception weights file (the bundled features have no classifier): "
                      "pass --inception-weights weights-inception-2015-12-05-6726825d.pth")


def protocol(extractor, n_generated: int, reference, n_reference: int, ref_limit: int | None = None,
             truncation: float | None = None, generator: str | None = None) -> dict:
    """Everything a score depends on, so that a number can be compared with another: the extractor
    and its weights, the numbers of images, the reference set, its split and preparation, the
    truncation and which generator (``ema``, ``raw``; None for a folder of images)."""
    proto = extractor.protocol() if hasattr(extractor, "protocol") else {"extractor": _name_of(extractor)}
    proto.update(
        n_generated=n_generated, n_reference=n_reference, reference=str(reference.source),
        reference_split=getattr(reference, "split", None) or "all images of the folder or zip",
        reference_subset=f"fixed random {ref_limit}" if ref_limit and ref_limit < len(reference) else "all",
        reference_preparation=f"resized (shorter side) and centre-cropped to {reference.resolution} px, not flipped",
        truncation=truncation, generator=generator)
    return proto


def protocol_line(res: dict) -> str:
    """The protocol of a result in one line, for tables and logs."""
    p = res.get("protocol") or {}
    sha = (p.get("weights_sha256") or "")[:12]
    who = {"ema": "EMA G", "raw": "raw G"}.get(p.get("generator"), "images")
    ref = Path(str(p.get("reference", "?"))).name + (f" {p['reference_split']}" if p.get("reference_split") in
                                                     ("train", "test") else "")
    trunc = f"truncation {p['truncation']}" if p.get("truncation") else "no truncation"
    return (f"{p.get('n_generated', '?'):,} {who} vs {p.get('n_reference', '?'):,} {ref}; "
            f"TF-Inception pool, weights {sha or p.get('extractor', '?')}; TF1 bilinear to 299; {trunc}")


def evaluate_generator(G, reference, n: int = 50_000, extractor: Extractor | None = None,
                       extractor_name: str | None = None, batch_size: int = 250, seed: int = 0,
                       intra_fid: bool = True, truncation: float | None = None, ref_limit: int | None = None,
                       progress: bool = True, generator: str = "ema") -> dict:
    """Score ``G`` (pass the EMA generator) against ``reference`` (an
    :class:`sagan.data.ImageData`); G runs in eval mode and is left as it was. Conditional
    generators get class-balanced samples so that intra-FID compares equal numbers per class.
    Under torchrun, each rank generates and embeds its share of the samples, and every rank
    returns the same dict of metrics, with its ``protocol`` (``generator`` names which G it was)."""
    if extractor is None:
        extractor = InceptionExtractor(device=next(G.parameters()).device)
    extractor_name = extractor_name or _name_of(extractor)
    cond = G.num_classes > 0 and reference.num_classes == G.num_classes
    classes = (torch.arange(n) * G.num_classes // n) if G.num_classes > 0 else None
    with eval_mode(G):
        fake = extract(generator_batches(G, n, batch_size, seed, classes, truncation), extractor, total=n,
                       desc="generated features", progress=progress)
    fake = _gather(fake, n, batch_size)
    real, cached = reference_features(reference, extractor, extractor_name, ref_limit, batch_size, progress)
    res = None
    if is_main():
        res = compute_metrics(fake, real, intra_fid=intra_fid and cond)
        res.update(reference=str(reference.source), reference_cached=cached, extractor=extractor_name,
                   resolution=reference.resolution, truncation=truncation,
                   protocol=protocol(extractor, len(fake.pool), reference, len(real.pool), ref_limit, truncation,
                                     generator))
    return _broadcast(res)


def evaluate_folders(a, b, extractor: Extractor, extractor_name: str | None = None, batch_size: int = 250,
                     progress: bool = True) -> dict:
    """Score image set ``a`` (e.g. samples from another tool) against reference set ``b``,
    both :class:`sagan.data.ImageData`, with the same pipeline as :func:`evaluate_generator`."""
    extractor_name = extractor_name or _name_of(extractor)
    fa = extract(data_batches(a, batch_size), extractor, total=len(a), desc="features of A", progress=progress)
    fa = _gather(fa, len(a), batch_size)
    fb, cached = reference_features(b, extractor, extractor_name, None, batch_size, progress)
    res = None
    if is_main():
        res = compute_metrics(fa, fb, intra_fid=False)
        res.update(reference=str(b.source), reference_cached=cached, extractor=extractor_name, resolution=a.resolution,
                   protocol=protocol(extractor, len(fa.pool), b, len(fb.pool)))
    return _broadcast(res)


def format_table(res: dict) -> str:
    """The headline metrics as an aligned text table."""
    rows = [("FID", f"{res['fid']:.3f}"), ("KID", f"{res['kid']:.5f} +- {res['kid_std']:.5f}"),
            ("IS", f"{res['is']:.3f} +- {res['is_std']:.3f}" if "is" in res else "not computed (no classifier)")]
    if "precision" in res:
        rows.append(("precision / recall", f"{res['precision']:.3f} / {res['recall']:.3f}"))
    if "intra_fid" in res:
        rows.append(("intra-FID", f"{res['intra_fid']:.3f}"))
    rows.append(("samples", f"{res['n_fake']:,} generated vs {res['n_real']:,} reference"))
    if "protocol" in res:
        rows.append(("protocol", protocol_line(res)))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
