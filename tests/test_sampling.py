"""The sampler (docs/method.md section 5): KV cache == recomputation (tokens and step logits),
batch-independent seeds, greedy AR, classifier-free guidance, inpainting, full inference attention,
bf16 and the filters."""

import copy
import functools

import pytest
import torch

from sar_lightning.core.intervals import make_intervals
from sar_lightning.core.orders import make_order
from sar_lightning.core.sampling import cfg_weight, filter_logits, generate, sample_tokens
from sar_lightning.models.registry import build_model

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


def test_full_inference_attention_ignores_the_cache_and_is_refused_causal():
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


# --- Exact checks on a model whose logits are far from uniform ---
# A fresh std-0.02 model's logits are near uniform, so a sampler that pairs a token with the wrong
# position, swaps the guidance halves or views the wrong sets may still sample the same tokens. Scaling
# every parameter by 3 gives logits with std ~1.4 and a top probability ~0.3: such mistakes show.


@functools.cache
def sharp_model(mode="block_causal", name="tiny", side=H):
    torch.manual_seed(0)
    m = build_model(name, class_dropout=0.0, decoder_attn=mode, height=side, width=side).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    return m


def cfg_batch(m, labels=LABELS, seed=0, order="random"):
    """Random full token grids with a different random order per image, laid out as ``generate`` lays out
    a guided batch: the conditional rows, then the same images with the null class.
    Returns ``(tokens [2B, N], labels [2B], order [2B, N])``."""
    g, batch = gen(seed), len(labels)
    tokens = torch.randint(0, V, (batch, m.num_tokens), generator=g)
    order = make_order(order, m.height, m.width, batch, generator=g)
    return tokens.repeat(2, 1), torch.cat([labels, torch.full_like(labels, m.null_class)]), order.repeat(2, 1)


def set_bounds(intervals):
    """``(start, end)`` of each set in generation order."""
    ends = torch.tensor(intervals).cumsum(0).tolist()
    return [(e - n, e) for n, e in zip(intervals, ends)]


@torch.no_grad()
def cached_step_logits(m, tokens, labels, order, intervals, wrong_pairing=False):
    """Each step's logits from ``model.step`` driven as ``generate`` drives it: step k appends set k-1
    (the class token at k = 0) and decodes set k. ``wrong_pairing`` rolls the appended cells by one
    within their set, so each token gets a neighbour's position embedding."""
    cache = m.new_cache(len(labels), intervals, next(m.parameters()).dtype, labels.device)
    out, bounds = [], set_bounds(intervals)
    for k, (start, end) in enumerate(bounds):
        if k == 0:
            out.append(m.step(cache, labels, None, None, order[:, start:end]))
            continue
        prev = order[:, bounds[k - 1][0] : start]
        prev_tokens = tokens.gather(1, prev)
        if wrong_pairing:
            prev = prev.roll(1, dims=1)
        out.append(m.step(cache, labels, prev_tokens, prev, order[:, start:end]))
    return out


@torch.no_grad()
def recomputed_logits(m, tokens, labels, order, intervals):
    """Each step's logits without a cache: sets 1..k recomputed, set k's logits kept."""
    return [m.logits_through(tokens, labels, order, intervals, k + 1)[:, start:end]
            for k, (start, end) in enumerate(set_bounds(intervals))]


RAGGED = {"ragged": [3, 7, 1, 20, 33], "cosine": make_intervals("cosine", N, 8),
          "random": make_intervals("random", N, 6, generator=gen(1))}


