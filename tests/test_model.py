"""The FMT through its masks: perturbation tests (no leak from a set or later ones), layout, loss,
the GPT baseline's limits and the paper's parameter counts."""

import pytest
import torch
import torch.nn.functional as F

from sar_lightning.core.intervals import make_intervals
from sar_lightning.core.orders import make_order
from sar_lightning.core.sampling import Sampler
from sar_lightning.models.base import sar_loss
from sar_lightning.models.registry import MODELS, build_model, model_class

H = W = 8
N, V = H * W, 17
# (order, schedule, K): orders and intervals the perturbation tests run over
CASES = [
    ("random", "random", 5),
    ("random", "uniform", 16),
    ("raster", "ar", None),
    ("spiral", "cosine", 6),
    ("next_scale", "next_scale", None),
    ("fixed_random:3", "random", 3),
    ("random", "mar", None),
    ("random", "uniform", 1),
]


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model("tiny", class_dropout=0.0, **overrides).eval()


def setup(order_name, schedule, k, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    order = make_order(order_name, H, W, batch, generator=g)
    intervals = make_intervals(schedule, N, k, generator=g)
    tokens = torch.randint(0, V, (batch, N), generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    return tokens, labels, order, intervals, g


def set_cells(order, intervals, k):
    """Raster cells of set k (1-based): ``[B, n_k]``."""
    start = sum(intervals[: k - 1])
    return order[:, start : start + intervals[k - 1]]


def change(tokens, cells):
    """Tokens with every cell in ``cells [B, m]`` set to a different value."""
    return tokens.scatter(1, cells, (tokens.gather(1, cells) + 1 + cells % (V - 1)) % V)


def moved(a, b, cells):
    """Per-cell largest logit change at ``cells [B, m]``: ``[B, m]``."""
    idx = cells[..., None].expand(-1, -1, a.shape[-1])
    return (a.gather(1, idx) - b.gather(1, idx)).abs().amax(-1)


@torch.no_grad()
def check_no_leak(model, tokens, labels, order, intervals, sets, g):
    """For each set k in ``sets``: its logits ignore sets >= k and depend on every earlier set."""
    base = model(tokens, labels, order, intervals)
    for k in sets:
        cells = set_cells(order, intervals, k)
        later = order[:, sum(intervals[: k - 1]) :]  # every cell of sets >= k
        out = model(change(tokens, later), labels, order, intervals)
        assert moved(base, out, cells).max() < 1e-5, f"set {k} sees sets >= {k}"
        for j in {1, k - 1} if k > 1 else ():
            one = set_cells(order, intervals, j)
            pick = torch.randint(0, one.shape[1], (one.shape[0], 1), generator=g)
            out = model(change(tokens, one.gather(1, pick)), labels, order, intervals)
            assert moved(base, out, cells).min() > 1e-4, f"set {k} ignores set {j}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[2]}-{c[1]}")
@pytest.mark.parametrize("mode", ["block_causal", "own_set"])
def test_no_set_sees_itself_or_later_sets(case, mode):
    tokens, labels, order, intervals, g = setup(*case)
    check_no_leak(tiny(decoder_attn=mode), tokens, labels, order, intervals, range(1, len(intervals) + 1), g)


@pytest.mark.parametrize("case", [c for c in CASES if c[2] != 1], ids=lambda c: f"{c[0]}-{c[2]}-{c[1]}")
def test_full_decoder_last_set_is_leak_free(case):
    tokens, labels, order, intervals, g = setup(*case, seed=1)
    check_no_leak(tiny(decoder_attn="full"), tokens, labels, order, intervals, [len(intervals)], g)


@torch.no_grad()
def test_full_decoder_leaks_into_earlier_sets():
    # Why the loss under "full" keeps only the last set: set 1's queries attend set 2's queries, which
    # cross-attend set 1's tokens, so set 1's logits see its own tokens.
    tokens, labels, order, intervals, _ = setup("random", "uniform", 4)
    first = set_cells(order, intervals, 1)
    for mode, leaks in (("full", True), ("block_causal", False)):
        model = tiny(decoder_attn=mode)
        base = model(tokens, labels, order, intervals)
        out = model(change(tokens, first), labels, order, intervals)
        assert bool(moved(base, out, first).min() > 1e-4) == leaks


@torch.no_grad()
def test_forward_is_in_raster_layout():
    model = tiny()
    tokens, labels, order, intervals, _ = setup("random", "random", 6, batch=3)
    logits = model(tokens, labels, order, intervals)
    assert logits.shape == (3, N, V)
    gen = model.logits_through(tokens, labels, order, intervals, len(intervals))  # generation order
    assert torch.allclose(logits.gather(1, order[..., None].expand(-1, -1, V)), gen)
    # With one set every query sees only cls and every other query, so a cell's logits cannot depend
    # on the order: logits[b, cell] is the same whatever the order.
    raster = make_order("raster", H, W, 3)
    assert torch.allclose(model(tokens, labels, order, [N]), model(tokens, labels, raster, [N]), atol=1e-5)


@torch.no_grad()
def test_loss_honours_first_set_loss():
    tokens, labels, order, intervals, _ = setup("random", "uniform", 4)
    model = tiny()
    logits = model(tokens, labels, order, intervals)
    keep = torch.ones(N, dtype=torch.bool)
    keep[: intervals[0]] = False  # generation positions of set 1
    kept_cells = order[:, keep]
    ce = lambda cells: F.cross_entropy(logits.gather(1, cells[..., None].expand(-1, -1, V)).flatten(0, 1),
                                       tokens.gather(1, cells).flatten())
    assert torch.allclose(model.loss(tokens, labels, order, intervals)[0], ce(order), atol=1e-6)
    model.config.first_set_loss = False
    assert torch.allclose(model.loss(tokens, labels, order, intervals)[0], ce(kept_cells), atol=1e-6)
    # with the logits fixed, changing set 1's targets leaves the loss alone only without set-1 loss
    gen, targets = logits.gather(1, order[..., None].expand(-1, -1, V)), tokens.gather(1, order)
    other = targets.clone()
    other[:, : intervals[0]] = (other[:, : intervals[0]] + 1) % V
    loss = lambda tg, first: sar_loss(gen, tg, intervals, first_set_loss=first)[0]
    assert torch.equal(loss(targets, False), loss(other, False))
    assert not torch.equal(loss(targets, True), loss(other, True))


@torch.no_grad()
def test_full_decoder_loss_uses_only_the_last_set():
    tokens, labels, order, intervals, _ = setup("random", "uniform", 4)
    model = tiny(decoder_attn="full")
    logits = model(tokens, labels, order, intervals)
    last = set_cells(order, intervals, 4)
    expect = F.cross_entropy(logits.gather(1, last[..., None].expand(-1, -1, V)).flatten(0, 1),
                             tokens.gather(1, last).flatten())
    assert torch.allclose(model.loss(tokens, labels, order, intervals)[0], expect, atol=1e-6)


@torch.no_grad()
def test_gpt_baseline_is_causal_raster_only():
    torch.manual_seed(0)
    gpt = build_model("gpt-tiny", class_dropout=0.0).eval()
    tokens, labels, order, _, _ = setup("raster", "ar", None)
    ones = [1] * N
    base = gpt(tokens, labels, order, ones)
    assert base.shape == (2, N, V)
    t = 20
    out = gpt(change(tokens, order[:, t:]), labels, order, ones)
    assert (base[:, : t + 1] - out[:, : t + 1]).abs().max() < 1e-5  # cell t never sees x_t or later
    assert (base[:, t + 1] - out[:, t + 1]).abs().amax(-1).min() > 1e-4
    with pytest.raises(ValueError, match="raster"):
        gpt(tokens, labels, make_order("random", H, W, 2), ones)
    with pytest.raises(ValueError, match="raster"):
        gpt.loss(tokens, labels, order, make_intervals("uniform", N, 16))
    with pytest.raises(ValueError, match="block_causal"):
        build_model("gpt-tiny", decoder_attn="full")


def test_families_refuse_what_they_cannot_sample_or_train():
    """The rules as the evaluation grid and the config check ask them, of a class (no model built)."""
    fmt, gpt = model_class("tiny"), model_class("gpt-tiny")
    ones = [1] * N
    assert fmt.refusal("random", [16] * 4, "causal") is None
    assert "full" in fmt.refusal("random", [32, 32], "causal", decoder_attn="full")
    assert gpt.refusal("raster", ones, "causal") is None
    assert "raster" in gpt.refusal("random", ones, "causal") and "raster" in gpt.refusal("raster", [16] * 4, "causal")
    assert "full" in gpt.refusal("raster", ones, "full")
    assert gpt.training_refusal("random", "ar") and fmt.training_refusal("random", "random") is None
    model = build_model("gpt-tiny")
    assert Sampler("raster", num_steps=4).refusal(model) and Sampler("raster", num_steps=64).refusal(model) is None
    with pytest.raises(ValueError, match="unknown model 'fmt2'"):
        model_class("fmt2")


@pytest.mark.parametrize("name,paper", [("B", 125e6), ("L", 394e6), ("XL", 893e6)])
def test_paper_sizes_match_the_parameter_counts(name, paper):
    with torch.device("meta"):
        model = build_model(name, vocab_size=16384, height=16, width=16, num_classes=1000)
    assert abs(model.num_params() - paper) / paper < 0.02


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError) as err:
        build_model("huge")
    assert all(name in str(err.value) for name in MODELS)
    with pytest.raises(ValueError) as err:
        build_model("tiny", widht=32)
    assert "widht" in str(err.value) and "width" in str(err.value) and "decoder_attn" in str(err.value)
    with pytest.raises(ValueError, match="own_set"):
        build_model("tiny", decoder_attn="sideways")
    with pytest.raises(ValueError, match="divisible"):
        build_model("tiny", dim=30)
