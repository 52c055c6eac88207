"""Sequence orders: which grid cell is generated t-th.

Every order is a pure, vectorised function returning ``LongTensor[B, N]`` whose row ``b`` lists raster
cell indices (``r * W + c``) in generation order. Tokens are never permuted in storage; the order is
only ever used to gather/scatter.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sar_lightning.core.rng import seeded_uniform

OrderFn = Callable[..., torch.Tensor]
ORDERS: dict[str, OrderFn] = {}


def register_order(name: str) -> Callable[[OrderFn], OrderFn]:
    def wrap(fn: OrderFn) -> OrderFn:
        ORDERS[name] = fn
        return fn

    return wrap


def _grid(height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(height, device=device).repeat_interleave(width)  # (N,)
    cols = torch.arange(width, device=device).repeat(height)  # (N,)
    return rows, cols


def _from_keys(keys: torch.Tensor, batch_size: int) -> torch.Tensor:
    # A deterministic order is the stable argsort of one key per cell, shared by every row.
    return torch.argsort(keys, stable=True).unsqueeze(0).expand(batch_size, -1).contiguous()


@register_order("raster")
def raster(height, width, batch_size, *, generator=None, device=None):
    return torch.arange(height * width, device=device).expand(batch_size, -1).contiguous()


@register_order("snake")
def snake(height, width, batch_size, *, generator=None, device=None):
    rows, cols = _grid(height, width, device)
    cols = torch.where(rows % 2 == 1, width - 1 - cols, cols)  # odd rows run right to left
    return _from_keys(rows * width + cols, batch_size)


@register_order("spiral")
def spiral(height, width, batch_size, *, generator=None, device=None):
    # Centre outwards: ring by ring (Chebyshev distance from the centre), clockwise inside a ring.
    rows, cols = _grid(height, width, device)
    dr = rows.double() - (height - 1) / 2
    dc = cols.double() - (width - 1) / 2
    ring = torch.maximum(dr.abs(), dc.abs())
    angle = torch.atan2(dr, dc) % (2 * math.pi)  # in [0, 2pi)
    return _from_keys(ring * 16 + angle, batch_size)  # 16 > 2pi, so the ring dominates


@register_order("diagonal")
def diagonal(height, width, batch_size, *, generator=None, device=None):
    # Anti-diagonals d = r + c from the top-left corner, alternating direction (JPEG zigzag).
    rows, cols = _grid(height, width, device)
    d = rows + cols
    along = torch.where(d % 2 == 0, height - 1 - rows, rows)
    return _from_keys(d * height + along, batch_size)


@register_order("random")
def random(height, width, batch_size, *, generator=None, device=None, seeds=None):
    """A fresh uniform permutation per row: ``argsort(rand(B, N))``.

    With ``seeds [B]`` the noise is keyed by each image's seed instead of ``generator``, so an image
    gets the same order whatever batch it is in.
    """
    if seeds is not None:
        noise = seeded_uniform(seeds.to(device), torch.arange(height * width, device=device), salt=1)
    else:
        noise = torch.rand(batch_size, height * width, generator=generator, device=device)
    return torch.argsort(noise, dim=1)


@register_order("anneal")
def anneal(height, width, batch_size, *, generator=None, device=None):
    """RAR's annealed order (Yu et al. 2024) at inference: raster. In training each sample is in ``random``
    order with a probability r that falls from 1 to 0 over training (``anneal_rate``, drawn by
    ``module.draw_sets``), in raster order otherwise; the trained model is sampled in raster order."""
    return raster(height, width, batch_size, device=device)


def anneal_rate(progress: float, start: float, end: float) -> float:
    """RAR's r: 1 until ``start`` (a fraction of training), falling linearly to 0 at ``end``, then 0."""
    if progress <= start:
        return 1.0
    if progress >= end:
        return 0.0
    return (end - progress) / (end - start)


