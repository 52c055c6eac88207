"""Set ids and the three attention masks of the Fully Masked Transformer (docs/method.md section 4).

Everything is derived from set ids alone. Masks are boolean, True = may attend. Because intervals
are shared by the batch, masks in generation order are ``[L, S]`` and broadcast over batch and heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sar_lightning.core.attention import SetMask

DECODER_MODES = ("block_causal", "own_set", "full")


def set_ids(intervals: Sequence[int], device=None) -> torch.Tensor:
    """Set id (1..K) of each generation position t: ``LongTensor[N]``."""
    sizes = torch.as_tensor(list(intervals), device=device)
    return torch.repeat_interleave(torch.arange(1, len(sizes) + 1, device=device), sizes)


def cell_set_ids(order: torch.Tensor, intervals: Sequence[int]) -> torch.Tensor:
    """Set id of each raster cell: ``order[B, N] -> LongTensor[B, N]`` with ``out[b, order[b, t]] = set(t)``."""
    ids = set_ids(intervals, order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, ids)


def encoder_set_ids(intervals: Sequence[int], device=None) -> torch.Tensor:
    """Set ids of the encoder input ``[cls, x_order[0], ..., x_order[N - n_K - 1]]``: the class token
    has id 0 and the last set is dropped (nothing ever needs it as context). ``LongTensor[1 + N - n_K]``."""
    ids = set_ids(intervals, device)
    return torch.cat([ids.new_zeros(1), ids[: len(ids) - int(intervals[-1])]])


def encoder_mask(e: torch.Tensor) -> torch.Tensor:
    """Block-causal encoder self-attention ``m_e[a, b] = e[b] <= e[a]``: ``[L, L]``."""
    return e[None, :] <= e[:, None]


def decoder_self_mask(s: torch.Tensor, mode: str = "block_causal") -> torch.Tensor:
    """Decoder self-attention among queries with set ids ``s[Q]``: ``[Q, Q]``.

    block_causal: ``s[j] <= s[i]`` (paper figure); own_set: ``s[j] == s[i]``; full: everything.
    """
    if mode == "block_causal":
        return s[None, :] <= s[:, None]
    if mode == "own_set":
        return s[None, :] == s[:, None]
    if mode == "full":
        return torch.ones(len(s), len(s), dtype=torch.bool, device=s.device)
    raise ValueError(f"unknown decoder attention mode {mode!r}; valid modes: {', '.join(DECODER_MODES)}")


def decoder_cross_mask(s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Cross-attention ``m_dc[i, b] = e[b] < s[i]``: a query sees cls and the earlier sets. ``[Q, L]``."""
    return e[None, :] < s[:, None]


def cached_self_mask(mode: str, n_cached: int, n_new: int, device=None) -> torch.Tensor | None:
    """Decoder self-attention of ``n_new`` queries of one set appended after ``n_cached`` cached ones:
    ``[n_new, n_cached + n_new]``, or None where they see everything (block_causal: the new set is the
    latest). ``full`` is never cached (the sampler recomputes it)."""
    if mode == "block_causal":
        return None
    if mode == "own_set":
        total = n_cached + n_new
        return (torch.arange(total, device=device) >= n_cached).expand(n_new, total)
    raise ValueError(f"decoder attention {mode!r} has no cached form; valid: block_causal, own_set")


def build_masks(intervals: Sequence[int], mode: str = "block_causal", device=None):
    """The three masks for one batch, in generation order.

    Returns ``(m_e [L, L], m_ds [N, N], m_dc [N, L])`` with ``L = 1 + N - n_K``.
    """
    e = encoder_set_ids(intervals, device)
    s = set_ids(intervals, device)
    return encoder_mask(e), decoder_self_mask(s, mode), decoder_cross_mask(s, e)


def set_masks(intervals: Sequence[int], mode: str = "block_causal", device=None):
    """The three masks of ``build_masks`` as ``SetMask`` rules, so attention can pick a kernel that needs
    no mask tensor (``attention.attend``); ``.dense()`` of each equals ``build_masks``'s."""
    if mode not in DECODER_MODES:
        raise ValueError(f"unknown decoder attention mode {mode!r}; valid modes: {', '.join(DECODER_MODES)}")
    e, s = encoder_set_ids(intervals, device), set_ids(intervals, device)
    self_rule = {"block_causal": "le", "own_set": "eq", "full": "all"}[mode]
    return SetMask(e, e, "le"), SetMask(s, s, self_rule), SetMask(s, e, "lt")


def loss_positions(intervals: Sequence[int], first_set_loss: bool = True, last_set_only: bool = False,
                   device=None) -> torch.Tensor:
    """Which generation positions carry loss: ``BoolTensor[N]``.

    ``first_set_loss=False`` drops set 1 (MAR's "K=1" setting: set 1 is only context) when K >= 2.
    ``last_set_only`` keeps only set K: under ``full`` decoder self-attention an earlier set's queries
    attend later queries that have cross-attended the earlier set's own tokens, so only set K's loss
    is free of leakage.
    """
    s = set_ids(intervals, device)
    k = len(intervals)
    if last_set_only:
        return s == k
    if not first_set_loss and k >= 2:
        return s >= 2
    return torch.ones_like(s, dtype=torch.bool)
