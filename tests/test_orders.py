"""Property tests for the sequence orders (docs/method.md section 2)."""

import pytest
import torch
from conftest import REPO

from sar_lightning.core.intervals import make_intervals
from sar_lightning.core.orders import ORDERS, is_permutation, make_order, parse_order_name

SHAPES = [(8, 8), (4, 6), (16, 16), (7, 7)]
NAMES = [*sorted(ORDERS), "fixed_random:7"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_order_is_a_permutation(name, shape):
    h, w = shape
    order = make_order(name, h, w, 3, generator=gen())
    assert order.shape == (3, h * w) and order.dtype == torch.long
    assert is_permutation(order)


@pytest.mark.parametrize("name", NAMES)
def test_orders_are_deterministic_under_a_seeded_generator(name):
    a = make_order(name, 8, 8, 4, generator=gen(3))
    b = make_order(name, 8, 8, 4, generator=gen(3))
    assert torch.equal(a, b)


def test_is_permutation_rejects_repeats():
    order = torch.arange(16).expand(2, -1).clone()
    order[1, 3] = 4
    assert not is_permutation(order)


def test_raster_is_arange():
    assert torch.equal(make_order("raster", 4, 6, 2), torch.arange(24).expand(2, -1))


def test_snake_reverses_odd_rows():
    h, w = 5, 6
    grid = make_order("snake", h, w, 1)[0].view(h, w)
    raster = torch.arange(h * w).view(h, w)
    assert torch.equal(grid[0::2], raster[0::2])
    assert torch.equal(grid[1::2], raster[1::2].flip(1))


def test_diagonal_walks_anti_diagonals_in_turn():
    w = 6
    order = make_order("diagonal", 4, w, 1)[0]
    d = order // w + order % w
    assert bool((d[1:] >= d[:-1]).all())
    assert order[:3].tolist() == [0, 1, w]  # zigzag: (0,0), (0,1), (1,0)


@pytest.mark.parametrize("shape", SHAPES)
def test_spiral_starts_at_the_centre_and_moves_outwards(shape):
    h, w = shape
    order = make_order("spiral", h, w, 1)[0]
    ring = torch.maximum((order // w - (h - 1) / 2).abs(), (order % w - (w - 1) / 2).abs())
    assert float(ring[0]) == float(ring.min()) <= 0.5
    assert bool((ring[1:] >= ring[:-1]).all())
    if h % 2 and w % 2:
        assert int(order[0]) == (h // 2) * w + w // 2  # the exact centre cell


def test_random_differs_across_rows_and_follows_the_generator():
    a = make_order("random", 8, 8, 4, generator=gen(0))
    assert all(not torch.equal(a[0], a[i]) for i in range(1, 4))
    assert torch.equal(a, make_order("random", 8, 8, 4, generator=gen(0)))
    assert not torch.equal(a, make_order("random", 8, 8, 4, generator=gen(1)))


def test_fixed_random_is_one_permutation_ignoring_the_generator():
    a = make_order("fixed_random:7", 8, 8, 4, generator=gen(0))
    b = make_order("fixed_random:7", 8, 8, 2, generator=gen(99))
    c = make_order("fixed_random:7", 8, 8, 2)
    assert torch.equal(a, a[:1].expand_as(a))  # identical rows
    assert torch.equal(a[:2], b) and torch.equal(b, c)  # identical across calls and generators
    assert not torch.equal(a[0], torch.arange(64))
    assert not torch.equal(make_order("fixed_random", 8, 8, 1)[0], a[0])  # seed 0 vs 7
    assert not torch.equal(make_order("fixed_random:8", 8, 8, 1)[0], a[0])


def test_parse_order_name():
    assert parse_order_name("fixed_random:7") == ("fixed_random", {"seed": 7})
    assert parse_order_name("raster") == ("raster", {})
    for bad in ("raster:3", "fixed_random:x"):
        with pytest.raises(ValueError, match="fixed_random"):
            parse_order_name(bad)


def _cells(order, w):
    return [(int(c) // w, int(c) % w) for c in order]


def test_next_scale_8x8():
    order = make_order("next_scale", 8, 8, 2)
    assert torch.equal(order[0], order[1])
    cells = _cells(order[0], 8)
    assert cells[0] == (4, 4)
    assert set(cells[1:5]) == {(r, c) for r in (2, 6) for c in (2, 6)}
    assert set(cells[5:21]) == {(r, c) for r in range(1, 8, 2) for c in range(1, 8, 2)}
    rest = order[0, 21:]
    assert torch.equal(rest, rest.sort().values)  # the rest in raster order


def test_next_scale_16x16_follows_the_spec_rule():
    g = 16
    cells = _cells(make_order("next_scale", g, g, 1)[0], g)
    start, s = 0, 1
    for size in (1, 4, 16, 64):
        axis = [g // (2 * s) + i * g // s for i in range(s)]  # docs/method.md section 2: G/(2s) + i*G/s
        assert set(cells[start : start + size]) == {(r, c) for r in axis for c in axis}
        start, s = start + size, s * 2


def test_next_scale_on_an_odd_grid_goes_coarse_to_fine():
    """7x7 (Fashion-MNIST's VQ codes): the centre, then the 2x2 partition's centres, then the 4x4's, then the
    rest in raster order; the same sizes as the next_scale interval schedule (1, 4, 16, 28)."""
    order = make_order("next_scale", 7, 7, 1)[0]
    assert is_permutation(order[None]) and not torch.equal(order, torch.arange(49))
    cells = _cells(order, 7)
    assert cells[0] == (3, 3)
    assert set(cells[1:5]) == {(r, c) for r in (1, 5) for c in (1, 5)}
    assert set(cells[5:21]) == {(r, c) for r in (0, 2, 4, 6) for c in (0, 2, 4, 6)}
    assert torch.equal(order[21:], order[21:].sort().values)
    assert make_intervals("next_scale", 49) == [1, 4, 16, 28]
    # A 6x10 grid: every cell once, scales 1, 2, 4 below the shorter side.
    wide = make_order("next_scale", 6, 10, 1)
    assert is_permutation(wide) and _cells(wide[0], 10)[0] == (3, 5)


def test_random_with_seeds_is_independent_of_the_batch():
    seeds = torch.arange(100, 132)
    big = make_order("random", 8, 8, 32, seeds=seeds)
    assert is_permutation(big)
    idx = torch.tensor([5, 0, 31, 17, 9, 2, 3, 30])
    small = make_order("random", 8, 8, 8, seeds=seeds[idx], generator=gen(5))
    assert torch.equal(small, big[idx])
    assert not torch.equal(big[0], big[1])


def test_unknown_order_lists_the_valid_names():
    with pytest.raises(ValueError) as err:
        make_order("zigzag", 8, 8, 1)
    assert all(name in str(err.value) for name in ORDERS)


def test_anneal_rate_is_rars_schedule():
    from sar_lightning.core.orders import anneal_rate

    assert [anneal_rate(p, 0.5, 0.75) for p in (0.0, 0.5, 0.625, 0.75, 1.0)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert anneal_rate(0.5, 0.5, 0.5) == 1.0 and anneal_rate(0.51, 0.5, 0.5) == 0.0


def test_anneal_trains_random_then_raster_and_samples_raster():
    from sar_lightning.config import ConfigError, load_config, run_id
    from sar_lightning.training.module import draw_sets

    def cfg(*extra):
        return load_config(None, ["train.schedule=ar", "train.num_steps=null", *extra],
                           defaults=["base", "data/digits"], experiments=REPO / "experiments")

    t = cfg("train.order=anneal").train
    share = {p: (draw_sets(t, 8, 8, 2000, torch.Generator().manual_seed(0), p)[0] != torch.arange(64)).any(1)
             .float().mean().item() for p in (0.1, 0.625, 0.9, None)}
    assert share[0.1] == 1.0 and abs(share[0.625] - 0.5) < 0.05 and share[0.9] == 0.0
    assert share[None] == 0.0  # validation and sampling: raster
    assert torch.equal(make_order("anneal", 8, 8, 3), make_order("raster", 8, 8, 3))
    # the anneal keys belong to the run's identity only for order anneal
    assert run_id(cfg("train.order=raster")) == run_id(cfg("train.order=raster", "train.anneal_start=0.2"))
    assert run_id(cfg("train.order=anneal")) != run_id(cfg("train.order=anneal", "train.anneal_start=0.2"))
    with pytest.raises(ConfigError, match="anneal_start"):
        cfg("train.order=anneal", "train.anneal_start=0.9", "train.anneal_end=0.5")
