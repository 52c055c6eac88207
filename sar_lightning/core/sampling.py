"""Set-by-set sampling (docs/method.md section 5) with an exact, pre-allocated KV cache.

Step k appends set k-1 (cls at k = 1) to the caches and decodes the queries of set k. Without the
cache every step recomputes the prefix with ``logits_through``; the two give the same tokens.
The number of steps and the order may differ from those the model was trained with. A model is
sampled through the contract of ``model.SARModel`` (grid, ``refusal``, ``logits_through``,
``new_cache``, ``step``); ``Sampler`` is one sampler setting, shared by evaluate, bench, the sample
command and the training callback.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sar_lightning.core.intervals import make_intervals, validate_intervals
from sar_lightning.core.orders import make_order
from sar_lightning.core.rng import seeded_uniform

CFG_SCHEDULES = ("constant", "linear")  # guidance weight over the steps (cfg_weight)
ATTN_MODES = ("causal", "full")  # attention at inference: set by set (cacheable), or MAR's two-set view
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its compiled cached step


def compiled_step(model, **compile_kwargs):
    """``model.step`` compiled once per model with ``torch.compile(dynamic=True)``: the cache length and the
    set sizes are symbolic, so a whole sampling run, and later runs at any K, reuse a handful of graphs
    (the first step, the second, then one for every later step; tests/test_sampling.py counts them). It
    computes what ``model.step`` computes; what it saves is the per-operation overhead of a cached step."""
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(model.step, dynamic=True, **compile_kwargs)
    return _COMPILED[model]


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


def inference_attn(decoder_attn: str, asked: str | None = None) -> str:
    """The attention at inference (one of ``ATTN_MODES``) of a model trained with ``decoder_attn``: ``full``
    after full decoder self-attention (such a model cannot sample set by set), else ``asked`` (default causal)."""
    return "full" if decoder_attn == "full" else asked or "causal"


def default_attn(model) -> str:
    """``model``'s attention at inference when none is asked for (``inference_attn``)."""
    return inference_attn(model.decoder_attn)


def check_request(model, labels, order, intervals, *, cfg_schedule="constant", prefill=None, attn=None,
                  generator=None, seeds=None):
    """Validate a sampling request; return ``(order [B, N], sizes, n_prefill_sets, tokens [B, N], attn)``.

    ``sizes`` are the sets of the loop, the known cells first (as one set) under ``prefill``.
    """
    batch, n_tok, device = labels.shape[0], model.num_tokens, labels.device
    if isinstance(order, str):
        order = make_order(order, model.height, model.width, batch, generator=generator, device=device,
                           seeds=seeds)
    if tuple(order.shape) != (batch, n_tok):
        raise ValueError(f"order must have shape ({batch}, {n_tok}), got {tuple(order.shape)}")
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"unknown cfg_schedule {cfg_schedule!r}; valid: {', '.join(CFG_SCHEDULES)}")
    attn = attn or default_attn(model)
    tokens, sizes, n_prefill_sets = torch.zeros(batch, n_tok, dtype=torch.long, device=device), list(intervals), 0
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
    model.check_request(order, sizes, attn)
    return order, sizes, n_prefill_sets, tokens, attn


def _uniforms(cells, seeds, generator, device):
    """One uniform per cell to sample: keyed by image seed, or drawn from ``generator``."""
    if seeds is not None:
        return seeded_uniform(seeds.to(device), cells)
    where = generator.device if generator is not None else device
    return torch.rand(cells.shape, generator=generator, device=where, dtype=torch.float64).to(device)


class _SetLogits:
    """The logits of each set of one sampling run: from the KV cache (one ``model.step`` per set) or recomputed
    with ``logits_through``. Under guidance every row runs twice, conditional then unconditional: ``[2B, n, V]``."""

    def __init__(self, model, labels, order, sizes, attn: str, guided: bool, kv_cache: bool, compile: bool):
        self.model, self.order, self.sizes, self.attn = model, order, sizes, attn
        self.dup = (lambda t: torch.cat([t, t])) if guided else (lambda t: t)  # conditional rows, then unconditional
        self.labels = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels
        self.cached = kv_cache and attn == "causal"
        dtype = next(model.parameters()).dtype
        self.cache = model.new_cache(len(self.labels), sizes, dtype, labels.device) if self.cached else None
        self.step = compiled_step(model) if compile and self.cached else model.step
        self.order2 = self.dup(order)

    def __call__(self, k: int, start: int, end: int, tokens):
        """Logits of set ``k`` (positions ``start:end`` of the order) given the sampled ``tokens [B, N]``."""
        if self.cached:
            prev = self.order[:, start - self.sizes[k - 1] : start] if k else None
            prev_tok = self.dup(tokens.gather(1, prev)) if k else None
            cells = self.dup(self.order[:, start:end])
            return self.step(self.cache, self.labels, prev_tok, self.dup(prev) if k else None, cells)
        n_tok = self.model.num_tokens
        view = self.sizes[: k + 1] if self.attn == "causal" else ([start, n_tok - start] if start else [n_tok])
        return self.model.logits_through(self.dup(tokens), self.labels, self.order2, view, len(view))[:, start:end]