@register_order("fixed_random")
def fixed_random(height, width, batch_size, *, generator=None, device=None, seed: int = 0):
    """One permutation drawn from ``seed`` (never from ``generator``): the same for every row and call.

    Pick the seed in the name: ``fixed_random`` is seed 0, ``fixed_random:7`` is seed 7.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(height * width, generator=g).to(device)
    return perm.expand(batch_size, -1).contiguous()


@register_order("next_scale")
def next_scale(height, width, batch_size, *, generator=None, device=None):
    """VAR-like, coarse to fine: scale s = 1, 2, 4, ... (while s is below both sides) takes the cells at the
    centres of an s x s partition, ``floor((2i + 1) G / (2s))`` for i < s in each axis (``G/(2s) + i*G/s``
    when 2s divides G), less those a coarser scale took; every other cell last, in raster order."""
    rows, cols = _grid(height, width, device)
    key = torch.full((height * width,), 1 << 30, dtype=torch.long, device=device)
    key += rows * width + cols  # cells in no scale keep raster order, after every scale
    s, rank = 1, 0
    while s < min(height, width):
        odd = 2 * torch.arange(s, device=device) + 1  # 2i + 1
        on_r = torch.isin(rows, odd * height // (2 * s))
        on_c = torch.isin(cols, odd * width // (2 * s))
        take = on_r & on_c & (key >= 1 << 30)
        key = torch.where(take, rank * height * width + rows * width + cols, key)
        s, rank = s * 2, rank + 1
    return _from_keys(key, batch_size)


@register_order("halton")
def halton(height, width, batch_size, *, generator=None, device=None):
    """Low-discrepancy space filling: cells in first-visit order of the 2-D Halton sequence (bases 2, 3)."""
    n = height * width
    count = 64 * n
    idx = torch.arange(1, count + 1, dtype=torch.long)

    def radical_inverse(base: int) -> torch.Tensor:
        out, f, i = torch.zeros(count, dtype=torch.double), 1.0, idx.clone()
        while bool((i > 0).any()):
            f /= base
            out += f * (i % base).double()
            i //= base
        return out

    r = (radical_inverse(2) * height).long().clamp_max(height - 1)
    c = (radical_inverse(3) * width).long().clamp_max(width - 1)
    cell = r * width + c
    first = torch.full((n,), count, dtype=torch.long)
    first.scatter_reduce_(0, cell, torch.arange(count), reduce="amin")  # first visit of each cell
    key = first * n + torch.arange(n)  # unvisited cells (if any) go last in raster order
    return _from_keys(key.to(device), batch_size)


def parse_order_name(name: str) -> tuple[str, dict]:
    """Split ``"fixed_random:7"`` into ``("fixed_random", {"seed": 7})``; check the base name."""
    base, _, arg = name.partition(":")
    if base not in ORDERS:
        raise ValueError(f"unknown order {name!r}; valid orders: {', '.join(sorted(ORDERS))}")
    if arg:
        if base != "fixed_random" or not arg.isdigit():
            raise ValueError(f"order {name!r}: only fixed_random takes a seed, as 'fixed_random:<int>'")
        return base, {"seed": int(arg)}
    return base, {}


def make_order(
    name: str, height: int, width: int, batch_size: int, *, generator=None, device=None, seeds=None
) -> torch.Tensor:
    """Generation order ``LongTensor[batch_size, height*width]`` of raster cell indices.

    ``name`` is one of ``ORDERS`` (``fixed_random:<seed>`` picks that permutation's seed). Only
    ``random`` consumes ``generator``, or per-image ``seeds [B]`` when given.
    """
    base, kwargs = parse_order_name(name)
    if base == "random" and seeds is not None:
        kwargs["seeds"] = seeds
    if height < 1 or width < 1 or batch_size < 0:
        raise ValueError(f"bad order shape: height={height}, width={width}, batch_size={batch_size}")
    return ORDERS[base](height, width, batch_size, generator=generator, device=device, **kwargs)


def is_permutation(order: torch.Tensor) -> bool:
    """True when every row of ``order[B, N]`` holds each of 0..N-1 exactly once."""
    n = order.shape[1]
    return bool((order.sort(dim=1).values == torch.arange(n, device=order.device)).all())
