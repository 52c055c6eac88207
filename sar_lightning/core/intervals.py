"""Output intervals: the sizes ``(n_1, ..., n_K)`` of the sets generated at each step.

Every schedule is a pure function returning a list of positive ints summing to ``num_tokens``. During
training they are drawn once per batch (docs/method.md section 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

ScheduleFn = Callable[..., list[int]]
SCHEDULES: dict[str, ScheduleFn] = {}
# Schedules whose number of sets is decided by the schedule itself (num_steps may be omitted).
SELF_SIZED = {"ar", "mar", "next_scale"}


def register_schedule(name: str) -> Callable[[ScheduleFn], ScheduleFn]:
    def wrap(fn: ScheduleFn) -> ScheduleFn:
        SCHEDULES[name] = fn
        return fn

    return wrap


def validate_intervals(sizes: Sequence[int], num_tokens: int) -> list[int]:
    """Check an explicit list of set sizes: ints, each >= 1, summing to ``num_tokens``."""
    sizes = [int(s) for s in sizes]
    if not sizes:
        raise ValueError("intervals are empty; they need at least one set")
    bad = [s for s in sizes if s < 1]
    if bad:
        raise ValueError(f"every interval must be >= 1, got sizes {bad} in {sizes}")
    if sum(sizes) != num_tokens:
        raise ValueError(f"intervals sum to {sum(sizes)}, not to the number of tokens N={num_tokens}")
    return sizes


def _from_unknown_counts(unknown: list[int], num_tokens: int) -> list[int]:
    """Sizes from ``unknown[t]`` = cells still unknown after step t (t = 0..K), clamped so every
    step emits at least one cell and enough cells remain for the steps left."""
    k = len(unknown) - 1
    u = [num_tokens]
    for t in range(1, k + 1):
        u.append(max(min(unknown[t], u[-1] - 1), k - t))
    return [a - b for a, b in zip(u[:-1], u[1:])]


def _need_k(name: str, num_tokens: int, num_steps: int | None) -> int:
    if num_steps is None:
        raise ValueError(f"schedule {name!r} needs num_steps (K), 1 <= K <= N={num_tokens}")
    if not 1 <= num_steps <= num_tokens:
        raise ValueError(f"schedule {name!r}: num_steps K={num_steps} must satisfy 1 <= K <= N={num_tokens}")
    return num_steps


@register_schedule("ar")
def ar(num_tokens, num_steps=None, *, generator=None):
    if num_steps not in (None, num_tokens):
        raise ValueError(f"schedule 'ar' is one token per step: K must be N={num_tokens}, got {num_steps}")
    return [1] * num_tokens


@register_schedule("uniform")
def uniform(num_tokens, num_steps=None, *, generator=None):
    k = _need_k("uniform", num_tokens, num_steps)
    base, extra = divmod(num_tokens, k)
    return [base] * (k - extra) + [base + 1] * extra  # the larger chunks last


@register_schedule("cosine")
def cosine(num_tokens, num_steps=None, *, generator=None):
    k = _need_k("cosine", num_tokens, num_steps)
    unknown = [math.floor(num_tokens * math.cos(math.pi / 2 * t / k)) for t in range(k + 1)]
    return _from_unknown_counts(unknown, num_tokens)


@register_schedule("linear")
def linear(num_tokens, num_steps=None, *, generator=None):
    k = _need_k("linear", num_tokens, num_steps)
    unknown = [math.floor(num_tokens * (1 - t / k)) for t in range(k + 1)]
    return _from_unknown_counts(unknown, num_tokens)


@register_schedule("random")
def random(num_tokens, num_steps=None, *, generator=None):
    """A uniformly random composition of N into K positive parts: K-1 distinct cuts in 1..N-1."""
    k = _need_k("random", num_tokens, num_steps)
    cuts = (torch.randperm(num_tokens - 1, generator=generator)[: k - 1] + 1).sort().values.tolist()
    edges = [0, *cuts, num_tokens]
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


def mar_mask_ratio(generator=None, mean=1.0, std=0.25, low=0.7, high=1.0) -> float:
    """MAR's mask ratio: normal(mean, std) truncated to [low, high], by inverse-CDF sampling."""
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.double), std)
    lo, hi = normal.cdf(torch.tensor(low, dtype=torch.double)), normal.cdf(torch.tensor(high, dtype=torch.double))
    u = torch.rand((), generator=generator, dtype=torch.double)
    return float(normal.icdf(lo + u * (hi - lo)).clamp(low, high))


@register_schedule("mar")
def mar(num_tokens, num_steps=None, *, generator=None):
    """Two sets: the second (the masked, predicted one) has ceil(N * r) cells, r from MAR's ratio.

    When r rounds to the whole image the first set is empty and a single set of N is returned.
    """
    if num_steps not in (None, 2):
        raise ValueError(f"schedule 'mar' always makes 2 sets, got num_steps={num_steps}")
    second = min(num_tokens, math.ceil(num_tokens * mar_mask_ratio(generator)))
    first = num_tokens - second
    return [first, second] if first > 0 else [num_tokens]


@register_schedule("next_scale")
def next_scale(num_tokens, num_steps=None, *, generator=None):
    sizes, scale = [], 1
    while sum(sizes) + scale < num_tokens:
        sizes.append(scale)
        scale *= 4
    sizes.append(num_tokens - sum(sizes))
    if num_steps not in (None, len(sizes)):
        raise ValueError(f"schedule 'next_scale' on N={num_tokens} makes {len(sizes)} sets, not {num_steps}")
    return sizes


def make_intervals(name: str, num_tokens: int, num_steps: int | None = None, *, generator=None) -> list[int]:
    """Set sizes for ``num_tokens`` cells under schedule ``name`` with ``num_steps`` (K) sets.

    Only ``random`` and ``mar`` consume ``generator``. Impossible requests raise ``ValueError``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown interval schedule {name!r}; valid schedules: {', '.join(sorted(SCHEDULES))}")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    return validate_intervals(SCHEDULES[name](num_tokens, num_steps, generator=generator), num_tokens)
