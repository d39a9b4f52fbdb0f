"""Whole evaluations, the way published numbers are computed: a generator or a folder of images
against a reference set, through TF-Inception (:mod:`sagan.inception`), with every result carrying
its ``protocol`` (what the number depends on); the truncation sweep; the results table.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .console import UserError, info
from .distributed import is_main
from .features import (Extractor, broadcast, data_batches, extract, gather, generator_batches, name_of,
                       reference_features)
from .inception import WEIGHTS_FILE, InceptionExtractor
from .metrics import compute_metrics
from .models import eval_mode

__all__ = ["evaluate_generator", "evaluate_folders", "truncation_sweep", "save_truncation_sweep", "sweep_table",
           "protocol", "protocol_line", "format_table", "IS_NEEDS_FULL_FILE"]


IS_NEEDS_FULL_FILE = ("IS needs the full TF-Inception weights file (the bundled features have no classifier): "
                      f"pass --inception-weights {WEIGHTS_FILE}")


def protocol(extractor, n_generated: int, reference, n_reference: int, ref_limit: int | None = None,
             truncation: float | None = None, generator: str | None = None) -> dict:
    """Everything a score depends on, so that a number can be compared with another: the extractor
    and its weights, the numbers of images, the reference set, its split and preparation, the
    truncation and which generator (``ema``, ``raw``; None for a folder of images)."""
    proto = extractor.protocol() if hasattr(extractor, "protocol") else {"extractor": name_of(extractor)}
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

    def count(key):
        return f"{p[key]:,}" if isinstance(p.get(key), int) else "?"

    who = {"ema": "EMA G", "raw": "raw G"}.get(p.get("generator"), "images")
    ref = Path(str(p.get("reference", "?"))).name + (f" {p['reference_split']}" if p.get("reference_split") in
                                                     ("train", "test") else "")
    sha = p.get("weights_sha256")
    extractor = f"{p.get('extractor', '?')}" + (f", weights {sha[:12]}" if sha else "")
    trunc = f"truncation {p['truncation']}" if p.get("truncation") else "no truncation"
    return "; ".join(x for x in (f"{count('n_generated')} {who} vs {count('n_reference')} {ref}", extractor,
                                 p.get("resize"), trunc) if x)


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
    extractor_name = extractor_name or name_of(extractor)
    cond = G.num_classes > 0 and reference.num_classes == G.num_classes
    classes = (torch.arange(n) * G.num_classes // n) if G.num_classes > 0 else None
    with eval_mode(G):
        fake = extract(generator_batches(G, n, batch_size, seed, classes, truncation), extractor, total=n,
                       desc="generated features", progress=progress)
    fake = gather(fake, n, batch_size)
    real, cached = reference_features(reference, extractor, extractor_name, ref_limit, batch_size, progress)
    res = None
    if is_main():
        res = compute_metrics(fake, real, intra_fid=intra_fid and cond)
        res.update(reference=str(reference.source), reference_cached=cached, extractor=extractor_name,
                   resolution=reference.resolution, truncation=truncation,
                   protocol=protocol(extractor, len(fake.pool), reference, len(real.pool), ref_limit, truncation,
                                     generator))
    return broadcast(res)


def evaluate_folders(a, b, extractor: Extractor, extractor_name: str | None = None, batch_size: int = 250,
                     progress: bool = True) -> dict:
    """Score image set ``a`` (e.g. samples from another tool) against reference set ``b``,
    both :class:`sagan.data.ImageData`, with the same pipeline as :func:`evaluate_generator`."""
    extractor_name = extractor_name or name_of(extractor)
    fa = extract(data_batches(a, batch_size), extractor, total=len(a), desc="features of A", progress=progress)
    fa = gather(fa, len(a), batch_size)
    fb, cached = reference_features(b, extractor, extractor_name, None, batch_size, progress)
    res = None
    if is_main():
        res = compute_metrics(fa, fb, intra_fid=False)
        res.update(reference=str(b.source), reference_cached=cached, extractor=extractor_name, resolution=a.resolution,
                   protocol=protocol(extractor, len(fa.pool), b, len(fb.pool)))
    return broadcast(res)


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


DEFAULT_THRESHOLDS = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0]


def truncation_sweep(G, reference, thresholds: list[float], n: int, extractor: Extractor, batch_size: int = 250,
                     seed: int = 0, ref_limit: int | None = None, generator: str = "ema") -> dict:
    """FID, KID (and IS, with the full Inception file) at each truncation threshold (none given:
    0.25 ... 2), then without truncation, each point an evaluation of ``n`` samples of its own."""
    values = sorted(set(thresholds)) or DEFAULT_THRESHOLDS
    if min(values) <= 0:
        raise UserError("--truncation-sweep thresholds must be positive (typical: 0.25 to 2)")
    points = []
    for t in values + [None]:
        res = evaluate_generator(G, reference, n=n, extractor=extractor, batch_size=batch_size, seed=seed,
                                 intra_fid=False, truncation=t, ref_limit=ref_limit, generator=generator)
        points.append({"truncation": t, **{k: res[k] for k in ("fid", "is", "is_std", "kid", "kid_std") if k in res}})
        info(f"truncation {t if t is not None else 'none'}: FID {res['fid']:.2f}"
             + (f", IS {res['is']:.2f}" if "is" in res else f", KID {res['kid']:.4f}"))
    return {"n": n, "reference": str(reference.source), "points": points,
            "protocol": {**res["protocol"], "truncation": "per point"}}


def save_truncation_sweep(sweep: dict, png: Path, title: str, *more_json: Path) -> list[Path]:
    """The trade-off plot at ``png`` and the sweep as JSON beside it (and at ``more_json``)."""
    from .files import write_json
    from .plots import save_figure, truncation_plot

    save_figure(truncation_plot(sweep["points"], title), png)
    return [png, *write_json(sweep, png.with_suffix(".json"), *more_json)]


def sweep_table(points: list[dict]) -> str:
    """One line per threshold: FID and IS (or KID without IS)."""
    return "\n".join(f"T={p['truncation'] if p['truncation'] is not None else 'none':>5}  FID {p['fid']:8.3f}  "
                     + (f"IS {p['is']:7.3f}" if "is" in p else f"KID {p['kid']:.5f}") for p in points)
