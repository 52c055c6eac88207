"""Property tests for the output-interval schedules (docs/method.md section 3)."""

import math

import pytest
import torch

from sar_lightning.core.intervals import SCHEDULES, make_intervals, mar_mask_ratio, validate_intervals

SIZED = ["uniform", "cosine", "linear", "random"]  # schedules that take K
KS = [(64, 1), (64, 2), (64, 7), (64, 16), (64, 63), (256, 16), (256, 64), (10, 3)]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _check(sizes, n):
    assert all(isinstance(s, int) and s >= 1 for s in sizes), sizes
    assert sum(sizes) == n


@pytest.mark.parametrize("name", SIZED)
@pytest.mark.parametrize("n,k", KS)
def test_sized_schedules_sum_to_n(name, n, k):
    sizes = make_intervals(name, n, k, generator=gen())
    _check(sizes, n)
    assert len(sizes) == k


@pytest.mark.parametrize("name", ["ar", "mar", "next_scale"])
@pytest.mark.parametrize("n", [1, 16, 64, 100, 256])
def test_self_sized_schedules_sum_to_n(name, n):
    _check(make_intervals(name, n, generator=gen()), n)


@pytest.mark.parametrize("name", SIZED)
@pytest.mark.parametrize("n", [1, 16, 64])
def test_k_equals_n_is_all_ones(name, n):
    assert make_intervals(name, n, n, generator=gen()) == [1] * n


def test_ar_is_all_ones():
    assert make_intervals("ar", 64) == [1] * 64 == make_intervals("ar", 64, 64)


def test_uniform_chunks_are_nearly_equal():
    sizes = make_intervals("uniform", 70, 16)
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,k", [(64, 4), (64, 16), (100, 7), (256, 16), (256, 64), (1024, 8)])
def test_cosine_puts_small_sets_first(n, k):
    sizes = make_intervals("cosine", n, k)
    assert sizes[0] < sizes[-1]
    assert sum(sizes[: k // 2]) < sum(sizes[-(k // 2) :])
    assert sizes == sorted(sizes) or max(a - b for a, b in zip(sizes, sizes[1:])) <= 1  # non-decreasing-ish


@pytest.mark.parametrize("n,k", [(64, 4), (100, 3), (256, 16), (77, 10)])
def test_linear_sets_are_nearly_equal(n, k):
    sizes = make_intervals("linear", n, k)
    assert max(sizes) - min(sizes) <= 1


def test_cosine_follows_the_unknown_count_formula():
    n, k = 256, 8
    sizes = make_intervals("cosine", n, k)
    unknown = [n - sum(sizes[:t]) for t in range(k + 1)]
    assert unknown == [math.floor(n * math.cos(math.pi / 2 * t / k)) for t in range(k + 1)]


def test_random_is_reproducible_and_covers_compositions():
    draw = lambda seed: make_intervals("random", 64, 8, generator=gen(seed))
    assert draw(3) == draw(3) != draw(4)
    g = gen(0)
    draws = {tuple(make_intervals("random", 6, 3, generator=g)) for _ in range(300)}
    assert len(draws) == math.comb(5, 2)  # every composition of 6 into 3 positive parts shows up
    g = gen(1)
    firsts = {make_intervals("random", 64, 4, generator=g)[0] for _ in range(50)}
    assert len(firsts) > 10


def test_mar_split():
    g = gen(0)
    seen = set()
    for _ in range(200):
        sizes = make_intervals("mar", 64, generator=g)
        assert len(sizes) in (1, 2)
        _check(sizes, 64)
        assert math.ceil(64 * 0.7) <= sizes[-1] <= 64
        seen.add(len(sizes))
    assert seen == {1, 2}
    for seed in range(20):  # the second set is exactly ceil(N r) for the ratio r the generator gives
        r = mar_mask_ratio(gen(seed))
        assert 0.7 <= r <= 1.0
        assert make_intervals("mar", 256, generator=gen(seed))[-1] == min(256, math.ceil(256 * r))
    assert make_intervals("mar", 64, 2, generator=gen(0))
    with pytest.raises(ValueError, match="2 sets"):
        make_intervals("mar", 64, 3)


def test_next_scale():
    assert make_intervals("next_scale", 64) == [1, 4, 16, 43]
    assert make_intervals("next_scale", 256) == [1, 4, 16, 64, 171]
    assert make_intervals("next_scale", 256, 5) == [1, 4, 16, 64, 171]
    with pytest.raises(ValueError, match="next_scale"):
        make_intervals("next_scale", 64, 3)


@pytest.mark.parametrize("name", SIZED)
def test_bad_k_raises(name):
    for k in (0, -1, 65):
        with pytest.raises(ValueError, match="K"):
            make_intervals(name, 64, k)
    with pytest.raises(ValueError, match="num_steps"):
        make_intervals(name, 64)


def test_ar_with_k_not_n_raises():
    with pytest.raises(ValueError, match="K must be N"):
        make_intervals("ar", 64, 16)


def test_unknown_schedule_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        make_intervals("exponential", 64, 4)
    assert all(name in str(err.value) for name in SCHEDULES)


def test_validate_intervals():
    assert validate_intervals([1, 2, 3], 6) == [1, 2, 3]
    with pytest.raises(ValueError, match="sum to 5, not"):
        validate_intervals([1, 2, 2], 6)
    with pytest.raises(ValueError, match=">= 1"):
        validate_intervals([0, 6], 6)
    with pytest.raises(ValueError, match=">= 1"):
        validate_intervals([-1, 7], 6)
    with pytest.raises(ValueError, match="empty"):
        validate_intervals([], 6)
