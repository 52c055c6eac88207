"""The sampler (SPEC section 5): KV cache == recomputation, batch-independent seeds, greedy AR,
inpainting, full inference attention and the filters."""

import functools

import pytest
import torch

from sar_lightning.intervals import make_intervals
from sar_lightning.model import build_model
from sar_lightning.orders import make_order
from sar_lightning.sampling import cfg_weight, filter_logits, generate, sample_tokens

H = W = 8
N, V = H * W, 17


@functools.cache
def model(name="tiny", mode="block_causal"):
    torch.manual_seed(0)
    return build_model(name, class_dropout=0.0, decoder_attn=mode).eval()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


LABELS = torch.tensor([0, 3, 7])

# (order, schedule, K, sampler options, decoder mode); K = 64 with "uniform" is K = N, never trained on
CASES = [
    ("raster", "uniform", 4, {}, "block_causal"),
    ("random", "uniform", 16, dict(cfg_scale=3.0), "block_causal"),
    ("spiral", "cosine", 2, dict(cfg_scale=3.0, cfg_schedule="linear", temperature=0.7), "block_causal"),
    ("next_scale", "next_scale", None, dict(top_k=5), "block_causal"),
    ("fixed_random:7", "random", 16, dict(top_p=0.8, cfg_scale=3.0), "block_causal"),
    ("random", "random", 4, dict(temperature=1.3, top_k=8, top_p=0.9), "block_causal"),
    ("random", "uniform", 64, dict(cfg_scale=3.0, cfg_schedule="linear"), "block_causal"),
    ("raster", "uniform", 1, {}, "block_causal"),
    ("next_scale", "cosine", 16, dict(cfg_scale=3.0), "own_set"),
    ("random", "random", 2, dict(top_k=1), "own_set"),
    ("spiral", "uniform", 64, dict(temperature=0.5), "own_set"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[2]}-{c[1]}-{c[4]}")
def test_cached_equals_uncached(case):
    order, schedule, k, opts, mode = case
    intervals = make_intervals(schedule, N, k, generator=gen(1))
    m = model(mode=mode)
    run = lambda cache: generate(m, LABELS, order=order, intervals=intervals, generator=gen(2),
                                 kv_cache=cache, **opts)
    cached, plain = run(True), run(False)
    assert cached.shape == (3, N) and cached.dtype == torch.long
    assert bool((cached >= 0).all() and (cached < V).all())
    assert torch.equal(cached, plain)
    assert len(cached.unique()) > 1


def test_cached_equals_uncached_with_seeds_and_a_random_order():
    seeds = torch.tensor([11, 12, 13])
    kw = dict(order="random", intervals=make_intervals("uniform", N, 8), cfg_scale=2.0, seeds=seeds)
    assert torch.equal(generate(model(), LABELS, **kw), generate(model(), LABELS, kv_cache=False, **kw))


def test_seeds_make_samples_independent_of_the_batch():
    labels, seeds = torch.arange(32) % 10, 1000 + torch.arange(32)
    kw = dict(order="random", intervals=make_intervals("cosine", N, 8), cfg_scale=2.0, top_p=0.95)
    big = generate(model(), labels, seeds=seeds, generator=gen(0), **kw)
    idx = torch.tensor([31, 4, 0, 17, 9, 22, 5, 6])
    small = generate(model(), labels[idx], seeds=seeds[idx], generator=gen(1), **kw)
    assert torch.equal(small, big[idx])
    assert not torch.equal(big[0], big[10])  # same label, different seed


def greedy_loop(m, labels):
    """Raster next-token prediction by hand: one full teacher-forced forward per token."""
    order, ones = make_order("raster", H, W, len(labels)), [1] * N
    tokens = torch.zeros(len(labels), N, dtype=torch.long)
    for t in range(N):
        tokens[:, t] = m(tokens, labels, order, ones)[:, t].argmax(-1)
    return tokens


@pytest.mark.parametrize("name", ["tiny", "gpt-tiny"])
@torch.no_grad()
def test_raster_ar_greedy_matches_a_forward_loop(name):
    m = model(name)
    expect = greedy_loop(m, LABELS)
    for cache in (True, False):
        got = generate(m, LABELS, order="raster", intervals=[1] * N, top_k=1, kv_cache=cache)
        assert torch.equal(got, expect)


def test_gpt_rejects_other_requests():
    with pytest.raises(ValueError, match="raster"):
        generate(model("gpt-tiny"), LABELS, order="random", intervals=[1] * N, generator=gen())
    with pytest.raises(ValueError, match="raster"):
        generate(model("gpt-tiny"), LABELS, order="raster", intervals=make_intervals("uniform", N, 4))


def inpaint_request(n_known=20, seed=0):
    g = gen(seed)
    known = torch.zeros(3, N, dtype=torch.bool)
    known.scatter_(1, torch.rand(3, N, generator=g).argsort(1)[:, :n_known], True)  # other cells per row
    return torch.randint(0, V, (3, N), generator=g), known


@pytest.mark.parametrize("order", ["random", "raster", "spiral"])
def test_inpainting_keeps_the_known_cells(order):
    tokens, known = inpaint_request()
    intervals = make_intervals("uniform", N - 20, 4)
    kw = dict(order=order, intervals=intervals, prefill=(tokens, known), cfg_scale=2.0)
    out = generate(model(), LABELS, generator=gen(3), **kw)
    assert torch.equal(out[known], tokens[known])
    assert torch.equal(out, generate(model(), LABELS, generator=gen(3), kv_cache=False, **kw))
    # the known cells are context: other known tokens change the rest
    other = generate(model(), LABELS, generator=gen(3), **{**kw, "prefill": ((tokens + 1) % V, known)})
    assert not torch.equal(out[~known], other[~known])


def test_outpainting_and_an_empty_prefill():
    tokens = torch.randint(0, V, (3, N), generator=gen(0))
    known = torch.zeros(3, N, dtype=torch.bool)
    known[:, : N // 2] = True  # the top half
    out = generate(model(), LABELS, order="random", intervals=[8] * 4, prefill=(tokens, known),
                   generator=gen())
    assert torch.equal(out[:, : N // 2], tokens[:, : N // 2])
    nothing = torch.zeros(3, N, dtype=torch.bool)  # no known cells = plain generation
    kw = dict(order="random", intervals=[16] * 4)
    assert torch.equal(generate(model(), LABELS, prefill=(tokens, nothing), generator=gen(5), **kw),
                       generate(model(), LABELS, generator=gen(5), **kw))


def test_inpainting_rejects_bad_requests():
    tokens, known = inpaint_request()
    known[1, known[1].nonzero()[0]] = False  # row 1 now has 19 known cells
    with pytest.raises(ValueError, match="same number of known cells"):
        generate(model(), LABELS, order="random", intervals=[44], prefill=(tokens, known))
    tokens, known = inpaint_request()
    with pytest.raises(ValueError, match="sum to 64, not"):
        generate(model(), LABELS, order="random", intervals=[16] * 4, prefill=(tokens, known))


def test_full_inference_attention():
    full = model(mode="full")
    kw = dict(order="random", intervals=make_intervals("uniform", N, 8), cfg_scale=2.0)
    default = generate(full, LABELS, generator=gen(0), **kw)  # kv_cache=True asks for the cache
    assert torch.equal(default, generate(full, LABELS, generator=gen(0), attn="full", **kw))
    assert torch.equal(default, generate(full, LABELS, generator=gen(0), kv_cache=False, **kw))
    with pytest.raises(ValueError, match="full"):
        generate(full, LABELS, attn="causal", **kw)
    # a block-causal model may also sample with the MAR-style view; it differs from the causal one
    causal = model()
    a = generate(causal, LABELS, generator=gen(0), attn="full", **kw)
    b = generate(causal, LABELS, generator=gen(0), attn="full", kv_cache=False, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, generate(causal, LABELS, generator=gen(0), **kw))


def test_bad_requests_raise():
    kw = dict(order="random", intervals=[16] * 4)
    with pytest.raises(ValueError, match="constant"):
        generate(model(), LABELS, cfg_scale=2.0, cfg_schedule="cosine", **kw)
    with pytest.raises(ValueError, match="causal"):
        generate(model(), LABELS, attn="sideways", **kw)
    with pytest.raises(ValueError, match="sum to 60"):
        generate(model(), LABELS, order="random", intervals=[15] * 4)
    with pytest.raises(ValueError, match="shape"):
        generate(model(), LABELS, order=make_order("raster", H, W, 2), intervals=[64])
    with pytest.raises(ValueError, match="valid orders"):
        generate(model(), LABELS, order="zigzag", intervals=[64])


def test_cfg_weight():
    assert cfg_weight(3.0, "constant", 0.1) == cfg_weight(3.0, "constant", 1.0) == 3.0
    assert cfg_weight(3.0, "linear", 0.0) == 1.0 and cfg_weight(3.0, "linear", 1.0) == 3.0
    assert cfg_weight(3.0, "linear", 0.25) == 1.5  # rises with the fraction of cells done
    with pytest.raises(ValueError, match="linear"):
        cfg_weight(3.0, "cosine", 0.5)


def test_filters_and_greedy_sampling():
    logits = torch.tensor([[[0.0, 3.0, 1.0, 2.0]]])  # (B=1, n=1, V=4)
    u = torch.tensor([[0.999]])
    assert sample_tokens(logits, u, top_k=1).item() == 1
    assert sample_tokens(logits, u, temperature=0).item() == 1
    kept = filter_logits(logits, top_k=2).isfinite()[0, 0].tolist()
    assert kept == [False, True, False, True]
    probs = logits.softmax(-1)[0, 0]  # ~[0.03, 0.64, 0.09, 0.24]
    assert filter_logits(logits, top_p=0.5).isfinite()[0, 0].tolist() == [False, True, False, False]
    assert filter_logits(logits, top_p=float(probs[1] + 0.01)).isfinite().sum() == 2
    # inverse CDF: u near 0 picks the first token with mass, u near 1 the last
    assert sample_tokens(logits, torch.tensor([[1e-9]])).item() == 0
    assert sample_tokens(logits, u).item() == 3
    assert sample_tokens(logits, u, top_k=2).item() == 3
    assert sample_tokens(logits, u, top_p=0.5).item() == 1
