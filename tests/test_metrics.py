"""The metrics from features, against independent computations and known limits."""

import pytest
import torch

from sagan import metrics


def _fd_reference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance by another route: sqrt of S1 through its eigendecomposition, then the
    trace of sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix."""
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s1)
    r1 = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    m = r1 @ s2 @ r1
    tr = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 16)
    assert abs(metrics.fid_from_features(x, x)) < 1e-6


def test_frechet_distance_matches_independent_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 12, generator=g) @ torch.randn(12, 12, generator=g)
    b = torch.randn(300, 12, generator=g) * 2 + 1
    assert metrics.fid_from_features(a, b) == pytest.approx(_fd_reference(a, b), rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    g = torch.Generator().manual_seed(1)
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0, 0.5]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5, 1.5]), torch.tensor([0.5, 2.0, 1.0, 3.0])
    def unit(n):  # exact sample mean 0 and std 1 per dimension, so only the (second-order)
        z = torch.randn(n, 4, generator=g, dtype=torch.float64)  # off-diagonal noise remains
        return (z - z.mean(0)) / z.std(0)

    a = mu1 + s1 * unit(100_000)
    b = mu2 + s2 * unit(100_000)
    closed = float((mu1 - mu2).square().sum() + (s1 - s2).square().sum())
    assert metrics.fid_from_features(a, b) == pytest.approx(closed, abs=1e-3)


def test_inception_score_bounds():
    k = 10
    constant = torch.zeros(1000, k)
    constant[:, 3] = 50.0
    assert metrics.inception_score(constant, splits=1)[0] == pytest.approx(1.0, abs=1e-6)
    confident = torch.full((1000, k), -50.0)
    confident[torch.arange(1000), torch.arange(1000) % k] = 50.0  # uniformly spread, confident
    assert metrics.inception_score(confident, splits=1)[0] == pytest.approx(k, rel=1e-6)


def test_kid_is_unbiased_near_zero_for_the_same_distribution():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2000, 32, generator=g), torch.randn(2000, 32, generator=g)
    same, _ = metrics.kid(a, b, subsets=50, subset_size=500)
    shifted, _ = metrics.kid(a, b + 0.5, subsets=50, subset_size=500)
    assert abs(same) < 2e-3 and shifted > 20 * abs(same) + 0.01


def _pr_by_hand(fake, real, k=3):
    """Precision and recall from their definition, with explicit loops."""
    def radius(x):  # distance to the k-th nearest other point of the same set
        return [sorted(float((a - b).norm()) for j, b in enumerate(x) if j != i)[k - 1] for i, a in enumerate(x)]

    rf, rr = radius(fake), radius(real)
    precision = sum(any(float((f - r).norm()) <= rr[j] for j, r in enumerate(real)) for f in fake) / len(fake)
    recall = sum(any(float((r - f).norm()) <= rf[j] for j, f in enumerate(fake)) for r in real) / len(real)
    return precision, recall


def test_precision_and_recall_match_their_definition_and_known_limits():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 5, generator=g)
    fake = torch.cat([torch.randn(30, 5, generator=g) * 0.3, torch.randn(10, 5, generator=g) + 6])  # a narrow mode + junk
    p, r = metrics.precision_recall(fake, real)
    assert (p, r) == pytest.approx(_pr_by_hand(fake, real))
    assert 0.5 < p < 1 and r < 0.9  # junk lowers precision, the narrow mode recall
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    assert metrics.precision_recall(real + 100, real) == (0.0, 0.0)
