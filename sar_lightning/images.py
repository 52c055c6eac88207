"""Image grids for people to read: nearest-neighbour upscaling, so 8x8 digits show as blocks, not specks.

The training callback, the sample command and the README figures all lay out images with these.
"""

from __future__ import annotations

import torch
from torchvision.utils import make_grid, save_image

from sar_lightning.files import atomic_write

CELL = 64  # the smallest side, in pixels, of one image in a grid


def upscale(images: torch.Tensor, cell: int = CELL) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, C, s*H, s*W]`` with the integer s >= 1 that brings min(H, W) to ``cell``
    or just above (nearest neighbour: every token stays a sharp square)."""
    scale = max(1, -(-cell // min(images.shape[-2:])))
    return torch.nn.functional.interpolate(images.float(), scale_factor=scale, mode="nearest")


def image_grid(images: torch.Tensor, nrow: int, cell: int = CELL) -> torch.Tensor:
    """Images ``[B, C, H, W]`` in [0, 1] -> one grid image ``[C, H', W']``, ``nrow`` images per row."""
    return make_grid(upscale(images, cell), nrow=nrow, padding=2, pad_value=0.5)


def save_png(grid: torch.Tensor, path) -> None:
    """Write an image ``[C, H, W]`` in [0, 1] as a PNG, atomically (never a half-written file)."""
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))
