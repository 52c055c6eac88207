"""The verdict rule of the findings (``VERDICT_RULE``). A :class:`Side` is one recipe at one sampler setting
(a row of the aggregated table, or a per-seed mean of rows) with its per-seed values of each metric; a
:class:`Comparison` is one claim about two sides, judged per metric (a :class:`Judgement`: the paired log-ratio
test of ``sar_lightning.analysis.stats``, its adjusted p-value and its verdict). :func:`run_tests` tests one
comparison, :func:`settle` gives a finding's comparisons their verdicts (Holm's adjustment over the secondary
ones, the metric floor, the power check on the primary one) and :func:`combine` the finding its verdict: the
primary comparison's. Plain data and rules: no tables, no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from sar_lightning.analysis import stats

VERDICTS = ("reproduced", "contradicted", "inconclusive", "undecidable", "at the floor", "not run")
# Margins and effects, fixed from the paper's wording before looking at any result (findings.py uses them):
MATCH = 0.10  # "matches", "as good as", "reaches", "no longer helps", "matters little": the ratio within 10%
NEARLY = 0.25  # "nearly as well", "still works": within 25%
EFFECT = 0.15  # the effect a "lower than" claim is powered for (A 15% lower) where the paper gives no numbers
NLL = "nll_bpt"  # the second metric: held-out NLL in bits per token, judged by the same rule when present
METRIC_NAMES = {"fd": "FD", "sec_per_image": "seconds per image", NLL: "NLL (bits/token)"}
CLAIM_TEXT = {"less": "lower than", "not_worse": "no worse than", "similar": "alike", "present": "has results"}


def num(v: float | None) -> str:
    """``v`` to 4 significant digits, "-" when missing."""
    return "-" if v is None or not math.isfinite(v) else f"{v:.4g}"


def pct(m: float) -> str:
    """A margin as a percentage ("10%")."""
    return f"{m:.0%}" if m else "-"


# ---- sides and comparisons -----------------------------------------------------------------------------------

@dataclass
class Side:
    """One side of a comparison: a recipe at one sampler setting, or a missing one. ``values``: metric ->
    {training seed: value}, what the paired tests read; ``mean``..``hi``: the aggregated row's mean and
    interval, for display."""

    name: str
    mean: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    n_seeds: int = 0
    interval: str = "none"  # seeds | bootstrap | none | mean of k rows
    row: dict | None = None  # the aggregated row
    note: str = ""
    values: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        return self.n_seeds > 0 and math.isfinite(self.mean)

    def text(self, unit: str = "") -> str:
        """"mean (n seeds)", or "not run"."""
        if not self.ran:
            return "not run"
        return f"{num(self.mean)}{unit} ({self.n_seeds} seed{'s' * (self.n_seeds > 1)})"


def side_from_values(name: str, values: dict[str, dict[int, float]], metric: str, note: str = "") -> Side:
    """A side made of per-seed values alone (e.g. a per-seed mean of rows): mean and 95% t interval of
    ``values[metric]`` across seeds."""
    x = np.array([v for v in values.get(metric, {}).values() if math.isfinite(v)], float)
    if not len(x):
        return Side(name, note=note)
    mean, lo, hi = float(x.mean()), float(x.mean()), float(x.mean())
    if len(x) >= 2:
        half = float(sps.t.ppf((1 + stats.LEVEL) / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
        lo, hi = mean - half, mean + half
    return Side(name, mean, lo, hi, len(x), "seeds" if len(x) >= 2 else "none", None, note, values)


@dataclass
class Judgement:
    """One metric's verdict on a comparison."""

    metric: str
    verdict: str = "not run"
    reason: str = ""
    test: stats.PairedTest | None = None
    p_adj: float = math.nan  # Holm-adjusted over the finding's secondary comparisons (= p for the primary)
    needed: float = math.nan  # paired seeds for 80% power at the 5% level (the primary comparison)


@dataclass
class Comparison:
    """One claim (``claim``: less | not_worse | similar | present | info) about side A against side B, with its
    margin, the primary flag and the effect a "lower than" claim is powered for; ``judged``: metric ->
    :class:`Judgement` (``metric`` first, then the NLL when both sides have it)."""

    name: str
    claim: str
    a: Side
    b: Side | None = None
    margin: float = 0.0
    metric: str = "fd"
    k: str = ""  # the step counts of A and B ("64", or "64 vs 16")
    primary: bool = False
    effect: float = EFFECT
    judged: dict[str, Judgement] = field(default_factory=dict)

    @property
    def main(self) -> Judgement:
        return self.judged.get(self.metric) or Judgement(self.metric)

    @property
    def verdict(self) -> str:
        return self.main.verdict

    @property
    def reason(self) -> str:
        return self.main.reason

    @property
    def test(self) -> stats.PairedTest | None:
        return self.main.test

    @property
    def tested(self) -> bool:
        return self.claim in stats.KINDS