@pytest.mark.parametrize("mode", ["block_causal", "own_set"])
@pytest.mark.parametrize("schedule", list(RAGGED))
def test_cached_step_logits_equal_recomputation(schedule, mode):
    m, intervals = sharp_model(mode), RAGGED[schedule]
    tokens, labels, order = cfg_batch(m)
    assert len({tuple(row) for row in order.tolist()}) == len(LABELS)  # a different order per image
    ref = recomputed_logits(m, tokens, labels, order, intervals)
    assert ref[-1].softmax(-1).amax(-1).mean() > 0.2  # far from uniform (1/17)
    got = cached_step_logits(m, tokens, labels, order, intervals)
    for k, (a, b) in enumerate(zip(got, ref)):
        assert a.shape == b.shape == (2 * len(LABELS), intervals[k], V)
        assert torch.allclose(a, b, atol=1e-5), (k, float((a - b).abs().max()))
    # The comparison can fail: a token paired with a neighbour's position moves every later step.
    wrong = cached_step_logits(m, tokens, labels, order, intervals, wrong_pairing=True)
    assert torch.allclose(wrong[0], ref[0], atol=1e-5)  # nothing appended yet
    for k in range(1, len(intervals)):
        assert not torch.allclose(wrong[k], ref[k], atol=1e-5), k


def test_gpt_cached_step_logits_equal_recomputation():
    m, ones = sharp_model(name="gpt-tiny"), [1] * N
    tokens, labels, order = cfg_batch(m, order="raster")
    ref = recomputed_logits(m, tokens, labels, order, ones)
    got = cached_step_logits(m, tokens, labels, order, ones)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, ref))
    wrong_tokens = cached_step_logits(m, tokens.roll(1, dims=1), labels, order, ones)
    assert not all(torch.allclose(a, b, atol=1e-5) for a, b in zip(wrong_tokens, ref))


# --- Classifier-free guidance, by hand on a 4x4 grid (N = 16) ---

SMALL = 4
CFG_LABELS = torch.tensor([0, 3, 7, 9])


@torch.no_grad()
def greedy_by_hand(m, labels, order, intervals, weights=None, null_class=None, swap=False):
    """Greedy sampling from recomputed logits: per step, the argmax of ``uncond + w_k (cond - uncond)``
    (``weights=None``: of the conditional logits alone). ``null_class`` replaces the model's null class
    and ``swap`` exchanges the halves: the two mistakes the guidance tests must catch."""
    null = torch.full_like(labels, m.null_class if null_class is None else null_class)
    tokens = torch.zeros(len(labels), m.num_tokens, dtype=torch.long)
    for k, (start, end) in enumerate(set_bounds(intervals)):
        cond = m.logits_through(tokens, labels, order, intervals, k + 1)[:, start:end]
        if weights is not None:
            uncond = m.logits_through(tokens, null, order, intervals, k + 1)[:, start:end]
            if swap:
                cond, uncond = uncond, cond
            cond = uncond + weights[k] * (cond - uncond)
        tokens.scatter_(1, order[:, start:end], cond.argmax(-1))
    return tokens


CFG_REQUESTS = {"raster-K=N": ("raster", [1] * SMALL**2), "random-K=4": ("random", [1, 3, 5, 7])}


@pytest.mark.parametrize("request_name", list(CFG_REQUESTS))
def test_cfg_greedy_is_the_argmax_of_the_guided_logits(request_name):
    m, (name, intervals) = sharp_model(side=SMALL), CFG_REQUESTS[request_name]
    order, w = make_order(name, SMALL, SMALL, len(CFG_LABELS), generator=gen(4)), 3.0
    expect = greedy_by_hand(m, CFG_LABELS, order, intervals, [w] * len(intervals))
    for greedy in (dict(top_k=1), dict(temperature=0.0)):
        for cache in (True, False):
            got = generate(m, CFG_LABELS, order=order, intervals=intervals, cfg_scale=w, kv_cache=cache, **greedy)
            assert torch.equal(got, expect), (greedy, cache)
    # The reference tells the mistakes apart: swapped halves, a wrong null class, no guidance at all.
    assert not torch.equal(expect, greedy_by_hand(m, CFG_LABELS, order, intervals, [w] * len(intervals), swap=True))
    assert not torch.equal(expect, greedy_by_hand(m, CFG_LABELS, order, intervals, [w] * len(intervals),
                                                  null_class=0))
    assert not torch.equal(expect, greedy_by_hand(m, CFG_LABELS, order, intervals))


