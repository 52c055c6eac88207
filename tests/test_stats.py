"""sar_lightning.analysis.stats: the paired log-ratio tests, Holm's adjustment, the power computation and the floor,
on synthetic results with planted effects (seeded, no training)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from sar_lightning.analysis import stats as T
from sar_lightning.analysis import verdicts as V


def results_table(rng, seeds: int, ratio: float, seed_sd: float = 0.4, noise_sd: float = 0.03,
                  base: float = 20.0) -> pd.DataFrame:
    """A per-run results table of two recipes trained on the same seeds: FD = base x seed effect x noise, recipe
    A's FD planted ``ratio`` times B's. The seed effect (log SD ``seed_sd``) is shared by both recipes."""
    seed_effect = rng.normal(0, seed_sd, seeds)
    rows = [dict(recipe=name, train_seed=s, fd=base * factor * math.exp(seed_effect[s] + rng.normal(0, noise_sd)))
            for s in range(seeds) for name, factor in (("A", ratio), ("B", 1.0))]
    return pd.DataFrame(rows)


def paired(table: pd.DataFrame, kind: str = "less", margin: float = 0.0) -> T.PairedTest:
    wide = table.pivot(index="train_seed", columns="recipe", values="fd")
    return T.paired_test(wide["A"].to_numpy(), wide["B"].to_numpy(), kind, margin)


def unpaired_intervals_overlap(table: pd.DataFrame) -> bool:
    """The old rule: two 95% t intervals across seeds, one per recipe, overlap."""
    ends = {}
    for name, g in table.groupby("recipe"):
        x = g["fd"].to_numpy()
        half = sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
        ends[name] = (x.mean() - half, x.mean() + half)
    return ends["A"][0] <= ends["B"][1] and ends["B"][0] <= ends["A"][1]


def test_a_shared_seed_effect_larger_than_a_planted_gap_is_paired_away():
    rng = np.random.default_rng(0)
    table = results_table(rng, seeds=5, ratio=0.85, seed_sd=0.4)
    t = paired(table)
    assert T.decide(t) == "reproduced" and t.n == 5
    assert t.ci_lo < 0.85 < t.ci_hi < 1 and t.ratio == pytest.approx(0.85, rel=0.05)
    assert unpaired_intervals_overlap(table)  # the seed effect swamps the gap for the old, unpaired rule
    assert T.decide(T.paired_test(table.query("recipe == 'B'")["fd"], table.query("recipe == 'A'")["fd"])) == \
        "contradicted"  # the same claim the other way round


def test_lower_than_keeps_its_level_under_no_effect():
    """Under no effect, "lower than" comes out reproduced or contradicted in about 5% of tables."""
    rng = np.random.default_rng(1)
    verdicts = [T.decide(paired(results_table(rng, seeds=3, ratio=1.0, seed_sd=0.5, noise_sd=0.1)))
                for _ in range(400)]
    decided = sum(v != "inconclusive" for v in verdicts) / len(verdicts)
    assert 0.01 <= decided <= 0.08, decided


def test_non_inferiority_rejects_a_recipe_20_percent_worse():
    rng = np.random.default_rng(2)
    for seeds in (3, 5, 10):
        t = paired(results_table(rng, seeds=seeds, ratio=1.2, noise_sd=0.05), "not_worse", 0.10)
        assert T.decide(t) != "reproduced", (seeds, t)
    t = paired(results_table(rng, seeds=10, ratio=1.2, noise_sd=0.03), "not_worse", 0.10)
    assert T.decide(t) == "contradicted" and t.ci_lo > 1.1
    ok = paired(results_table(rng, seeds=5, ratio=1.0, noise_sd=0.02), "not_worse", 0.10)
    assert T.decide(ok) == "reproduced" and ok.ci_hi < 1.1


def test_equivalence_passes_for_identical_recipes_with_enough_seeds():
    rng = np.random.default_rng(3)
    t = paired(results_table(rng, seeds=10, ratio=1.0, noise_sd=0.03), "similar", 0.10)
    assert T.decide(t) == "reproduced" and t.p < 0.05
    far = paired(results_table(rng, seeds=10, ratio=1.5, noise_sd=0.03), "similar", 0.10)
    assert T.decide(far) == "contradicted"
    few = paired(results_table(rng, seeds=2, ratio=1.0, noise_sd=0.2), "similar", 0.10)
    assert T.decide(few) == "inconclusive"


def test_the_p_values_are_scipy_and_statsmodels_ones():
    from statsmodels.stats.weightstats import ttost_paired

    a, b = np.array([4.0, 3.5, 5.0, 4.4]), np.array([5.0, 4.4, 6.1, 5.0])
    d = np.log(a) - np.log(b)
    less = T.paired_test(a, b, "less")
    assert less.p == pytest.approx(sps.ttest_rel(np.log(a), np.log(b)).pvalue)
    ci = sps.ttest_1samp(d, 0).confidence_interval(0.95)
    assert (less.ci_lo, less.ci_hi) == pytest.approx((math.exp(ci.low), math.exp(ci.high)))
    assert T.paired_test(a, b, "not_worse", 0.1).p == pytest.approx(sps.ttest_1samp(d, math.log(1.1)).pvalue)
    tost = ttost_paired(np.log(a), np.log(b), -math.log(1.25), math.log(1.25))[0]
    assert T.paired_test(a, b, "similar", 0.25).p == pytest.approx(tost)


def test_degenerate_inputs():
    one = T.paired_test([3.0], [4.0])
    assert one.n == 1 and math.isnan(one.p) and T.decide(one) == "inconclusive"
    assert T.paired_test([3.0, 0.0, 2.0], [4.0, 1.0, math.nan]).n == 1  # non-positive and missing pairs dropped
    same = T.paired_test([2.0, 4.0, 8.0], [4.0, 8.0, 16.0])  # exactly half on every seed
    assert same.ratio == pytest.approx(0.5) and same.p == 0.0 and T.decide(same) == "reproduced"
    with pytest.raises(ValueError):
        T.paired_test([1.0, 2.0], [1.0, 2.0], "bigger")


def test_holm_matches_statsmodels_and_skips_missing():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001])
    assert T.holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    with_nan = T.holm([0.01, math.nan, 0.03])
    assert math.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx(multipletests([0.01, 0.03], method="holm")[1])
    assert T.holm([]).size == 0


def test_settle_adjusts_only_the_secondary_comparisons():
    rng = np.random.default_rng(4)
    sides = []
    for ratio in (0.8, 0.9, 1.0, 0.95):
        t = results_table(rng, seeds=4, ratio=ratio, noise_sd=0.05)
        w = t.pivot(index="train_seed", columns="recipe", values="fd")
        sides.append(tuple(V.Side(k, float(w[k].mean()), n_seeds=4, values={"fd": w[k].to_dict()}) for k in "AB"))
    comps = [V.run_tests(V.Comparison(f"c{i}", "less", a, b, primary=i == 0)) for i, (a, b) in enumerate(sides)]
    V.settle(comps)
    raw = [c.test.p for c in comps]
    assert comps[0].main.p_adj == raw[0]
    assert [c.main.p_adj for c in comps[1:]] == pytest.approx(multipletests(raw[1:], method="holm")[1])


def test_power_asks_more_seeds_for_a_larger_sd():
    needs = [T.seeds_needed(sd, "less", effect=0.15) for sd in (0.05, 0.1, 0.2, 0.4)]
    assert needs == sorted(needs) and needs[0] < needs[-1] and needs[0] >= 2
    assert T.seeds_needed(0.3, "not_worse", margin=0.1) > T.seeds_needed(0.1, "not_worse", margin=0.1)
    assert T.seeds_needed(0.2, "similar", margin=0.1) > T.seeds_needed(0.2, "not_worse", margin=0.1)
    assert T.seeds_needed(0.001, "less", effect=0.5) == 2  # the solver's edge: the integer search takes over
    assert math.isnan(T.seeds_needed(math.nan, "less"))
    # the count delivers: at that many seeds, a planted 15% gap is found about 80% of the time
    rng = np.random.default_rng(5)
    n = int(T.seeds_needed(0.1, "less", effect=0.15))
    hits = [T.decide(paired(results_table(rng, seeds=n, ratio=0.85, noise_sd=0.1 / math.sqrt(2))))
            == "reproduced" for _ in range(300)]
    assert 0.7 <= np.mean(hits) <= 0.92


def test_at_floor():
    assert T.at_floor([1.1, 1.2], [1.0, 1.3], floor=1.0, floor_sd=0.2)
    assert not T.at_floor([1.1, 1.2], [3.0, 3.3], floor=1.0, floor_sd=0.2)
    assert not T.at_floor([1.1], [1.0], floor=None, floor_sd=None)
