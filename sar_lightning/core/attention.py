"""One attention entry point that knows its mask's structure and picks the kernel.

Every FMT mask is a rule over set ids (docs/method.md section 4): query i may see key j iff
``k_ids[j] <= q_ids[i]`` (block-causal), ``<`` (cross), ``==`` (own set) or always (full). Because the
model works in generation order, a block-causal mask over contiguous sets is block lower-triangular,
and with sets of size one it is plain causal. ``attend`` then uses, in order of preference:

- no mask tensor at all: ``is_causal=True`` where the mask is plain causal (the AR end, K = N), none
  where it is full, so PyTorch's flash / memory-efficient kernels apply; on the CPU, a few unmasked
  queries (a cached sampling step) use two plain matrix products instead, which are faster there;
- on CUDA, FlexAttention with a block mask built from the set ids (blocks that are all visible or all
  hidden are skipped or computed densely), compiled once per process;
- the boolean mask, the reference path (CPU, and any other device).

``SetMask.dense()`` is the reference; every path gives the same result within float tolerance
(tests/test_attention.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

RULES = ("le", "lt", "eq", "all")  # k_ids[j] <= / < / == q_ids[i], or every key

_flex = None  # torch.compile(flex_attention), built on first CUDA use
# auto: as described above; dense: always the boolean mask (the reference); flex: FlexAttention for every
# set mask that has no mask-free form, on any device (CPU runs its eager reference implementation).
KERNELS = ("auto", "dense", "flex")
_kernel: ContextVar[str] = ContextVar("attention_kernel", default="auto")


@contextmanager
def attention_kernel(name: str) -> Iterator[None]:
    """Within the block, ``attend`` uses kernel ``name`` (one of ``KERNELS``); the previous one afterwards."""
    if name not in KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; valid: {', '.join(KERNELS)}")
    token = _kernel.set(name)
    try:
        yield
    finally:
        _kernel.reset(token)


def current_kernel() -> str:
    """The kernel ``attend`` uses here: ``auto`` outside any ``attention_kernel`` block."""
    return _kernel.get()


@dataclass(eq=False)
class SetMask:
    """The mask ``[L, S]`` of a rule over set ids ``q_ids [L]`` and ``k_ids [S]``; True = may attend."""

    q_ids: torch.Tensor
    k_ids: torch.Tensor
    rule: str
    _dense: torch.Tensor | None = field(default=None, repr=False)
    _blocks: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown mask rule {self.rule!r}; valid: {', '.join(RULES)}")
        self.causal = self._is_causal()

    def _is_causal(self) -> bool:
        """Whether the mask is exactly lower-triangular with L == S (what ``is_causal=True`` computes)."""
        n = len(self.q_ids)
        if n != len(self.k_ids) or self.rule not in ("le", "lt"):
            return False
        steps = torch.arange(n, device=self.q_ids.device)
        q, k = self.q_ids - self.q_ids[0], self.k_ids - self.k_ids[0]
        shift = (self.k_ids[0] - self.q_ids[0]).item() + (1 if self.rule == "lt" else 0)
        # le: k_j <= q_i <=> j <= i when both count up by one from the same start; lt: keys one behind
        return bool((q == steps).all() and (k == steps).all() and shift == 0)

    def dense(self) -> torch.Tensor:
        """The boolean mask ``[L, S]`` (cached)."""
        if self._dense is None:
            q, k = self.q_ids[:, None], self.k_ids[None, :]
            self._dense = {"le": k <= q, "lt": k < q, "eq": k == q,
                           "all": torch.ones(len(self.q_ids), len(self.k_ids), dtype=torch.bool,
                                             device=self.q_ids.device)}[self.rule]
        return self._dense

    def block_mask(self, device):
        """FlexAttention's block mask of this rule (cached per device)."""
        from torch.nn.attention.flex_attention import create_block_mask  # here: its import costs ~0.3 s (torch.fx)

        key = str(device)
        if key not in self._blocks:
            q_ids, k_ids = self.q_ids.to(device), self.k_ids.to(device)
            rule = {"le": lambda a, b: b <= a, "lt": lambda a, b: b < a, "eq": lambda a, b: b == a,
                    "all": lambda a, b: b == b}[self.rule]

            def mask_mod(b, h, q_idx, kv_idx):
                return rule(q_ids[q_idx], k_ids[kv_idx])

            self._blocks[key] = create_block_mask(mask_mod, None, None, len(q_ids), len(k_ids), device=device)
        return self._blocks[key]


def attend(q, k, v, mask: SetMask | torch.Tensor | None = None, dropout_p: float = 0.0):
    """Scaled dot-product attention ``q [B, H, L, hd]``, ``k, v [B, H, S, hd]`` -> ``[B, H, L, hd]``.

    ``mask``: a ``SetMask`` (the kernel is picked from its structure and ``current_kernel()``), a
    boolean tensor ``[L, S]`` (used as it is) or None (everything visible).
    """
    kernel = _kernel.get()
    if isinstance(mask, SetMask):
        if kernel == "dense":
            mask = mask.dense().to(q.device)
        elif mask.rule == "all":
            mask = None
        elif mask.causal and kernel == "auto":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        elif (kernel == "flex" or q.is_cuda) and dropout_p == 0.0:
            return _flex_attention(q, k, v, mask.block_mask(q.device))
        else:
            mask = mask.dense().to(q.device)
    if mask is None and kernel == "auto" and q.device.type == "cpu" and q.shape[-2] <= DECODE_QUERIES \
            and dropout_p == 0.0:
        return _few_queries(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


DECODE_QUERIES = 16  # at most this many queries per call: a cached sampling step


def _few_queries(q, k, v):
    """Unmasked attention of a few queries (a cached sampling step) as two batched matrix products. On
    the CPU, PyTorch's flash kernel works in blocks of queries and spends most of a one-query call on
    per-block overhead; here the cost is the products themselves (docs/results/speed.md)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.softmax(-1) @ v


def _flex_attention(q, k, v, block_mask):
    global _flex
    from torch.nn.attention.flex_attention import flex_attention  # here: its import costs ~0.3 s (torch.fx)

    if not q.is_cuda:  # the tests' CPU check: the eager reference implementation
        return flex_attention(q, k, v, block_mask=block_mask)
    if _flex is None:
        _flex = torch.compile(flex_attention, dynamic=False)
    return _flex(q, k, v, block_mask=block_mask)