def test_cfg_scale_one_is_the_conditional_sample():
    m, intervals = sharp_model(side=SMALL), [1, 3, 5, 7]
    order = make_order("random", SMALL, SMALL, len(CFG_LABELS), generator=gen(4))
    greedy = generate(m, CFG_LABELS, order=order, intervals=intervals, cfg_scale=1.0, top_k=1)
    assert torch.equal(greedy, greedy_by_hand(m, CFG_LABELS, order, intervals))
    # Sampled: a guided batch (doubled, null rows second) with w = 1 + 1e-6 draws what the plain
    # conditional batch draws; unconditional rows in the first half, or shifted draws, would not.
    kw = dict(order="random", intervals=intervals, seeds=torch.arange(4) + 5, temperature=0.8, top_p=0.9)
    plain = generate(m, CFG_LABELS, cfg_scale=1.0, **kw)
    for cache in (True, False):
        assert torch.equal(generate(m, CFG_LABELS, cfg_scale=1.0 + 1e-6, kv_cache=cache, **kw), plain)
    null = generate(m, torch.full_like(CFG_LABELS, m.null_class), cfg_scale=1.0, **kw)
    assert not torch.equal(plain, null)


def test_linear_cfg_schedule_uses_each_steps_weight():
    m, intervals, w = sharp_model(side=SMALL), [1, 3, 5, 7], 5.0
    order = make_order("random", SMALL, SMALL, len(CFG_LABELS), generator=gen(4))
    ends = [end for _, end in set_bounds(intervals)]  # cells filled after each step: 1, 4, 9, 16
    weights = [1.0 + (w - 1.0) * end / SMALL**2 for end in ends]  # 1.25, 2, 3.25, 5
    assert weights == [cfg_weight(w, "linear", end / SMALL**2) for end in ends]
    expect = greedy_by_hand(m, CFG_LABELS, order, intervals, weights)
    for cache in (True, False):
        got = generate(m, CFG_LABELS, order=order, intervals=intervals, cfg_scale=w, cfg_schedule="linear",
                       top_k=1, kv_cache=cache)
        assert torch.equal(got, expect)
    assert not torch.equal(expect, greedy_by_hand(m, CFG_LABELS, order, intervals, [w] * 4))  # not constant
    before = [1.0 + (w - 1.0) * start / SMALL**2 for start, _ in set_bounds(intervals)]  # 1, 1.25, 2, 3.25
    assert not torch.equal(expect, greedy_by_hand(m, CFG_LABELS, order, intervals, before))  # not one step late


# --- What the MAR-style full view computes ---


@pytest.mark.parametrize("mode", ["block_causal", "full"])
@torch.no_grad()
def test_full_inference_attention_logits_are_the_two_set_view(mode):
    """attn="full": step k sees the known cells as one set and every unknown cell as the other, i.e. its
    logits are ``logits_through(tokens, labels, order, [start, N - start], 2)[:, start:end]`` ([N] at the
    first step); this differs from the causal set-by-set view."""
    m, intervals = sharp_model(mode), make_intervals("cosine", N, 6)
    order = make_order("random", H, W, len(LABELS), generator=gen(5))
    tokens = torch.zeros(len(LABELS), N, dtype=torch.long)
    differs_from_causal = []
    for k, (start, end) in enumerate(set_bounds(intervals)):
        view = [start, N - start] if start else [N]
        full = m.logits_through(tokens, LABELS, order, view, len(view))
        causal = m.logits_through(tokens, LABELS, order, intervals, k + 1)[:, start:end]
        differs_from_causal.append(not torch.allclose(full[:, start:end], causal, atol=1e-4))
        # "all unknown cells as one set": a cell's logits do not depend on how the unknown cells are ordered
        unknown = order[:, start:]
        shuffled = torch.cat([order[:, :start], unknown.gather(1, torch.rand(unknown.shape, generator=gen(k))
                                                                    .argsort(1))], 1)
        other = m.logits_through(tokens, LABELS, shuffled, view, len(view))
        raster = lambda lg, o: torch.empty_like(lg).scatter_(1, o[..., None].expand_as(lg), lg)
        cells = unknown[..., None].expand(-1, -1, V)
        assert torch.allclose(raster(full, order).gather(1, cells), raster(other, shuffled).gather(1, cells),
                              atol=1e-5)
        tokens.scatter_(1, order[:, start:end], full[:, start:end].argmax(-1))
    assert any(differs_from_causal), differs_from_causal
    for cache in (True, False):  # the sampler's full view: the same tokens, greedy
        got = generate(m, LABELS, order=order, intervals=intervals, attn="full", top_k=1, kv_cache=cache)
        assert torch.equal(got, tokens)
    if mode == "block_causal":
        assert not torch.equal(tokens, generate(m, LABELS, order=order, intervals=intervals, top_k=1))


