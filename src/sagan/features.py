"""Inception features of image sets: generated samples and reference data in batches, each rank's
share under torchrun gathered back in one process's order, and reference features cached on disk.

Any callable taking a uint8 (N, 3, H, W) batch and returning ``(pool, logits)`` can stand in
for Inception (``extractor=``), which is how the tests run offline; logits of width 0 mean that
the extractor has no classifier.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from .data import default_workers
from .distributed import comm_device, is_main, rank_world
from .files import cache_dir
from .images import to_uint8
from .metrics import Features
from .checkpoints import save_checkpoint

__all__ = ["Extractor", "extract", "generator_batches", "data_batches", "reference_indices", "reference_features",
           "gather", "broadcast", "name_of"]

Extractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def name_of(extractor) -> str:
    """The name that keys cached reference statistics to an extractor."""
    return getattr(extractor, "name", type(extractor).__name__)


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


def gather(feats: Features, n: int, batch_size: int) -> Features:
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


def broadcast(obj):
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
    extractor_name = extractor_name or name_of(extractor)
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
    if broadcast(cached is not None):
        return cached, True
    n = len(data) if limit is None else min(limit, len(data))
    feats = extract(data_batches(data, batch_size, limit), extractor, total=n, desc="reference features",
                    progress=progress)
    feats = gather(feats, n, batch_size)
    if main:
        save_checkpoint({"pool": feats.pool, "logits": feats.logits[:, :0], "labels": feats.labels,
                     "meta": json.dumps({"source": str(data.source), "n": n, "extractor": extractor_name})}, path)
    return feats, False


