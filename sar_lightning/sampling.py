"""Set-by-set sampling (SPEC section 5) with an exact, pre-allocated KV cache.

Step k appends set k-1 (cls at k = 1) to the caches and decodes the queries of set k. Without the
cache every step recomputes the prefix with ``logits_through``; the two give the same tokens.
The number of steps and the order may differ from those the model was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .intervals import validate_intervals
from .orders import make_order
from .rng import seeded_uniform

CFG_SCHEDULES = ("constant", "linear")
INFERENCE_ATTN = ("causal", "full")


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """Temperature, then top-k, then nucleus (top-p) filtering; removed entries become -inf."""
    logits = logits.float() / max(temperature, 1e-8)
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        remove = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(-1, idx, remove), float("-inf"))
    return logits


def sample_tokens(logits, uniforms, temperature=1.0, top_k=None, top_p=None):
    """Inverse-CDF sampling: ``logits [B, n, V]``, ``uniforms [B, n]`` in (0, 1) -> ``LongTensor[B, n]``.

    ``temperature == 0`` or ``top_k == 1`` is greedy.
    """
    if temperature == 0 or top_k == 1:
        return logits.argmax(-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1).double()
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (uniforms * cdf[..., -1]).unsqueeze(-1).contiguous()).squeeze(-1)
    return idx.clamp_max(logits.shape[-1] - 1)


def cfg_weight(scale: float, schedule: str, done_fraction: float) -> float:
    """Guidance weight of one step: constant, or rising linearly from 1 to ``scale`` as cells fill."""
    if schedule == "constant":
        return scale
    if schedule == "linear":
        return 1.0 + (scale - 1.0) * done_fraction
    raise ValueError(f"unknown cfg_schedule {schedule!r}; valid: {', '.join(CFG_SCHEDULES)}")


def _prefill_order(order, known):
    """Move each row's known cells to the front of its order (stable), checking equal counts."""
    counts = known.sum(1)
    if bool((counts != counts[0]).any()):
        raise ValueError(f"prefill: every row needs the same number of known cells, got {counts.tolist()}")
    unknown_in_order = (~known.gather(1, order)).long()
    return order.gather(1, torch.argsort(unknown_in_order, dim=1, stable=True)), int(counts[0])


@torch.no_grad()
def generate(
    model,
    labels,
    *,
    order,
    intervals: Sequence[int],
    cfg_scale: float = 1.0,
    cfg_schedule: str = "constant",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_kv_cache: bool = True,
    prefill=None,
    seeds=None,
    inference_attn: str | None = None,
):
    """Sample ``LongTensor[B, N]`` (raster layout) for class ``labels [B]``.

    order: ``LongTensor[B, N]`` or an order name. intervals: set sizes, sum N (or N - known cells
        with ``prefill``); ``len(intervals)`` is the number of steps.
    prefill: ``(tokens [B, N], known [B, N] bool)``: known cells are kept and form the first set.
    seeds: ``LongTensor[B]``, one per image: random draws (and random orders) keyed by image, so
        results do not depend on batch size; otherwise draws come from ``generator``.
    inference_attn: ``causal`` (set by set, cacheable) or ``full``: every step sees the known cells
        as one set and all unknown cells as another (MAR-style; recomputed, no cache). Defaults to
        ``full`` for models trained with full decoder self-attention, else ``causal``.
    """
    batch, n_tok, device = labels.shape[0], model.num_tokens, labels.device
    if isinstance(order, str):
        order = make_order(order, model.height, model.width, batch, generator=generator, device=device,
                           seeds=seeds)
    if tuple(order.shape) != (batch, n_tok):
        raise ValueError(f"order must have shape ({batch}, {n_tok}), got {tuple(order.shape)}")
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"unknown cfg_schedule {cfg_schedule!r}; valid: {', '.join(CFG_SCHEDULES)}")
    inference_attn = inference_attn or ("full" if model.decoder_attn == "full" else "causal")
    if inference_attn not in INFERENCE_ATTN:
        raise ValueError(f"unknown inference_attn {inference_attn!r}; valid: {', '.join(INFERENCE_ATTN)}")
    if inference_attn == "causal" and model.decoder_attn == "full":
        raise ValueError("a model trained with full decoder self-attention samples with inference_attn='full'")

    tokens = torch.zeros(batch, n_tok, dtype=torch.long, device=device)
    sizes, n_prefill_sets = list(intervals), 0
    if prefill is not None:
        known_tokens, known = prefill
        known = known.to(device=device, dtype=torch.bool)
        order, n_known = _prefill_order(order, known)
        validate_intervals(sizes, n_tok - n_known)
        tokens = torch.where(known, known_tokens.to(device), tokens)
        if n_known:
            sizes, n_prefill_sets = [n_known, *sizes], 1
    else:
        validate_intervals(sizes, n_tok)
    if model.kind == "gpt":
        model.check_request(order, sizes)
        if inference_attn == "full":
            raise ValueError("the GPT baseline has no 'full' inference attention")

    use_cfg = cfg_scale != 1.0
    dup = (lambda t: torch.cat([t, t])) if use_cfg else (lambda t: t)
    cond_labels = torch.cat([labels, torch.full_like(labels, model.null_class)]) if use_cfg else labels
    order2 = dup(order)
    cached = use_kv_cache and inference_attn == "causal"
    dtype = next(model.parameters()).dtype
    cache = model.new_cache(len(cond_labels), sizes, dtype, device) if cached else None

    end = 0
    for k, size in enumerate(sizes):
        start, end = end, end + size
        cells = order[:, start:end]
        if cached:
            prev = order[:, start - sizes[k - 1] : start] if k else None
            prev_tok = dup(tokens.gather(1, prev)) if k else None
            logits = model.step(cache, cond_labels, prev_tok, dup(prev) if k else None, dup(cells))
        else:
            view = sizes[: k + 1] if inference_attn == "causal" else ([start, n_tok - start] if start else [n_tok])
            logits = model.logits_through(dup(tokens), cond_labels, order2, view, len(view))[:, start:end]
        if k < n_prefill_sets:
            continue  # known cells: computed only to fill the caches
        if use_cfg:
            cond, uncond = logits.float().chunk(2)
            logits = uncond + cfg_weight(cfg_scale, cfg_schedule, end / n_tok) * (cond - uncond)
        if seeds is not None:
            u = seeded_uniform(seeds.to(device), cells)
        else:
            where = generator.device if generator is not None else device
            u = torch.rand(cells.shape, generator=generator, device=where, dtype=torch.float64).to(device)
        tokens.scatter_(1, cells, sample_tokens(logits, u, temperature, top_k, top_p))
    return tokens
