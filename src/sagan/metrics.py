"""The metrics from features: FID, KID, IS, improved precision/recall and intra-FID.

The features-to-metric steps are torch-fidelity's own functions (``fid_statistics_to_metric``,
``isc_features_to_metric``, ``kid_features_to_metric``, ``prc_features_to_metric``), called
directly on feature tensors; its generator-wrapper path is not used (it breaks on NumPy 2).
Getting the features is :mod:`sagan.features`; whole evaluations with their protocol are
:mod:`sagan.evaluation`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .console import UserError

__all__ = ["Features", "fid_from_features", "inception_score", "kid", "precision_recall", "compute_metrics"]


@dataclass
class Features:
    """Features of a set of images: pool features (N, D), logits (N, K) and labels (N,), kept
    in float32 on the CPU (the extractor's precision); the metrics work in float64."""

    pool: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    def of_class(self, k: int) -> torch.Tensor:
        return self.pool[self.labels == k]


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
