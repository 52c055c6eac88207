"""How many training seeds each finding and each grid needs, from the pilot (the results at hand).

:func:`power_rows`: per finding and data set, its primary comparison's pilot (paired seeds, SD of the log
ratio), the effect or margin its definition fixes, and the paired seeds needed for 80% power at the 5% level
(``stats.seeds_needed``; ``verdicts.settle`` already put it on the comparison). :func:`grid_minutes_per_seed`
reads the cost of one more seed of each grid from its sweep manifests, and :func:`seeds_plan` turns both into
a number of seeds per grid within a budget. Plain data in, plain data out: no command line.
"""

from __future__ import annotations

import math

from sar_lightning.analysis.verdicts import Comparison, num, pct
from sar_lightning.runs import sweep_history

MINIMUM_SEEDS = {"digits": 5, "fashion_mnist": 3}  # what the next sweeps run at least
BUDGET_MINUTES = 300.0  # about 5 hours of new sweeps on the reference machine


def target_text(c: Comparison) -> str:
    """What a comparison's seed count is sized for: the effect of a "lower than" claim, else the margin."""
    if c.claim == "less":
        return f"ratio {num(1 - c.effect)} ({c.effect:.0%} lower)"
    if c.claim == "similar":
        return f"bounds ±{pct(c.margin)} (true ratio 1)"
    return f"margin {pct(c.margin)} (true ratio 1)"


def power_rows(results) -> list[dict]:
    """One row per finding and data set with a tested primary comparison (``findings.Result`` list):
    finding, title, data, grid, comparison, claim, metric, pilot_n, sd_log, target, needed, verdict."""
    rows = []
    for r in results:
        c = r.primary
        if c is None or c.test is None:
            continue
        t = c.test
        rows.append(dict(finding=r.finding.number, title=r.finding.title, data=r.data, grid=r.finding.grids[0],
                         comparison=c.name, claim=c.claim, metric=c.metric, pilot_n=t.n, sd_log=t.sd,
                         target=target_text(c), needed=c.main.needed, verdict=r.verdict))
    return rows


def grid_minutes_per_seed(manifests: list[dict]) -> dict[tuple[str, str], float]:
    """(grid, data) -> minutes one more training seed of the grid costs: the wall time of its sweeps that
    trained, per run trained, times the runs a seed adds. Conservative: the sweeps' wall time holds the
    evaluations of runs they did not train, and a run two grids share is counted in each."""
    out = {}
    for m in manifests:
        history = [h for h in sweep_history(m) if (h.get("trained") or 0) > 0 and h.get("seconds")]
        seeds = {r.get("seed") for r in m.get("runs", [])} - {None}
        trained = sum(h["trained"] for h in history)
        if not trained or not seeds:
            continue
        per_seed = len(m.get("runs", [])) / len(seeds)
        out[(m["grid"], m.get("data") or "digits")] = sum(h["seconds"] for h in history) / trained * per_seed / 60
    return out


def _levels(rows: list[dict], key: tuple[str, str], floor: int) -> list[int]:
    """The seed counts worth reaching on one grid: each of its findings' needs above ``floor``, ascending."""
    need = {math.ceil(r["needed"]) for r in rows if (r["grid"], r["data"]) == key and math.isfinite(r["needed"])}
    return sorted(n for n in need if n > floor)


def seeds_plan(rows: list[dict], minutes_per_seed: dict[tuple[str, str], float] | None = None,
               pilot: dict[tuple[str, str], int] | None = None, minimum: dict[str, int] | None = None,
               budget_minutes: float = BUDGET_MINUTES) -> list[dict]:
    """Seeds per grid: at least ``minimum[data]``, raised to the needs of its findings (``power_rows``) while
    the new seeds fit ``budget_minutes``, cheapest raise first; a need that does not fit stays unmet. One dict
    per (grid, data): pilot, needed (the largest need), planned, minutes (of the new seeds), decided (findings
    whose need the planned seeds meet), short (the others, with their need)."""
    minimum = MINIMUM_SEEDS if minimum is None else minimum
    minutes_per_seed, pilot = minutes_per_seed or {}, pilot or {}
    keys = sorted({(r["grid"], r["data"]) for r in rows})
    have = {k: max(pilot.get(k, 0), max((r["pilot_n"] for r in rows if (r["grid"], r["data"]) == k), default=0))
            for k in keys}
    plan = {k: max(have[k], minimum.get(k[1], 0)) for k in keys}
    cost = lambda k, n: max(0, n - have[k]) * minutes_per_seed.get(k, math.nan)  # noqa: E731
    spent = sum(cost(k, plan[k]) for k in keys if math.isfinite(cost(k, plan[k])))
    while True:  # the cheapest next level that still fits
        steps = [(cost(k, lv) - cost(k, plan[k]), k, lv) for k in keys for lv in _levels(rows, k, plan[k])[:1]]
        steps = [s for s in steps if math.isfinite(s[0]) and spent + s[0] <= budget_minutes]
        if not steps:
            break
        extra, k, lv = min(steps)
        plan[k], spent = lv, spent + extra
    out = []
    for k in keys:
        mine = [r for r in rows if (r["grid"], r["data"]) == k]
        needs = [r["needed"] for r in mine if math.isfinite(r["needed"])]
        out.append(dict(grid=k[0], data=k[1], pilot=have[k], needed=max(needs, default=math.nan), planned=plan[k],
                        minutes=cost(k, plan[k]), minutes_per_seed=minutes_per_seed.get(k, math.nan),
                        decided=[r["finding"] for r in mine if r["needed"] <= plan[k]],
                        short=[(r["finding"], r["needed"]) for r in mine if not r["needed"] <= plan[k]]))
    return out