def paired_values(a: Side, b: Side, metric: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(seeds, A's values, B's values) over the training seeds both sides have for ``metric``."""
    va, vb = a.values.get(metric, {}), b.values.get(metric, {})
    seeds = sorted(s for s in va if s in vb and math.isfinite(va[s]) and math.isfinite(vb[s]))
    return seeds, np.array([va[s] for s in seeds], float), np.array([vb[s] for s in seeds], float)


def run_tests(c: Comparison) -> Comparison:
    """Test ``c`` on its metric (and on the NLL where both sides have it); verdicts come with :func:`settle`."""
    if c.claim == "info":
        return c
    if c.claim == "present":
        c.judged[c.metric] = (Judgement(c.metric, "reproduced", "has results") if c.a.ran
                              else Judgement(c.metric, "not run", "no results"))
        return c
    missing = [s.name for s in (c.a, c.b) if s is None or not s.ran]
    if missing:
        c.judged[c.metric] = Judgement(c.metric, "not run", f"no results for {' and '.join(missing)}")
        return c
    for metric in dict.fromkeys([c.metric, *([NLL] if c.metric == "fd" else [])]):
        seeds, xa, xb = paired_values(c.a, c.b, metric)
        if metric == c.metric or seeds:
            c.judged[metric] = Judgement(metric, test=stats.paired_test(xa, xb, c.claim, c.margin))
    return c


def info(name: str, text: str, a: Side | None = None) -> Comparison:
    """A row of information (no verdict), e.g. how much of a gap annealing closes."""
    return Comparison(name, "info", a or Side(name), judged={"fd": Judgement("fd", "", text)})


# ---- verdicts ---------------------------------------------------------------------------------------------------

def explain(t: stats.PairedTest, verdict: str, p: float, adjusted: bool) -> str:
    """Why ``t`` got ``verdict``, in a few words."""
    if t.n < 2:
        return f"{t.n} paired seed{'s' * (t.n != 1)}: no test (needs 2 or more)"
    pv = f"{'Holm ' if adjusted else ''}p = {p:.2g}"
    if t.kind == "similar":
        bounds = f"{num(1 / (1 + t.margin))}..{num(1 + t.margin)}"
        said = {"reproduced": f"TOST {pv} < 0.05: within {bounds}", "contradicted": f"interval wholly outside {bounds}"}
        return said.get(verdict, f"TOST {pv}: not shown within {bounds}")
    bound = num(t.bound)
    if verdict == "reproduced":
        return f"interval below {bound} ({pv})" if not adjusted else f"below {bound}, {pv} < 0.05"
    if verdict == "contradicted":
        return f"interval above {bound} ({pv})" if not adjusted else f"above {bound}, {pv} < 0.05"
    return f"interval spans {bound} ({pv})" if not adjusted else f"{pv}: not significant"


def _floor_check(c: Comparison, metric: str, floors: dict | None) -> bool:
    floor, floor_sd = (floors or {}).get(metric, (None, None))
    if floor is None or c.b is None:
        return False
    _, xa, xb = paired_values(c.a, c.b, metric)
    return stats.at_floor(xa, xb, floor, floor_sd)


def _verdict(c: Comparison, j: Judgement, p: float, floors: dict | None) -> None:
    """``j``'s verdict and reason from its test, read at ``p`` (adjusted for a secondary comparison)."""
    t = j.test
    j.p_adj = p
    if _floor_check(c, j.metric, floors):
        floor, floor_sd = floors[j.metric]
        j.verdict, j.reason = "at the floor", f"both sides within the floor's noise ({num(floor)} ± {num(floor_sd)})"
        return
    j.verdict = stats.decide(t, p)
    j.reason = explain(t, j.verdict, p, adjusted=not c.primary)
    if c.primary and t.n >= 2:
        j.needed = stats.seeds_needed(t.sd, t.kind, c.effect, t.margin)
        if j.verdict == "inconclusive" and j.needed > t.n:
            j.verdict = "undecidable"
            j.reason += f"; undecidable with {t.n} seeds; about {num(j.needed)} needed"


def settle(comparisons: list[Comparison], floors: dict[str, tuple[float, float]] | None = None) -> None:
    """Give a finding's comparisons their verdicts, per metric: the primary one read at its own p, the
    secondary ones at Holm-adjusted p-values (one family per metric); "at the floor" where both sides lie
    within ``floors[metric] = (floor, floor_sd)``; an inconclusive primary whose power computation asks for
    more seeds than it has is "undecidable"."""
    metrics = dict.fromkeys(m for c in comparisons for m in c.judged)
    for metric in metrics:
        tested = [c for c in comparisons if c.tested and c.judged.get(metric) and c.judged[metric].test]
        secondary = [c for c in tested if not c.primary]
        adjusted = stats.holm([c.judged[metric].test.p for c in secondary])
        for c in tested:
            j = c.judged[metric]
            _verdict(c, j, j.test.p if c.primary else float(adjusted[secondary.index(c)]), floors)


def primary(comparisons: list[Comparison]) -> Comparison | None:
    """The comparison that carries the finding's verdict (None: a finding of presence checks alone)."""
    return next((c for c in comparisons if c.primary), None)


def combine(comparisons: list[Comparison], strict: bool = False, metric: str | None = None) -> tuple[str, bool]:
    """(verdict, partial) of a finding: its primary comparison's verdict on ``metric`` (default the primary's
    own), never a secondary one's; "partial" when some comparison did not run. A finding without a primary
    comparison (presence checks) is reproduced when all ran; ``strict``: not run unless all ran.
    ``metric`` = NLL gives "not measured" where the NLL was not judged."""
    votes = [c.verdict for c in comparisons if c.claim != "info"]
    ran = [v for v in votes if v != "not run"]
    partial = 0 < len(ran) < len(votes)
    first = primary(comparisons)
    if first is not None:
        j = first.judged.get(metric or first.metric)
        if j is None:
            return ("not measured" if metric == NLL else "not run"), partial
        return j.verdict, partial
    if not ran or (strict and partial):
        return "not run", partial
    return ("reproduced" if all(v == "reproduced" for v in ran) else "inconclusive"), partial


def rule_text(pairs: dict[str, str]) -> str:
    """``VERDICT_RULE`` with the paired seeds of each data set (``pairs``: data -> "3" or "2-3")."""
    seeds = "; ".join(f"{d}: {n}" for d, n in pairs.items()) or "none yet"
    return VERDICT_RULE.format(seeds=seeds)


VERDICT_RULE = f"""\
Every recipe is trained on the same seeds, so a comparison of recipe A with recipe B pairs them by training
seed: per seed the log ratio log(A / B) of the metric (Fréchet distance, lower is better; seconds per image for
timing claims). Its mean, turned back into a ratio, is the **ratio A/B** (below 1: A is lower), shown with its
**95% Student-t interval** over the paired seeds (paired seeds in this report: {{seeds}}). Each kind of claim has
its standard test, with the margin written in the finding's definition before any result was seen:

- **"A is lower than B"**: paired t test of ratio 1. **Reproduced** when the interval lies below 1,
  **contradicted** when it lies above 1, **inconclusive** otherwise.
- **"A is no worse than B"** (matches, reaches, nearly as well): non-inferiority with margin m. Reproduced
  when the interval's upper end lies below 1 + m; contradicted when its lower end lies above 1 + m (A worse
  than the margin allows); inconclusive otherwise. m is {MATCH:.0%} for "matches", "as good as", "reaches",
  "no longer helps", {NEARLY:.0%} where the paper says "nearly" or "still works".
- **"A and B are alike"** (matters little): equivalence by two one-sided t tests (TOST) with bounds
  1/(1 + m)..1 + m, m = {MATCH:.0%}. Reproduced when TOST rejects at 5%; contradicted when the interval lies
  wholly outside the bounds; inconclusive otherwise.

Each finding names **one primary comparison**, which alone carries its verdict, read at its own p-value. Its
other comparisons are secondary: their p-values are Holm-adjusted within the finding and their verdicts read
the adjusted p; a finding is never contradicted because a secondary comparison was. Seeds: from these results
(the pilot) the standard deviation of each primary comparison's log ratio gives the paired seeds needed for 80%
power at the 5% level (two-sided) to detect the effect fixed in the definition ("lower than": a
{EFFECT:.0%} lower A unless the paper's own numbers say otherwise) or to pass the margin (true ratio 1); an
inconclusive primary comparison that has fewer seeds than that is **undecidable with n seeds; about m needed**.
A comparison with fewer than 2 paired seeds has no test (inconclusive). **Not run**: a row is missing (the
section names the command that runs it); "(partial)" marks a finding some of whose comparisons did not run.
**At the floor**: both sides lie within the metric floor's noise (floor + 1.96 SD), where the metric cannot
order them (no floor is set yet). The NLL verdict reads the same rule on held-out NLL in bits per token where
the results have it (`{NLL}`); until then it says "not measured"."""
