"""Image tensors to and from files: the models' [-1, 1] range and uint8, sample grids."""

from __future__ import annotations

from pathlib import Path

import torch

from .files import atomic_write

__all__ = ["to_uint8", "to_model_range", "save_grid", "grid_inputs", "write_pngs", "write_gif"]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8 in [0, 255] (as a saved PNG holds them)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] as float in [-1, 1], the models' range (the inverse of :func:`to_uint8`)."""
    return images.float().div_(127.5).sub_(1.0)


def image_format(path: Path) -> str:
    """PIL's format name for ``path``'s extension; a clear error for an unknown one."""
    from PIL import Image

    Image.init()
    fmt = Image.EXTENSION.get(path.suffix.lower())
    if fmt is None:
        from .console import UserError

        raise UserError(f"{path.name}: unknown image extension {path.suffix or '(none)'!r}; use .png, .jpg, .webp ...")
    return fmt


def save_grid(images: torch.Tensor, path: str | Path, columns: int) -> Path:
    """Save images in [-1, 1] as one grid image (its format from the extension, written
    atomically) with ``columns`` images per row."""
    from torchvision.utils import save_image

    path = Path(path)
    fmt = image_format(path)
    grid = images.float().clamp(-1, 1) * 0.5 + 0.5
    return atomic_write(path, lambda f: save_image(grid, f, format=fmt, nrow=columns, padding=2, pad_value=1.0))


def write_pngs(images: torch.Tensor, folder: Path, names: list[str]) -> None:
    """One PNG per image in [-1, 1], named ``names`` (without extension), into ``folder``."""
    from PIL import Image

    arr = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    for a, name in zip(arr, names):
        image = Image.fromarray(a[:, :, 0] if a.shape[-1] == 1 else a)
        # renamed into place, not fsynced: no half-written sample after a crash, at the speed of 50k files
        atomic_write(folder / f"{name}.png", lambda f: image.save(f, format="PNG"), durable=False)


def grid_inputs(num_classes: int, z_dim: int, columns: int = 10, max_rows: int = 10,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fixed latents for a sample grid: one row per class (at most ``max_rows`` classes, spread
    evenly), the same ``columns`` latents in every row. Unconditional: ``max_rows`` rows."""
    g = torch.Generator().manual_seed(seed)
    if num_classes > 0:
        rows = min(num_classes, max_rows)
        classes = torch.linspace(0, num_classes - 1, rows).round().long()
        z = torch.randn(columns, z_dim, generator=g).repeat(rows, 1)
        return z, classes.repeat_interleave(columns)
    return torch.randn(columns * max_rows, z_dim, generator=g), None


def write_gif(rows: list[torch.Tensor], path: Path, fps: float) -> Path:
    """An animation of image sequences in [-1, 1] (each (T, C, H, W)) played side by side, forward
    and back, at ``fps``; small images are doubled in size. Written atomically."""
    from PIL import Image

    frames_t = torch.cat([to_uint8(r).cpu() for r in rows], dim=3)  # (T, C, H, W * rows)
    frames = [Image.fromarray(f[0].numpy() if f.shape[0] == 1 else f.permute(1, 2, 0).numpy()) for f in frames_t]
    frames = [f.resize((f.width * 2, f.height * 2), Image.NEAREST) if f.height < 128 else f for f in frames]
    loop = frames + frames[-2:0:-1]
    return atomic_write(path, lambda f: loop[0].save(f, format="GIF", save_all=True, append_images=loop[1:],
                                                      duration=int(1000 / fps), loop=0))
