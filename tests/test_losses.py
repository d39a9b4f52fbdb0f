import math

import pytest
import torch

from sagan import losses

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.0, 1.5])


def test_hinge_known_values():
    # relu(1 - real) = [0, .5, 2] -> 5/6; relu(1 + fake) = [0, 1, 2.5] -> 7/6
    assert losses.d_hinge(REAL, FAKE).item() == pytest.approx(5 / 6 + 7 / 6)
    assert losses.g_hinge(FAKE).item() == pytest.approx(0.5 / 3)


def test_hinge_is_zero_when_d_is_confident():
    assert losses.d_hinge(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0


def test_nonsaturating_known_values():
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    d_ref = sum(sp(-r) for r in REAL.tolist()) / 3 + sum(sp(f) for f in FAKE.tolist()) / 3
    g_ref = sum(sp(-f) for f in FAKE.tolist()) / 3
    assert losses.d_nonsaturating(REAL, FAKE).item() == pytest.approx(d_ref, rel=1e-6)
    assert losses.g_nonsaturating(FAKE).item() == pytest.approx(g_ref, rel=1e-6)


def test_wasserstein_known_values():
    assert losses.d_wasserstein(REAL, FAKE).item() == pytest.approx(-0.5 / 3 - 1.5 / 3)
    assert losses.g_wasserstein(FAKE).item() == pytest.approx(0.5 / 3)


def test_get_loss_rejects_unknown_name():
    assert losses.get_loss("hinge") == (losses.d_hinge, losses.g_hinge)
    with pytest.raises(ValueError, match="hinge"):
        losses.get_loss("hinj")