@torch.no_grad()
def generate(model, labels, *, order, intervals: Sequence[int], cfg_scale: float = 1.0, cfg_schedule: str = "constant",
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, kv_cache: bool = True, prefill=None, seeds=None,
             attn: str | None = None, on_step=None, compile: bool = False):
    """Sample ``LongTensor[B, N]`` (raster layout) for class ``labels [B]``.

    order: ``LongTensor[B, N]`` or an order name. intervals: set sizes, sum N (or N - known cells
        with ``prefill``); ``K = len(intervals)`` is the number of steps.
    prefill: ``(tokens [B, N], known [B, N] bool)``: known cells are kept and form the first set.
    seeds: ``LongTensor[B]``, one per image: random draws (and random orders) keyed by image, so
        results do not depend on batch size; otherwise draws come from ``generator``.
    attn: attention at inference, ``causal`` (set by set, cacheable) or ``full``: every step sees the
        known cells as one set and all unknown cells as another (MAR-style; recomputed, no cache).
        Defaults to ``full`` for models trained with full decoder self-attention, else ``causal``.
    on_step: called as ``on_step(tokens, filled)`` after each sampled set (``filled [B, N]`` bool).
    compile: run the cached steps through ``compiled_step`` (the same tokens; the first call compiles,
        which on a CPU takes a minute or two, so it pays for long samplings, e.g. 50k images for an FID).
    """
    order, sizes, n_prefill_sets, tokens, attn = check_request(
        model, labels, order, intervals, cfg_schedule=cfg_schedule, prefill=prefill, attn=attn,
        generator=generator, seeds=seeds)
    use_cfg = cfg_scale != 1.0
    set_logits = _SetLogits(model, labels, order, sizes, attn, use_cfg, kv_cache, compile)
    filled, end = torch.zeros_like(tokens, dtype=torch.bool), 0
    for k, size in enumerate(sizes):
        start, end = end, end + size
        cells = order[:, start:end]
        logits = set_logits(k, start, end, tokens)
        if k < n_prefill_sets:
            filled.scatter_(1, cells, True)
            continue  # known cells: computed only to fill the caches
        if use_cfg:
            cond, uncond = logits.float().chunk(2)
            logits = uncond + cfg_weight(cfg_scale, cfg_schedule, end / model.num_tokens) * (cond - uncond)
        u = _uniforms(cells, seeds, generator, labels.device)
        tokens.scatter_(1, cells, sample_tokens(logits, u, temperature, top_k, top_p))
        if on_step is not None:
            on_step(tokens, filled.scatter_(1, cells, True).clone())
    return tokens


def inference_intervals(schedule: str, num_tokens: int, num_steps: int) -> list[int]:
    """Set sizes for sampling in ``num_steps`` steps. K = N is one token per step whatever the schedule;
    random schedules are drawn from a seed fixed by K, so every image, batch and rank shares them."""
    if num_steps == num_tokens:
        return make_intervals("ar", num_tokens)
    return make_intervals(schedule, num_tokens, num_steps, generator=torch.Generator().manual_seed(num_steps))


def image_seeds(seed: int, index: torch.Tensor) -> torch.Tensor:
    """The sampling seed of each image index: results depend on (seed, index), never on batching."""
    return index.long() + seed * 1_000_003


@dataclass
class Sampler:
    """One sampler setting: what evaluate, bench, the sample command and the training grids sample with.

    Image ``i`` gets label ``i % num_classes`` and its own seed, so a setting's samples do not depend
    on batch size or device count.
    """

    order: str
    schedule: str = "cosine"
    num_steps: int = 1
    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    kv_cache: bool = True
    attn: str | None = None
    seed: int = 0
    compile: bool = False  # speed only, not part of the setting: compiled and eager give the same tokens

    @classmethod
    def from_row(cls, row: dict) -> Sampler:
        """The sampler of a result row (``infer_order``, ``infer_schedule``, ``num_steps``, ...)."""
        keys = ("num_steps", "cfg_scale", "cfg_schedule", "temperature", "top_k", "top_p", "kv_cache", "attn",
                "seed")
        return cls(order=row["infer_order"], schedule=row["infer_schedule"], **{k: row[k] for k in keys})

    def intervals(self, num_tokens: int) -> list[int]:
        return inference_intervals(self.schedule, num_tokens, self.num_steps)

    def refusal(self, model) -> str | None:
        """Why ``model`` cannot sample with this setting, or None."""
        return model.refusal(self.order, self.intervals(model.num_tokens), self.attn or default_attn(model),
                             model.decoder_attn)

    def request(self, model, index: torch.Tensor, num_classes: int, device=None) -> tuple[torch.Tensor, dict]:
        """``(labels [B], generate keyword arguments)`` for image indices ``index [B]``."""
        labels, seeds = (index % num_classes).to(device), image_seeds(self.seed, index).to(device)
        order = make_order(self.order, model.height, model.width, len(index), device=device, seeds=seeds)
        return labels, dict(order=order, intervals=self.intervals(model.num_tokens), cfg_scale=self.cfg_scale,
                            cfg_schedule=self.cfg_schedule, temperature=self.temperature, top_k=self.top_k,
                            top_p=self.top_p, kv_cache=self.kv_cache, seeds=seeds, attn=self.attn,
                            compile=self.compile)

    def sample(self, model, index: torch.Tensor, num_classes: int, device=None, **extra) -> torch.Tensor:
        """Codes ``LongTensor[B, N]`` of images ``index``; ``extra`` goes to ``generate`` (prefill, on_step)."""
        labels, kwargs = self.request(model, index, num_classes, device)
        return generate(model, labels, **kwargs, **extra)
