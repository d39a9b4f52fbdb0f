"""A stand-in for Inception in offline tests (imported by test modules; tests/ is on sys.path)."""

import torch


class StandIn:
    """A small fixed feature extractor: pooled pixels through fixed random projections."""

    name = "stand-in-v1"

    def __init__(self):
        g = torch.Generator().manual_seed(123)
        self.proj = torch.randn(3 * 8 * 8, 24, generator=g)
        self.head = torch.randn(24, 10, generator=g)
        self.calls = 0

    def __call__(self, x: torch.Tensor):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        self.calls += 1
        f = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 8).flatten(1) @ self.proj
        return f, f @ self.head
