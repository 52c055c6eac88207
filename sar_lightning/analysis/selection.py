"""Picking the rows a finding compares: from the aggregated table (``table.aggregate(table.prepare(...))``: one
row per recipe and sampler setting, with a 95% interval) and the per-run table (``table.prepare`` output, for paired
differences and timing intervals).

A :class:`Sel` names a trained model by its training columns (``train_order``, ``train_schedule``, the K of the run
id, ``decoder_attn``, ``first_set_loss``, a ``gpt-*`` model) within its grid, never by free-text labels; a
:class:`Ctx` holds one data set (feature extractor), each judged on its own (:func:`contexts`). :func:`pick` turns a
model and a sampler setting
into a :class:`~sar_lightning.analysis.verdicts.Side` (with each training seed's value of the metric, and of the
held-out NLL where the table has it), :func:`compare` states a claim about two sides and runs its paired test
(``verdicts.settle`` gives the verdicts, a finding's comparisons together).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sar_lightning.analysis.table import POINT, seed_interval
from sar_lightning.analysis.verdicts import EFFECT, NLL, Comparison, Side, run_tests, side_from_values
from sar_lightning.core.sampling import inference_attn

# ---- picking rows ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sel:
    """A trained model of a grid, by its training columns (None: any value)."""

    grid: str
    name: str
    train_order: str
    train_schedule: str
    train_k: str | None = None  # the K of the run id: "16", "2_32" for a range
    gpt: bool = False
    decoder_attn: str = "block_causal"
    first_set_loss: bool | None = None


@dataclass
class Ctx:
    """One data set's aggregated rows, its per-run rows (None: no paired differences, no timing intervals)
    and N."""

    pts: pd.DataFrame
    runs: pd.DataFrame | None
    data: str
    n: int | None
    cache: dict = field(default_factory=dict, repr=False)

    def model(self, sel: Sel) -> list[dict]:
        """``model_rows`` of ``sel`` as records, computed once (a pick then filters a few dicts)."""
        if sel not in self.cache:
            self.cache[sel] = model_rows(self.pts, sel).to_dict("records")
        return self.cache[sel]


def train_k(d: pd.DataFrame) -> pd.Series:
    """The training K of each row as the run id writes it (``random-2_32-random_...`` -> "2_32")."""
    from_recipe = d["recipe"].astype(str).str.split("-").str[1] if "recipe" in d else pd.Series(None, index=d.index)
    from_recipe = from_recipe.where(from_recipe.fillna("").str.fullmatch(r"\d+(_\d+)?"), None)
    steps = d["train_num_steps"] if "train_num_steps" in d else pd.Series(np.nan, index=d.index)
    fallback = steps.map(lambda v: None if pd.isna(v) else str(int(v)))
    return from_recipe.fillna(fallback)


def model_rows(d: pd.DataFrame, sel: Sel) -> pd.DataFrame:
    """The rows of ``sel``'s model: in its grid, its training columns, CFG scale 1."""
    need = {"grids", "train_order", "train_schedule", "num_steps"}
    if d.empty or not need <= set(d.columns):
        return d.iloc[0:0]
    keep = d["grids"].fillna("").astype(str).str.split(",").apply(lambda g: sel.grid in g)
    keep &= d["train_order"].eq(sel.train_order) & d["train_schedule"].eq(sel.train_schedule)
    gpt = d["model"].fillna("").astype(str).str.startswith("gpt") if "model" in d else False
    keep &= gpt if sel.gpt else ~gpt
    if sel.train_k is not None:
        keep &= train_k(d).eq(sel.train_k)
    if "decoder_attn" in d:
        keep &= d["decoder_attn"].fillna("block_causal").eq(sel.decoder_attn)
    if sel.first_set_loss is not None and "first_set_loss" in d:
        keep &= d["first_set_loss"].astype(bool).eq(sel.first_set_loss)
    if "cfg_scale" in d:
        keep &= d["cfg_scale"].fillna(1.0).eq(1.0)
    return d[keep]


