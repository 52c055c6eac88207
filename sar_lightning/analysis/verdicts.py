"""The verdict rules of the findings (``VERDICT_RULE``): a :class:`Side` is one row of the aggregated table
(or a mean of rows, or a missing one) with its 95% interval, a :class:`Comparison` one claim about two sides,
:func:`judge` gives a comparison its verdict and :func:`combine` a finding its verdict from its comparisons.
Plain data and rules: no tables, no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

VERDICTS = ("reproduced", "contradicted", "inconclusive", "not run")
NEARLY = 0.2  # "nearly as well" / "close": within 20% of the reference's upper interval end

VERDICT_RULE = f"""\
Every number is a Fréchet distance (lower is better) unless it says seconds per image, with a 95% interval:
across training seeds (Student's t) when a row has 2 or more seeds, else the single run's bootstrap interval
over samples, else none (a point). For a claim **"A is lower than B"**: **reproduced** when the two intervals
do not overlap and A is lower; **contradicted** when they do not overlap and A is higher; **inconclusive** when
they overlap; **not run** when a row is missing (the section names the command that runs it). For a claim
**"A is no worse than B"** (A matches B, A reaches B, A lands below B): reproduced when A's mean lies within B's
interval or below it, contradicted when A's interval lies wholly above B's, inconclusive otherwise (the
intervals overlap but A's mean is above B's interval); "nearly as well" / "close" widens B's upper end by
{NEARLY:.0%}. For **"A and B are alike"** (matters little): reproduced when each mean lies within the other's
interval, contradicted when the intervals do not overlap, inconclusive otherwise. These two rules only fail
to find a difference: they are not equivalence tests. A finding made
of several comparisons is contradicted if any is, reproduced if all that ran are, inconclusive otherwise, and
not run when none ran; "(partial)" marks one whose comparisons did not all run. Where both rows have 2 or
more matching training seeds, the paired difference A - B (the mean of per-seed differences with its 95% t
interval) is shown as supporting information; it does not change the verdict. A verdict resting on fewer
than 3 seeds says so."""



# ---- sides and comparisons ---------------------------------------------------------------------------------------

@dataclass
class Side:
    """One side of a comparison: a row of the aggregated table (or a mean of rows), or a missing one."""

    name: str
    mean: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    n_seeds: int = 0
    interval: str = "none"  # seeds | bootstrap | none | mean of k rows
    row: dict | None = None  # the aggregated row, for the paired difference
    note: str = ""

    @property
    def ran(self) -> bool:
        return self.n_seeds > 0 and math.isfinite(self.mean)

    def text(self, unit: str = "") -> str:
        if not self.ran:
            return "not run"
        span = f" [{num(self.lo)}, {num(self.hi)}]" if self.lo != self.hi else ""
        return f"{num(self.mean)}{unit}{span} ({self.n_seeds} seed{'s' * (self.n_seeds > 1)})"


@dataclass
class Comparison:
    """One claim about two sides (``claim``: less | not_worse | similar), one side (present), or information."""

    name: str
    claim: str
    a: Side
    b: Side | None = None
    tol: float = 0.0
    metric: str = "fd"
    verdict: str = "not run"
    reason: str = ""
    paired: tuple[float, float, float, int] | None = None  # mean, lo, hi, pairs of A - B


def num(v: float) -> str:
    """``v`` to 4 significant digits, "-" when missing."""
    return "-" if v is None or not math.isfinite(v) else f"{v:.4g}"


def seeds_caveat(a: Side, b: Side | None = None) -> str:
    """'(1 seed: bootstrap interval only)' and the like when a verdict rests on fewer than 3 seeds."""
    sides = [s for s in (a, b) if s is not None]
    n, point = min(s.n_seeds for s in sides), any(s.interval == "none" for s in sides)
    if point:
        return f"({n} seed{'s' * (n > 1)}: no interval, point estimate)"
    return "" if n >= 3 else "(2 seeds)" if n == 2 else "(1 seed: bootstrap interval only)"


def judge(claim: str, a: Side, b: Side | None, tol: float = 0.0) -> tuple[str, str]:
    """(verdict, reason) of ``claim`` about A and B under ``VERDICT_RULE``."""
    if claim == "present":
        return ("reproduced", "has results") if a.ran else ("not run", "no results")
    missing = [s.name for s in (a, b) if s is None or not s.ran]
    if missing:
        return "not run", f"no results for {' and '.join(missing)}"
    below, above = a.hi < b.lo, a.lo > b.hi
    caveat = seeds_caveat(a, b)
    if claim == "less":
        verdict, why = (("reproduced", "A's interval lies below B's") if below else
                        ("contradicted", "A's interval lies above B's") if above else
                        ("inconclusive", "the intervals overlap"))
    elif claim == "not_worse":  # A's estimate must lie within (or below) B's interval, widened by tol
        top = b.hi * (1 + tol)
        margin = f" widened by {tol:.0%}" if tol else ""
        verdict, why = (("contradicted", f"A's interval lies above B's{margin}") if a.lo > top else
                        ("reproduced", "A lies below B" if below else f"A's mean lies within B's interval{margin}")
                        if a.mean <= top else
                        ("inconclusive", f"the intervals overlap but A's mean lies above B's interval{margin}"))
    elif claim == "similar":  # each estimate within the other's interval
        inside = b.lo <= a.mean <= b.hi and a.lo <= b.mean <= a.hi
        verdict, why = (("contradicted", f"the intervals do not overlap (A {'lower' if below else 'higher'})")
                        if below or above else ("reproduced", "each mean lies within the other's interval") if inside
                        else ("inconclusive", "the intervals overlap but a mean lies outside the other's interval"))
    else:
        raise ValueError(f"unknown claim {claim!r}")
    return verdict, f"{why} {caveat}".strip()


def combine(comparisons: list[Comparison], strict: bool = False) -> tuple[str, bool]:
    """(verdict, partial) of a finding from its comparisons (information rows do not vote).

    ``strict``: any comparison not run makes the finding not run (finding 1 needs every recipe)."""
    votes = [c.verdict for c in comparisons if c.claim != "info"]
    ran = [v for v in votes if v != "not run"]
    partial = 0 < len(ran) < len(votes)
    if not ran or (strict and partial):
        return "not run", partial
    if "contradicted" in ran:
        return "contradicted", partial
    return ("reproduced" if all(v == "reproduced" for v in ran) else "inconclusive"), partial
