"""Differentiable augmentation for data-efficient GAN training (Zhao et al., NeurIPS 2020,
"Differentiable Augmentation for Data-Efficient GAN Training"), with an optional adaptive
probability in the way of StyleGAN2-ADA (Karras et al., NeurIPS 2020).

Every image that D sees, real or generated, in the D step and in the G step, goes through the
same family of random transforms; each is differentiable, so G's gradients flow through them.

* ``color``: brightness (add U(-0.5, 0.5)), saturation (scale the deviation from the pixel's
  channel mean by U(0, 2)), contrast (scale the deviation from the image mean by U(0.5, 1.5));
* ``translation``: shift by whole pixels, up to 1/8 of the image side each way, zero padding;
* ``cutout``: zero a box of half the image side at a random centre (clipped at the border).

Images are in [-1, 1], so "zero" is mid-grey, as in the paper's code. Each image draws its own
parameters. With a probability ``p`` < 1 each transform is applied to each image with
probability ``p`` (ADA's convention); DiffAugment proper is ``p = 1``.

Random draws come from the global RNG on the images' device and are made for the global batch,
of which each process takes its slice, as the noise is: results do not depend on the number of
processes, and a resumed run draws the same transforms as an uninterrupted one.
"""

from __future__ import annotations

import torch

from .console import UserError

__all__ = ["POLICIES", "parse_policy", "draw", "apply", "DiffAugment"]

POLICIES = {"color": ("brightness", "saturation", "contrast"), "translation": ("translation",), "cutout": ("cutout",)}
TRANSLATION = 1 / 8  # of the image side
CUTOUT = 1 / 2


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation,cutout"`` as the list of ops it applies, in order; '' or None: none."""
    ops: list[str] = []
    for name in (p.strip() for p in (policy or "").split(",") if p.strip()):
        if name not in POLICIES:
            raise UserError(f"unknown augmentation {name!r} in train.diffaug; use a comma-separated list of "
                            f"{', '.join(POLICIES)}")
        ops += POLICIES[name]
    return tuple(ops)


def draw(op: str, n: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Random parameters of ``op`` for ``n`` images: (n,) factors or shifts, or (n, 2) integer offsets."""
    if op in ("brightness", "saturation", "contrast"):
        u = torch.rand(n, device=device)
        return u - 0.5 if op == "brightness" else 2 * u if op == "saturation" else u + 0.5
    if op == "translation":
        sy, sx = int(height * TRANSLATION + 0.5), int(width * TRANSLATION + 0.5)
        return torch.stack([torch.randint(-sy, sy + 1, (n,), device=device),
                            torch.randint(-sx, sx + 1, (n,), device=device)], 1)
    if op == "cutout":  # the box's centre; an even box may reach one pixel past either border
        hy, hx = int(height * CUTOUT + 0.5), int(width * CUTOUT + 0.5)
        return torch.stack([torch.randint(0, height + 1 - hy % 2, (n,), device=device),
                            torch.randint(0, width + 1 - hx % 2, (n,), device=device)], 1)
    raise ValueError(f"unknown augmentation op {op!r}")


def apply(op: str, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``op`` on images ``x`` (N, C, H, W) with the parameters :func:`draw` gave."""
    n, _, h, w = x.shape
    if op == "brightness":
        return x + params.view(n, 1, 1, 1).to(x.dtype)
    if op == "saturation":
        mean = x.mean(dim=1, keepdim=True)
        return (x - mean) * params.view(n, 1, 1, 1).to(x.dtype) + mean
    if op == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * params.view(n, 1, 1, 1).to(x.dtype) + mean
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    if op == "translation":  # out[i, j] = x[i - dy, j - dx], zero outside
        sy, sx = int(h * TRANSLATION + 0.5), int(w * TRANSLATION + 0.5)
        padded = torch.nn.functional.pad(x, (sx, sx, sy, sy))
        src_r = (rows - params[:, 0].view(n, 1, 1) + sy).expand(n, h, w)
        src_c = (cols - params[:, 1].view(n, 1, 1) + sx).expand(n, h, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, h, w)
        return padded.permute(0, 2, 3, 1)[batch, src_r, src_c].permute(0, 3, 1, 2)
    if op == "cutout":
        hy, hx = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
        top = (params[:, 0] - hy // 2).view(n, 1, 1)
        left = (params[:, 1] - hx // 2).view(n, 1, 1)
        inside = (rows >= top) & (rows < top + hy) & (cols >= left) & (cols < left + hx)
        return x * (~inside).unsqueeze(1).to(x.dtype)
    raise ValueError(f"unknown augmentation op {op!r}")


class DiffAugment:
    """The augmentation D's inputs go through, with its probability ``p`` and, with a
    ``target``, the adaptive update of ``p`` from the sign of D's outputs on real images.

    ``p`` moves by ``sign(r_t - target) * images / (kimg * 1000)`` each time :meth:`adjust` runs,
    where ``r_t = E[sign(D(real))]`` over the images observed since the last update and
    ``images`` is their number, so that ``p`` can cross [0, 1] in ``kimg`` thousand real images.
    """

    def __init__(self, policy: str, device: torch.device, target: float | None = None, kimg: float = 100.0):
        self.ops = parse_policy(policy)
        self.target, self.kimg = target, kimg
        self.p = 0.0 if target is not None else 1.0  # adaptive runs start without augmentation
        self.signs = torch.zeros(2, device=device)  # sum of sign(D(real)), count
        self.last_rt: float | None = None

    def __call__(self, x: torch.Tensor, rank: int = 0, world: int = 1) -> torch.Tensor:
        if not self.ops or self.p <= 0:
            return x
        n, _, h, w = x.shape
        mine = slice(rank * n, (rank + 1) * n)
        for op in self.ops:
            params = draw(op, n * world, h, w, x.device)[mine]
            if self.p >= 1:
                x = apply(op, x, params)
            else:
                use = (torch.rand(n * world, device=x.device)[mine] < self.p).view(n, 1, 1, 1)
                x = torch.where(use, apply(op, x, params), x)
        return x.contiguous()

    def observe(self, real_logits: torch.Tensor) -> None:
        """Accumulate sign(D(real)) for the next :meth:`adjust` (no device sync)."""
        if self.target is not None:
            self.signs[0] += real_logits.detach().float().sign().sum()
            self.signs[1] += real_logits.numel()

    def adjust(self) -> None:
        """Move ``p`` towards the target (the counts are summed over processes first)."""
        if self.target is None:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.signs)
        total, count = self.signs.tolist()
        self.signs.zero_()
        if count == 0:
            return
        self.last_rt = total / count
        step = (1.0 if self.last_rt > self.target else -1.0 if self.last_rt < self.target else 0.0) * count
        self.p = min(1.0, max(0.0, self.p + step / (self.kimg * 1000)))

    def state_dict(self) -> dict:
        return {"p": self.p, "signs": self.signs.detach().cpu(), "last_rt": self.last_rt}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.last_rt = float(state["p"]), state.get("last_rt")
        self.signs.copy_(state["signs"])