def pick(ctx: Ctx, sel: Sel, k: int | str | None, order: str | tuple | None = None, attn: str = "causal",
         kv: bool | None = None, metric: str = "fd", name: str | None = None) -> Side:
    """``sel``'s model sampled at ``k`` steps (None: its largest K; "best": its lowest mean) in ``order``
    (None: its training order; a tuple: any of them) with ``attn`` (forced full for a full decoder) and
    ``kv`` (None: cached when there is a cached row). Several recipes: the one with the most seeds."""
    value = "fd_mean" if metric == "fd" else metric
    orders = (order,) if isinstance(order, str) else order or (sel.train_order,)
    attn = inference_attn(sel.decoder_attn, attn)
    rows = [r for r in ctx.model(sel) if r["infer_order"] in orders and r.get("attn", "causal") == attn
            and not pd.isna(r.get(value)) and (kv is None or bool(r.get("kv_cache")) == kv)
            and (not isinstance(k, int) or r["num_steps"] == k)]
    if k is None and rows:
        rows = [r for r in rows if r["num_steps"] == max(r["num_steps"] for r in rows)]
    if not rows:
        return Side(name or sel.name)
    row = min(rows, key=lambda r: (r[value] if k == "best" else 0, -r["n_seeds"], not r.get("kv_cache", True),
                                   r.get("infer_schedule", "cosine") != "cosine"))
    recipes = len({r.get("recipe") for r in rows})
    note = f"{recipes} recipes match; took the one with most seeds" if recipes > 1 else ""
    name = (name or sel.name) + (f" (K={int(row['num_steps'])})" if k == "best" else "")
    values = seed_values(ctx, row, metric)
    if metric == "fd":
        mean = float(row["fd_mean"])
        lo, hi = float(row.get("fd_lo", mean)), float(row.get("fd_hi", mean))
        return Side(name, mean, lo, hi, int(row["n_seeds"]), str(row.get("interval", "none")), row, note, values)
    return Side(name, *seed_spread(ctx, row, metric), row, note, values)


def seed_values(ctx: Ctx, row: dict, metric: str) -> dict[str, dict[int, float]]:
    """metric -> {training seed: value} of the aggregated ``row``'s runs: ``metric`` and, beside a distance,
    the held-out NLL where the per-run table has it."""
    metrics = [metric] + ([NLL] if metric == "fd" and ctx.runs is not None and NLL in ctx.runs else [])
    out = {m: {int(s): float(v) for s, v in per_seed(ctx, row, m).items()} for m in metrics}
    return {m: v for m, v in out.items() if v}


def per_seed(ctx: Ctx, row: dict, metric: str) -> pd.Series:
    """``metric`` of each training seed's run at the setting of the aggregated ``row`` (index: train_seed)."""
    if ctx.runs is None or ctx.runs.empty or "train_seed" not in ctx.runs or metric not in ctx.runs:
        return pd.Series(dtype=float)
    if "by_recipe" not in ctx.cache:  # each recipe's runs and their setting keys, split once per data set
        keys = [k for k in POINT if k in ctx.runs]
        groups = ctx.runs.groupby("recipe", sort=False) if "recipe" in ctx.runs else [(None, ctx.runs)]
        ctx.cache["keys"], ctx.cache["by_recipe"] = keys, {r: (g, g[keys].to_numpy(object)) for r, g in groups}
    runs, have = ctx.cache["by_recipe"].get(row.get("recipe"), (ctx.runs.iloc[0:0], None))
    if have is None:
        return pd.Series(dtype=float)
    cols = [i for i, k in enumerate(ctx.cache["keys"]) if k in row]
    want = np.array([row[ctx.cache["keys"][i]] for i in cols], dtype=object)
    have = have[:, cols]
    keep = ((have == want) | (pd.isna(have) & pd.isna(want))).all(axis=1)  # NaN matches NaN
    values = pd.Series(runs[metric].to_numpy(float)[keep], index=runs["train_seed"].to_numpy()[keep]).dropna()
    return values[~values.index.duplicated()]


