"""The statistics behind the verdicts: paired comparisons of two recipes on a log scale, one test per kind of
claim, Holm's adjustment, seeds from a power computation, and the metric floor. Pure functions on arrays (no
tables, no files), metric-agnostic: any positive quantity that is lower-is-better (a Fréchet distance, seconds
per image, held-out NLL in bits per token).

Every recipe is trained on the same seeds, so the seed effect is shared: a comparison of A with B uses the
seeds both have and the per-seed log ratio ``d_s = log(A_s / B_s)``. Its mean, back on the ratio scale, is the
geometric mean ratio A/B; its 95% Student-t interval (``scipy.stats.ttest_1samp``) is exponentiated likewise.
Kinds of claim (``KINDS``), each with the null value its p-value tests:

- ``less`` ("A is lower than B"): two-sided paired t test of ratio 1;
- ``not_worse`` ("A is no worse than B", non-inferiority with margin m): two-sided t test of ratio 1 + m, so
  that p < 5% exactly when the 95% interval excludes 1 + m;
- ``similar`` ("A and B are alike", equivalence with margin m): two one-sided tests (TOST,
  ``statsmodels.stats.weightstats.ttost_paired``) with bounds ``±log(1 + m)``; p is the larger one-sided p.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

KINDS = ("less", "not_worse", "similar")
LEVEL = 0.95  # the interval's coverage
ALPHA = 0.05  # the level of every test
POWER = 0.8  # the power a seed count is sized for
MAX_SEEDS = 10_000  # the largest seed count the power search returns


@dataclass(frozen=True)
class PairedTest:
    """One paired comparison of A with B on the log scale (NaN fields where fewer than 2 pairs)."""

    kind: str
    margin: float
    n: int  # paired seeds
    log_mean: float  # mean of log(A_s / B_s)
    sd: float  # their standard deviation (n - 1)
    ratio: float  # exp(log_mean): the geometric mean ratio A/B
    ci_lo: float  # the 95% interval of the ratio
    ci_hi: float
    p: float  # the p-value of the kind's test (see the module's docstring)

    @property
    def bound(self) -> float:
        """The ratio the claim is judged against: 1 for ``less``, 1 + margin otherwise."""
        return 1.0 if self.kind == "less" else 1.0 + self.margin


def _constant(d: np.ndarray, null: float, level: float) -> tuple[float, float, float]:
    """(ci_lo, ci_hi, p) of differences that do not vary: a degenerate interval, p 0 or 1."""
    m = float(d.mean())
    return m, m, 1.0 if math.isclose(m, null, abs_tol=1e-12) else 0.0


def _tost(la: np.ndarray, lb: np.ndarray, margin: float) -> float:
    """The TOST p-value of ``|mean(la - lb)| < log(1 + margin)``."""
    bound = math.log1p(margin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttost_paired(la, lb, -bound, bound)[0])


def paired_test(a, b, kind: str = "less", margin: float = 0.0, level: float = LEVEL) -> PairedTest:
    """The paired log-ratio test of ``kind`` of A against B (arrays over the same seeds, in the same order)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of claim {kind!r} (one of {KINDS})")
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    la, lb = np.log(a[keep]), np.log(b[keep])
    d, n = la - lb, int(keep.sum())
    if n < 2:
        m = float(d.mean()) if n else math.nan
        return PairedTest(kind, margin, n, m, math.nan, math.exp(m), math.nan, math.nan, math.nan)
    null = 0.0 if kind == "less" else math.log1p(margin)
    sd = float(d.std(ddof=1))
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        lo, hi, p = _constant(d, null, level)
        if kind == "similar":
            p = 0.0 if abs(lo) < null else 1.0
    else:
        t = stats.ttest_1samp(d, null)
        ci = t.confidence_interval(level)
        lo, hi, p = float(ci.low), float(ci.high), float(t.pvalue)
        if kind == "similar":
            p = _tost(la, lb, margin)
    m = float(d.mean())
    return PairedTest(kind, margin, n, m, sd, math.exp(m), math.exp(lo), math.exp(hi), p)


