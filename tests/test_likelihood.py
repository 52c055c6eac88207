"""Held-out NLL of a sampler setting: it is the NLL of the distribution the sampler draws from (the cached
step's logits, set by set), in bits per token, independent of batching, exact for a fixed order and a
Monte Carlo upper bound for a random one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sar_lightning.core.orders import make_order
from sar_lightning.core.sampling import Sampler, image_seeds, inference_intervals
from sar_lightning.evaluation.likelihood import heldout_nll, image_nll, likelihood_defined, order_is_random
from sar_lightning.models.registry import build_model

H = W = 8
N, V = H * W, 17


def _model(mode="block_causal", name="tiny", seed=0):
    torch.manual_seed(seed)
    m = build_model(name, class_dropout=0.0, decoder_attn=mode).eval()
    with torch.no_grad():  # sharper than the initialisation, so that the test can tell wrong logits apart
        m.head.weight.mul_(30)
    return m


def _codes(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (n, N), generator=g), torch.arange(n) % 10


@torch.no_grad()
def _nll_from_cached_steps(m, tokens, labels, order, sizes):
    """Sum over sets of -log p(set's tokens) under the KV-cached step's logits, as ``generate`` drives it."""
    cache, total, end = m.new_cache(len(labels), sizes, torch.float32, None), torch.zeros(len(labels)), 0
    for k, size in enumerate(sizes):
        start, end = end, end + size
        prev = order[:, start - sizes[k - 1]: start] if k else None
        logits = m.step(cache, labels, tokens.gather(1, prev) if k else None, prev, order[:, start:end])
        lp = F.log_softmax(logits.float(), -1).gather(-1, tokens.gather(1, order[:, start:end])[..., None])
        total -= lp[..., 0].sum(1)
    return total


@pytest.mark.parametrize("k", [1, 4, 8, N])
@pytest.mark.parametrize("order", ["raster", "random"])
def test_nll_is_the_sum_of_the_cached_samplers_log_probabilities(k, order):
    m, (codes, labels) = _model(), _codes()
    sizes = inference_intervals("cosine", N, k)
    o = make_order(order, H, W, len(codes), seeds=image_seeds(0, torch.arange(len(codes))))
    torch.testing.assert_close(image_nll(m, codes, labels, o, sizes, "causal").float(),
                               _nll_from_cached_steps(m, codes, labels, o, sizes), rtol=1e-4, atol=1e-3)


def test_full_attention_nll_follows_the_samplers_two_set_view():
    m, (codes, labels) = _model("full"), _codes(6)
    sizes, order = inference_intervals("cosine", N, 4), make_order("raster", H, W, 6)
    expected, end = torch.zeros(6, dtype=torch.float64), 0
    for size in sizes:
        start, end = end, end + size
        view = [start, N - start] if start else [N]
        lg = m.logits_through(codes, labels, order, view, len(view))[:, start:end].float()
        expected += F.cross_entropy(lg.flatten(0, 1), codes[:, start:end].flatten(), reduction="none") \
            .view(6, -1).double().sum(1)
    torch.testing.assert_close(image_nll(m, codes, labels, order, sizes, "full"), expected)


def test_bits_per_token_of_a_uniform_model_is_log2_of_the_vocabulary():
    m, (codes, labels) = _model(), _codes()
    with torch.no_grad():
        m.head.weight.zero_()
    out = heldout_nll(m, codes, labels, Sampler("raster", "cosine", 8))
    assert out["nll_bpt"] == pytest.approx(math.log2(V), rel=1e-6)
    assert (out["nll_se"], out["nll_draws"], out["nll_bound"]) == (0.0, 1, False)


def test_random_order_is_an_upper_bound_with_its_monte_carlo_error_and_batching_changes_nothing():
    m, (codes, labels) = _model(), _codes(20)
    sampler = Sampler("random", "cosine", 4, seed=3)
    a = heldout_nll(m, codes, labels, sampler, batch_size=20, draws=3)
    b = heldout_nll(m, codes, labels, sampler, batch_size=7, draws=3)
    assert a["nll_bound"] and a["nll_draws"] == 3 and a["nll_se"] > 0
    assert a["nll_bpt"] == pytest.approx(b["nll_bpt"], rel=1e-9)
    assert order_is_random("random", H, W) and not order_is_random("raster", H, W)
    assert not order_is_random("fixed_random:3", H, W)


def test_fewer_steps_cost_likelihood_on_a_model_that_learned_dependencies():
    """One token per step conditions each token on all before it; one set of N has no conditioning: for a
    trained-like model whose tokens depend on each other the K = N NLL is the lower one. Here the codes are a
    copy of the class (every token equal), which the raster model predicts from the previous token."""
    m = _model()
    codes = (torch.arange(10) % V)[:, None].expand(10, N).contiguous()
    labels = torch.arange(10)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    m.train()
    for _ in range(60):
        loss, _ = m.loss(codes, torch.full_like(labels, m.null_class), make_order("raster", H, W, 10),
                         inference_intervals("cosine", N, N))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    null = torch.full_like(labels, m.null_class)
    full = heldout_nll(m, codes, null, Sampler("raster", "cosine", N))["nll_bpt"]
    one = heldout_nll(m, codes, null, Sampler("raster", "cosine", 1))["nll_bpt"]
    assert full < one


def test_settings_that_do_not_sample_the_models_conditionals_have_no_likelihood():
    assert likelihood_defined(Sampler("raster"))
    for kw in ({"cfg_scale": 2.0}, {"temperature": 0.5}, {"top_k": 5}, {"top_p": 0.9}):
        assert not likelihood_defined(Sampler("raster", **kw))
    m, (codes, labels) = _model(), _codes(4)
    assert heldout_nll(m, codes, labels, Sampler("raster", cfg_scale=2.0))["nll_bpt"] is None
