"""Held-out likelihood of a sampler setting's own distribution, in bits per token.

A sampler setting (order, K, schedule, attention; temperature 1, no guidance, no top-k / top-p) defines a
distribution over images: set k's tokens are drawn independently given the sets before it. Its negative
log-likelihood of a real held-out image is the sum, over sets, of the cross-entropy of the set's tokens under
the logits the sampler would use at that step, teacher-forced on the image's own tokens. For a fixed order and
fixed intervals this is exact and costs one forward pass (``attn='causal'``; MAR's ``full`` attention costs a
pass per step). For a random order the sampler's distribution is a mixture over orders; the mean NLL over
``draws`` sampled orders is an upper bound on the mixture's NLL (Jensen), reported as such with its Monte
Carlo standard error. Unlike FD it has no sampling noise, and it measures what parallel decoding (K < N)
gives up against one token per step.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sar_lightning.core.orders import make_order
from sar_lightning.core.sampling import Sampler, default_attn, image_seeds

NLL_KEYS = ("nll_bpt", "nll_se", "nll_draws", "nll_bound")


def likelihood_defined(sampler: Sampler) -> bool:
    """Whether the setting samples the model's own conditionals (temperature 1, no guidance, no filtering)."""
    return (sampler.cfg_scale == 1.0 and sampler.temperature == 1.0 and sampler.top_k is None
            and sampler.top_p in (None, 1.0))


def order_is_random(name: str, height: int, width: int) -> bool:
    """Whether order ``name`` differs from image to image (drawn per image seed)."""
    two = make_order(name, height, width, 2, seeds=torch.tensor([1, 2]))
    return not torch.equal(two[0], two[1])


def set_logits(model, tokens, labels, order, sizes: Sequence[int], attn: str) -> torch.Tensor:
    """Logits ``[B, N, V]`` in generation order that the sampler uses for each set, teacher-forced on
    ``tokens [B, N]`` (raster layout), ``labels [B]``, ``order [B, N]``, set sizes ``sizes``."""
    if attn == "causal":  # block-causal masks: one pass gives every set's logits given the sets before it
        return model.logits_through(tokens, labels, order, list(sizes), len(sizes))
    n, end, out = model.num_tokens, 0, []
    for size in sizes:  # MAR's view at each step: known cells one set, all unknown cells the other
        start, end = end, end + size
        view = [start, n - start] if start else [n]
        out.append(model.logits_through(tokens, labels, order, view, len(view))[:, start:end])
    return torch.cat(out, 1)


@torch.no_grad()
def image_nll(model, tokens, labels, order, sizes: Sequence[int], attn: str) -> torch.Tensor:
    """Negative log-likelihood in nats of each image ``[B]``, summed over its N tokens."""
    logits = set_logits(model, tokens, labels, order, sizes, attn).float()
    targets = tokens.gather(1, order)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return ce.view_as(targets).double().sum(1)


@torch.no_grad()
def heldout_nll(model, codes: torch.Tensor, labels: torch.Tensor, sampler: Sampler, *, batch_size: int = 500,
                draws: int = 4, device=None) -> dict:
    """Mean NLL in bits per token of held-out ``codes [M, N]`` (class ``labels [M]``) under ``sampler``'s
    distribution: ``nll_bpt``, its Monte Carlo standard error ``nll_se`` over ``nll_draws`` orders (one for a
    fixed order) and ``nll_bound`` (True: an upper bound, the order being random). All None when the setting
    does not sample the model's own conditionals (``likelihood_defined``)."""
    if not likelihood_defined(sampler):
        return dict.fromkeys(NLL_KEYS)
    random = order_is_random(sampler.order, model.height, model.width)
    sizes, attn = sampler.intervals(model.num_tokens), sampler.attn or default_attn(model)
    per_draw = []
    for draw in range(draws if random else 1):
        total = 0.0
        for chunk in torch.arange(len(codes)).split(batch_size):
            seeds = image_seeds(sampler.seed, chunk + draw * len(codes)).to(device)  # other orders per draw
            order = make_order(sampler.order, model.height, model.width, len(chunk), device=device, seeds=seeds)
            total += float(image_nll(model, codes[chunk].to(device), labels[chunk].to(device), order, sizes,
                                     attn).sum())
        per_draw.append(total / (codes.numel() * math.log(2)))
    se = statistics.stdev(per_draw) / math.sqrt(len(per_draw)) if len(per_draw) > 1 else 0.0
    return {"nll_bpt": statistics.fmean(per_draw), "nll_se": se, "nll_draws": len(per_draw), "nll_bound": random}