def decide(t: PairedTest, p: float | None = None, alpha: float = ALPHA) -> str:
    """The verdict of a test, read at level ``alpha`` from ``p`` (default the test's own; a secondary comparison
    passes its Holm-adjusted p): reproduced | contradicted | inconclusive.

    ``less`` and ``not_worse``: significant means the interval excludes the bound (1, or 1 + margin); the side
    of the estimate says reproduced (below) or contradicted (above). ``similar``: reproduced when TOST rejects;
    contradicted when the interval lies wholly outside the bounds ``1/(1 + m)``..``1 + m``."""
    p = t.p if p is None else p
    if t.n < 2 or not math.isfinite(p):
        return "inconclusive"
    if t.kind == "similar":
        if p < alpha:
            return "reproduced"
        top, bottom = 1.0 + t.margin, 1.0 / (1.0 + t.margin)
        return "contradicted" if t.ci_lo > top or t.ci_hi < bottom else "inconclusive"
    if p < alpha:
        return "reproduced" if t.ratio < t.bound else "contradicted"
    return "inconclusive"


def holm(p) -> np.ndarray:
    """Holm-adjusted p-values (``multipletests(method="holm")``) of the finite ones; NaN stays NaN and does not
    count as a test."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return out


def effect_size(kind: str, effect: float, margin: float) -> float:
    """The log-ratio distance a seed count is sized to detect: ``|log(1 - effect)|`` for ``less`` (an effect of
    0.15 is a ratio of 0.85), ``log(1 + margin)`` for non-inferiority and equivalence (the true ratio taken
    as 1)."""
    return abs(math.log1p(-effect)) if kind == "less" else math.log1p(margin)


def seeds_needed(sd: float, kind: str, effect: float = 0.15, margin: float = 0.0, alpha: float = ALPHA,
                 power: float = POWER) -> float:
    """Paired seeds for ``power`` at level ``alpha`` (``TTestPower().solve_power`` on the paired log ratios, SD
    ``sd``): two-sided for ``less`` and ``not_worse`` (the verdicts read a two-sided 95% interval); for
    ``similar`` each of the two one-sided tests gets power ``1 - (1 - power) / 2`` (true ratio 1). At least 2;
    NaN when ``sd`` is unknown."""
    delta = effect_size(kind, effect, margin)
    if not math.isfinite(sd) or delta <= 0:
        return math.nan
    if sd <= 0:
        return 2
    d = delta / sd
    alt, pw = ("larger", 1 - (1 - power) / 2) if kind == "similar" else ("two-sided", power)
    tp = TTestPower()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = tp.solve_power(effect_size=d, alpha=alpha, power=pw, alternative=alt)
        n = float(np.asarray(n).ravel()[0]) if n is not None else math.nan
        if not math.isfinite(n):  # the root finder fails at the ends: search the integers instead
            grid = np.arange(2, MAX_SEEDS + 1)
            reach = np.nonzero(tp.power(effect_size=d, nobs=grid, alpha=alpha, alternative=alt) >= pw)[0]
            n = float(grid[reach[0]]) if reach.size else math.inf
    return max(2, math.ceil(n - 1e-9)) if math.isfinite(n) else math.inf


def at_floor(a, b, floor: float | None, floor_sd: float | None, z: float = 1.96) -> bool:
    """Do both sides lie within the metric floor's noise (each side's mean no more than ``z`` floor SDs above
    ``floor``, the value a perfect model would score with this many samples)? False without a floor."""
    if floor is None or floor_sd is None or not math.isfinite(floor) or not math.isfinite(floor_sd):
        return False
    top = floor + z * floor_sd
    means = [float(np.nanmean(np.asarray(x, float))) for x in (a, b)]
    return all(math.isfinite(m) and m <= top for m in means)