def seed_spread(ctx: Ctx, row: dict, metric: str) -> tuple[float, float, float, int, str]:
    """(mean, lo, hi, seeds, interval) of a metric that ``table.aggregate`` only averages (seconds per image):
    the 95% t interval across the seeds' runs, or the row's mean alone."""
    x = per_seed(ctx, row, metric)
    if len(x) >= 2:
        mean, _, lo, hi = seed_interval(x)
        return float(mean), float(lo), float(hi), len(x), "seeds"
    mean = float(row[metric])
    return mean, mean, mean, int(row["n_seeds"]), "none"


def mean_side(name: str, sides: list[Side], metric: str = "fd") -> Side:
    """Several rows as one side: per training seed the geometric mean of the rows' values (the seeds every row
    has), so that its log is the mean of the rows' logs and a log ratio against it is the mean of the log
    ratios against each row."""
    ran = [s for s in sides if s.ran and s.values.get(metric)]
    if not ran:
        return Side(name)
    values = {}
    for m in dict.fromkeys(m for s in ran for m in s.values):
        seeds = sorted(set.intersection(*(set(s.values.get(m, {})) for s in ran)))
        if seeds and all(s.values[m][x] > 0 for s in ran for x in seeds):
            values[m] = {x: float(np.exp(np.mean([np.log(s.values[m][x]) for s in ran]))) for x in seeds}
    return side_from_values(f"{name} (geometric mean of {len(ran)} orders)", values, metric)


def steps_text(a: Side, b: Side | None) -> str:
    """The step counts K of A and B, as "64" when equal, else "64 vs 16"; "" when unknown."""
    ks = [str(int(s.row["num_steps"])) for s in (a, b) if s is not None and s.row is not None]
    return "" if not ks else ks[0] if len(set(ks)) == 1 else " vs ".join(ks)


def compare(ctx: Ctx, name: str, claim: str, a: Side, b: Side | None = None, margin: float = 0.0,
            metric: str = "fd", primary: bool = False, effect: float = EFFECT, k: str | None = None) -> Comparison:
    """State one claim about A and B (margin and effect fixed by the finding's definition) and run its paired
    test; ``k``: the step counts, when the sides' rows do not say them (a mean of rows)."""
    c = Comparison(name, claim, a, b, margin, metric, k if k is not None else steps_text(a, b), primary, effect)
    return run_tests(c)


def orders_sampled(ctx: Ctx, sel: Sel, k: int | None) -> list[str]:
    """The inference orders ``sel``'s model was sampled in at ``k`` steps, its own first."""
    found = {r["infer_order"] for r in ctx.model(sel) if r["num_steps"] == k and not pd.isna(r["infer_order"])}
    return sorted(found, key=lambda o: (o != sel.train_order, o))


# ---- one context per data set -----------------------------------------------------------------------------------

def _plain(d: pd.DataFrame | None) -> pd.DataFrame | None:
    """String columns as Python objects: each pick reads a whole row, and Arrow strings make that slow."""
    if d is None:
        return None
    return d.astype({c: object for c in d.columns if isinstance(d[c].dtype, pd.StringDtype)})


def contexts(pts: pd.DataFrame, runs: pd.DataFrame | None = None) -> list[Ctx]:
    """One :class:`Ctx` per feature extractor in ``pts`` (digits alone when the table is empty)."""
    pts, runs = _plain(pts), _plain(runs)
    extractors = sorted(pts["extractor"].dropna().unique()) if "extractor" in pts and not pts.empty else []
    out = []
    for ext in extractors or ["digits_cnn"]:
        p, r = (None if d is None else d[d["extractor"].eq(ext)] if "extractor" in d else d.iloc[0:0]
                for d in (pts, runs))
        out.append(Ctx(p, r, ext.removesuffix("_cnn"), int(p["num_steps"].max()) if not p.empty else None))
    return out

