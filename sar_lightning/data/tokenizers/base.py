"""The tokenizer interface: images <-> grids of discrete codes, in raster layout.

Images are float tensors ``[B, C, H, W]`` in [0, 1]; codes are ``LongTensor[B, h * w]`` with
``codes[b, r * w + c]`` the code of grid cell (r, c).
"""

from __future__ import annotations

import torch
from torch import nn


class Tokenizer(nn.Module):
    """Base class. Subclasses set ``name``, ``vocab_size``, ``grid`` (h, w), ``channels`` and
    ``image_size`` (H, W) and implement ``encode`` and ``decode``."""

    name: str = "tokenizer"
    vocab_size: int
    grid: tuple[int, int]
    channels: int
    image_size: tuple[int, int]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, h*w)
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, h*w) -> (B, C, H, W)
        raise NotImplementedError


class PixelQuantizer(Tokenizer):
    """Each pixel is a token: intensity in [0, 1] quantised to ``levels`` values (digits: 17 levels)."""

    name = "pixel"

    def __init__(self, levels: int = 17, height: int = 8, width: int = 8, channels: int = 1):
        super().__init__()
        if levels < 2:
            raise ValueError(f"a pixel quantizer needs >= 2 levels, got {levels}")
        self.vocab_size, self.levels = levels, levels
        self.grid = self.image_size = (height, width)
        self.channels = channels
        if channels != 1:
            raise ValueError("the pixel quantizer makes one token per pixel: grayscale only (channels=1)")

    @torch.no_grad()
    def encode(self, images):
        return (images.clamp(0, 1) * (self.levels - 1)).round().long().flatten(1)

    @torch.no_grad()
    def decode(self, codes):
        h, w = self.grid
        return (codes.float() / (self.levels - 1)).view(-1, 1, h, w)