# --- Precision ---


@torch.no_grad()
def test_bf16_cache_may_differ_a_little_fp32_not_at_all():
    """bf16 adds the same terms in another order with the cache, so its step logits differ slightly from
    recomputation (and sampled tokens may then diverge); in fp32 cached tokens equal uncached ones."""
    fp32 = sharp_model()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    tokens, labels, order = cfg_batch(fp32)
    intervals = RAGGED["ragged"]
    for a, b in zip(cached_step_logits(bf16, tokens, labels, order, intervals),
                    recomputed_logits(bf16, tokens, labels, order, intervals)):
        assert a.dtype == b.dtype == torch.bfloat16
        assert float((a.float() - b.float()).abs().max()) < 0.25  # 8 significant bits on logits up to ~5
    kw = dict(order="random", intervals=make_intervals("cosine", N, 8), cfg_scale=2.0, seeds=torch.tensor([1, 2, 3]))
    for cache in (True, False):
        out = generate(bf16, LABELS, kv_cache=cache, **kw)
        assert out.shape == (3, N) and bool(((out >= 0) & (out < V)).all())
    assert torch.equal(generate(fp32, LABELS, **kw), generate(fp32, LABELS, kv_cache=False, **kw))


@pytest.mark.slow
def test_compiled_step_gives_the_same_tokens_and_never_recompiles_per_step():
    """``generate(compile=True)`` runs the cached steps through one ``torch.compile(dynamic=True)`` of the model's
    step: the same tokens as eager, a handful of graphs for a whole sampling run (8 for these three, not one per
    step, though the cache grows every step), and nothing new when the same requests come again. A counting backend
    stands in for the compiler (Inductor's C++ build takes minutes on this CPU; ``make bench`` times it)."""
    from sar_lightning.core.sampling import compiled_step

    graphs = []

    def counting(gm, example_inputs):  # called once per compiled graph
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    m = build_model("tiny", class_dropout=0.0).eval()
    step = compiled_step(m, backend=counting)
    requests = [("raster", [1] * N, {}), ("random", make_intervals("uniform", N, 16), dict(cfg_scale=3.0)),
                ("spiral", make_intervals("cosine", N, 8), dict(temperature=0.7))]
    for order, intervals, opts in requests:
        kw = dict(order=order, intervals=intervals, **opts)
        assert torch.equal(generate(m, LABELS, compile=True, generator=gen(2), **kw),
                           generate(m, LABELS, generator=gen(2), **kw))
    first = len(graphs)
    assert 0 < first <= 3 * len(requests), f"{first} graphs for {len(requests)} samplings of 8-64 steps"
    for order, intervals, opts in requests:
        generate(m, LABELS, order=order, intervals=intervals, generator=gen(3), compile=True, **opts)
    assert len(graphs) == first and compiled_step(m) is step
