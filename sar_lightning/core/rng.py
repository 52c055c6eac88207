"""Counter-based random numbers keyed by (image seed, index): the same draws for an image whatever
the batch it lands in, the batch size or the number of devices. Vectorised, no per-sample loop."""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2^32 without int64 overflow: split c into 16-bit halves.
    lo = (x * (c & 0xFFFF)) & _MASK32
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (the "lowbias32" constants) on int64 tensors holding 0 .. 2^32-1."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seeded_uniform(seeds: torch.Tensor, index: torch.Tensor, salt: int = 0) -> torch.Tensor:
    """Uniforms in (0, 1), float64: ``seeds [B]`` with ``index [B, n]`` (or ``[n]``) -> ``[B, n]``."""
    seeds = seeds.long()[:, None]
    index = index.long() if index.dim() == 2 else index.long()[None, :]
    key = hash32(hash32(_mul32(seeds & _MASK32, 2654435761) + salt) ^ (index + 0x9E3779B9))
    key = hash32(key + (seeds & _MASK32))
    return (key.double() + 0.5) / 2.0**32
