"""The paper's nine findings (docs/method.md section 7) and a tenth, RAR's order annealing, as checks over
the results table: what each finding claims and how it is judged (``sar_lightning.report`` writes them up).

Each :class:`Finding` is data (claim, grids, the paper's numbers, the rows it compares, metric, figures,
command) plus a check that turns the aggregated table (``table.aggregate(table.prepare(...))``: one row
per recipe and sampler setting, with a 95% interval) into :class:`Comparison`\\ s, each judged by
:func:`judge` (the rule is ``VERDICT_RULE``). Rows are picked by their training columns (``train_order``,
``train_schedule``, the K of the run id, ``decoder_attn``, ``first_set_loss``, a ``gpt-*`` model) within
the grid's runs, never by free-text labels, and each data set (feature extractor) is judged on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

VERDICTS = ("reproduced", "contradicted", "inconclusive", "not run")
NEARLY = 0.2  # "nearly as well" / "close": within 20% of the reference's upper interval end
MAR_K = 16  # the fixed step count at which the MAR-end models of findings 8 and 9 are compared
FIXED_ORDERS = ("raster", "snake", "spiral", "diagonal")
ORDER_NAMES = (*FIXED_ORDERS, "next_scale", "fixed_random", "random")

VERDICT_RULE = f"""\
Every number is a Fréchet distance (lower is better) unless it says seconds per image, with a 95% interval:
across training seeds (Student's t) when a row has 2 or more seeds, else the single run's bootstrap interval
over samples, else none (a point). For a claim **"A is lower than B"**: **reproduced** when the two intervals
do not overlap and A is lower; **contradicted** when they do not overlap and A is higher; **inconclusive** when
they overlap; **not run** when a row is missing (the section names the command that runs it). For a claim
**"A is no worse than B"** (A matches B, A reaches B, A lands below B): reproduced when A's interval overlaps
B's or lies below it, contradicted when it lies wholly above; "nearly as well" / "close" widens B's upper end
by {NEARLY:.0%}. For **"A and B are alike"** (matters little): reproduced when the intervals overlap, else
contradicted. These two rules only fail to find a difference: they are not equivalence tests. A finding made
of several comparisons is contradicted if any is, reproduced if all that ran are, inconclusive otherwise, and
not run when none ran; "(partial)" marks one whose comparisons did not all run. Where both rows have 2 or
more matching training seeds, the paired difference A - B (the mean of per-seed differences with its 95% t
interval) is shown as supporting information; it does not change the verdict. A verdict resting on fewer
than 3 seeds says so."""


def command(grid: str, data: str = "digits") -> str:
    """The command that trains, evaluates and plots a grid with three seeds."""
    return f"make sweep-{grid} SEEDS=0,1,2" + (f" DATA={data}" if data != "digits" else "")


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
    elif claim == "not_worse":
        ok = a.lo <= b.hi * (1 + tol)
        margin = f" widened by {tol:.0%}" if tol else ""
        verdict, why = (("reproduced", "A lies below B" if below else f"A's interval overlaps B's{margin}") if ok else
                        ("contradicted", f"A's interval lies above B's{margin}"))
    elif claim == "similar":
        verdict, why = (("contradicted", f"the intervals do not overlap (A {'lower' if below else 'higher'})")
                        if below or above else ("reproduced", "the intervals overlap"))
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
    attn = "full" if sel.decoder_attn == "full" else attn
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
    if metric == "fd":
        mean = float(row["fd_mean"])
        lo, hi = float(row.get("fd_lo", mean)), float(row.get("fd_hi", mean))
        return Side(name, mean, lo, hi, int(row["n_seeds"]), str(row.get("interval", "none")), row, note)
    return Side(name, *seed_spread(ctx, row, metric), row, note)


def per_seed(ctx: Ctx, row: dict, metric: str) -> pd.Series:
    """``metric`` of each training seed's run at the setting of the aggregated ``row`` (index: train_seed)."""
    from .table import POINT

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
    from .table import seed_interval

    x = per_seed(ctx, row, metric)
    if len(x) >= 2:
        mean, _, lo, hi = seed_interval(x)
        return float(mean), float(lo), float(hi), len(x), "seeds"
    mean = float(row[metric])
    return mean, mean, mean, int(row["n_seeds"]), "none"


def mean_side(name: str, sides: list[Side]) -> Side:
    """The mean of several rows: means, lower ends and upper ends each averaged (no paired difference)."""
    ran = [s for s in sides if s.ran]
    if not ran:
        return Side(name)
    return Side(f"{name} ({len(ran)} orders)", float(np.mean([s.mean for s in ran])),
                float(np.mean([s.lo for s in ran])), float(np.mean([s.hi for s in ran])),
                min(s.n_seeds for s in ran), "bootstrap" if all(s.interval == "bootstrap" for s in ran) else "mean")


def paired(ctx: Ctx, a: Side, b: Side, metric: str = "fd") -> tuple[float, float, float, int] | None:
    """Mean and 95% t interval of A - B over the training seeds both rows have (None below 2 pairs)."""
    from .table import seed_interval

    if a.row is None or b.row is None:
        return None
    diff = (per_seed(ctx, a.row, metric) - per_seed(ctx, b.row, metric)).dropna()
    if len(diff) < 2:
        return None
    mean, _, lo, hi = seed_interval(diff)
    return float(mean), float(lo), float(hi), len(diff)


def compare(ctx: Ctx, name: str, claim: str, a: Side, b: Side | None = None, tol: float = 0.0,
            metric: str = "fd") -> Comparison:
    """Judge one claim and attach the paired difference where the seeds allow it."""
    c = Comparison(name, claim, a, b, tol, metric)
    c.verdict, c.reason = judge(claim, a, b, tol)
    if b is not None and c.verdict != "not run":
        c.paired = paired(ctx, a, b, metric)
        if metric != "fd" and a.mean > 0:
            c.reason += f"; B / A = {b.mean / a.mean:.1f}x"  # the speed-up
    return c


def info(name: str, text: str, a: Side | None = None) -> Comparison:
    """A row of information (no verdict), e.g. the best training K."""
    return Comparison(name, "info", a or Side(name), reason=text, verdict="")


def orders_sampled(ctx: Ctx, sel: Sel, k: int | None) -> list[str]:
    """The inference orders ``sel``'s model was sampled in at ``k`` steps, its own first."""
    found = {r["infer_order"] for r in ctx.model(sel) if r["num_steps"] == k and not pd.isna(r["infer_order"])}
    return sorted(found, key=lambda o: (o != sel.train_order, o))


# ---- the findings -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """A claim as data, with the check that turns one data set's tables into its comparisons."""

    number: int
    title: str
    claim: str
    grids: tuple[str, ...]
    paper: str
    rows: str  # which rows it compares
    metric: str
    direction: str
    figures: tuple[str, ...]  # <grid>_<figure>, the extractor is appended
    check: Callable[[Ctx], list[Comparison]] = field(repr=False)
    strict: bool = False


AR = Sel("spectrum", "AR (raster-N-ar)", "raster", "ar")
GPT = Sel("spectrum", "GPT baseline", "raster", "ar", gpt=True)
SARTS = Sel("spectrum", "SAR-TS (random-16-random)", "random", "random", "16")
MAR = Sel("spectrum", "MAR (random-2-mar)", "random", "mar", first_set_loss=False)
VAR = Sel("spectrum", "VAR-like (next_scale)", "next_scale", "next_scale")


def orders_model(o: str) -> Sel:
    return Sel("orders", o, o, "ar")


MAR_SPLIT = Sel("mar", "MAR split", "random", "mar", first_set_loss=False)
MAR_FSL = Sel("mar", "MAR split + first-set loss", "random", "mar", first_set_loss=True)
EQUAL = Sel("mar", "equal-probability split", "random", "random", "2", first_set_loss=False)
MAR_FULL = Sel("mar", "MAR split + full decoder attn", "random", "mar", decoder_attn="full", first_set_loss=False)
R4 = Sel("mar", "random-4-random (K >= 4)", "random", "random", "4")
RANDOM_AR = Sel("intervals", "random-N-ar", "random", "ar")
RANDOM_INTERVALS = {k: Sel("intervals", f"random-{k.replace('_', 'to')}-random", "random", "random", k)
                    for k in ("2", "4", "16", "2_32")}


def check_1(ctx: Ctx) -> list[Comparison]:
    out = [compare(ctx, f"{s.name} has results", "present", pick(ctx, s, None)) for s in (AR, SARTS, MAR, VAR)]
    models = sorted({str(c.a.row["model"]) for c in out if c.a.row is not None and "model" in c.a.row})
    return out + [info("model", f"one FMT class for all: {', '.join(models) or '-'}")]


def check_2(ctx: Ctx) -> list[Comparison]:
    return [compare(ctx, "FMT AR no worse than GPT at K = N", "not_worse", pick(ctx, AR, ctx.n),
                    pick(ctx, GPT, ctx.n))]


def check_3(ctx: Ctx) -> list[Comparison]:
    n, raster = ctx.n, orders_model("raster")
    out = [compare(ctx, f"raster < {o} at K = N (own orders)", "less", pick(ctx, raster, n),
                   pick(ctx, orders_model(o), n)) for o in ORDER_NAMES if o != "raster"]
    for o in ORDER_NAMES[:-1]:  # the random-trained model's generalisation is finding 4's
        sel = orders_model(o)
        others = [pick(ctx, sel, n, x, name=x) for x in orders_sampled(ctx, sel, n) if x != o]
        out.append(compare(ctx, f"{o} model: own order < other orders at K = N", "less",
                           pick(ctx, sel, n, name=f"{o} in {o}"), mean_side(f"{o} in other orders", others)))
    return out


def check_4(ctx: Ctx) -> list[Comparison]:
    rnd = orders_model("random")
    out = [compare(ctx, f"random < {o} at K = {k} (own orders)", "less", pick(ctx, rnd, k),
                   pick(ctx, orders_model(o), k)) for k in (1, 2, 4) for o in FIXED_ORDERS]
    own = pick(ctx, rnd, ctx.n, name="random in random")
    out += [compare(ctx, f"random model in {x} close to in random at K = N", "not_worse",
                    pick(ctx, rnd, ctx.n, x, name=f"random in {x}"), own, NEARLY)
            for x in orders_sampled(ctx, rnd, ctx.n) if x != "random"]
    out.append(compare(ctx, "fixed_random nearly as good as random at K = N", "not_worse",
                       pick(ctx, orders_model("fixed_random"), ctx.n), pick(ctx, rnd, ctx.n), NEARLY))
    return out


def check_5(ctx: Ctx) -> list[Comparison]:
    out = [compare(ctx, f"{s.name} < random-N-ar at K = {k}", "less", pick(ctx, s, k), pick(ctx, RANDOM_AR, k))
           for k in (4, 8) for s in RANDOM_INTERVALS.values()]
    best = {k: pick(ctx, s, "best") for k, s in RANDOM_INTERVALS.items() if k != "2_32"}
    ran = {k: s for k, s in best.items() if s.ran}
    if len(ran) >= 2:
        lo, hi = min(ran, key=lambda k: ran[k].mean), max(ran, key=lambda k: ran[k].mean)
        out.append(compare(ctx, "training K matters: best < worst (each at its best inference K)", "less",
                           ran[lo], ran[hi]))
        out.append(info("best training K", f"ours K = {lo} (FD {num(ran[lo].mean)}); paper: 16", ran[lo]))
    else:
        out.append(compare(ctx, "training K matters: best < worst (each at its best inference K)", "less",
                           Side("random-K-random, 2+ K"), Side("random-K-random")))
    return out


def check_6(ctx: Ctx) -> list[Comparison]:
    ar, mar = pick(ctx, AR, ctx.n), pick(ctx, MAR, "best")
    out = []
    for k in sorted({16, ctx.n or 16}):
        sarts = pick(ctx, SARTS, k, name=f"SAR-TS at K={k}")
        out += [compare(ctx, f"AR (K = N) no worse than SAR-TS (K = {k})", "not_worse", ar, sarts),
                compare(ctx, f"SAR-TS (K = {k}) no worse than MAR (its best K)", "not_worse", sarts, mar)]
    out.append(compare(ctx, "SAR-TS at K = 16 faster than AR at K = N (s/image, KV cache)", "less",
                       pick(ctx, SARTS, 16, kv=True, metric="sec_per_image"),
                       pick(ctx, AR, ctx.n, kv=True, metric="sec_per_image"), metric="sec_per_image"))
    return out


def check_7(ctx: Ctx) -> list[Comparison]:
    out = []
    for sel in (AR, SARTS, MAR, VAR, GPT):
        uncached = [r for r in ctx.model(sel) if not r.get("kv_cache", True) and r.get("attn", "causal") == "causal"]
        for k in sorted({int(r["num_steps"]) for r in uncached if r["num_steps"] >= 8}):
            out.append(compare(ctx, f"{sel.name} K = {k}: cached < uncached", "less",
                               pick(ctx, sel, k, kv=True, metric="sec_per_image", name=f"{sel.name} cached"),
                               pick(ctx, sel, k, kv=False, metric="sec_per_image", name=f"{sel.name} uncached"),
                               metric="sec_per_image"))
    return out or [compare(ctx, "cached < uncached at K >= 8", "less", Side("cached"), Side("uncached"),
                           metric="sec_per_image")]


def check_8(ctx: Ctx) -> list[Comparison]:
    k = MAR_K
    return [compare(ctx, f"split matters: MAR split < equal-probability split (K = {k})", "less",
                    pick(ctx, MAR_SPLIT, k), pick(ctx, EQUAL, k)),
            compare(ctx, f"first-set loss matters little (K = {k})", "similar", pick(ctx, MAR_FSL, k),
                    pick(ctx, MAR_SPLIT, k)),
            compare(ctx, f"causal decoder mask hurts: full decoder < causal (K = {k})", "less",
                    pick(ctx, MAR_FULL, k), pick(ctx, MAR_SPLIT, k))]


def check_9(ctx: Ctx) -> list[Comparison]:
    k = MAR_K
    out = [compare(ctx, f"{s.name}: full attention < causal at inference (K = {k})", "less",
                   pick(ctx, s, k, attn="full", name=f"{s.name}, full attn"),
                   pick(ctx, s, k, name=f"{s.name}, causal")) for s in (MAR_SPLIT, EQUAL)]
    out.append(compare(ctx, f"{R4.name}: full attention does not help (causal no worse, K = {k})", "not_worse",
                       pick(ctx, R4, k, name=f"{R4.name}, causal"),
                       pick(ctx, R4, k, attn="full", name=f"{R4.name}, full attn")))
    return out


def check_10(ctx: Ctx) -> list[Comparison]:
    raster, rnd, anneal = (Sel("anneal", o, o, "ar") for o in ("raster", "random", "anneal"))
    out = [compare(ctx, "anneal reaches raster at K = N (both in raster order)", "not_worse",
                   pick(ctx, anneal, ctx.n, ("raster", "anneal"), name="anneal in raster"),
                   pick(ctx, raster, ctx.n, name="raster in raster"))]
    for k in (4, 8, 16):
        sides = [pick(ctx, s, k, "random", name=f"{s.name} in random") for s in (anneal, raster, rnd)]
        out.append(compare(ctx, f"anneal < raster at K = {k} (in random order)", "less", sides[0], sides[1]))
        gap = sides[1].mean - sides[2].mean
        frac = (sides[1].mean - sides[0].mean) / gap if all(s.ran for s in sides) and gap else math.nan
        out.append(info(f"gap closed at K = {k}", f"(raster - anneal) / (raster - random) = {num(frac)}; random "
                        f"{sides[2].text()}", sides[0]))
    return out


FINDINGS = (
    Finding(1, "One model covers the spectrum",
            "One model (FMT) and one code path train and sample AR, MAR, VAR-like and the transition states.",
            ("spectrum",), "FMT-B FID: AR 5.40, SAR-TS 7.04, MAR setting 6.98, VAR-like 12.49",
            "spectrum grid: AR (raster/ar), SAR-TS (random/random, K 16), MAR (random/mar), VAR-like (next_scale) "
            "FMT rows, any K", "fd", "all four recipes have results (not a comparison)",
            ("spectrum_fd_vs_steps",), check_1, strict=True),
    Finding(2, "At the AR end FMT matches GPT",
            "A raster-order K = N FMT is as good as a decoder-only GPT of the same size.", ("spectrum",),
            "FMT AR FID 5.40 (B), 3.72 (L), 2.76 (XL), level with GPTs of the same size",
            "spectrum grid, K = N: FMT raster/ar vs gpt-* model", "fd", "FMT no worse than GPT",
            ("spectrum_fd_vs_steps",), check_2),
    Finding(3, "Raster is best at full steps; aligned orders win",
            "Among orders sampled one token per step, raster is best; sampling in the training order beats "
            "sampling in another.", ("orders",), "raster best at K = N on ImageNet (no per-order numbers in SPEC)",
            "orders grid, K = N: each model in its own order; each fixed-order model's own order vs the mean of "
            "its other inference orders (the order matrix)", "fd", "raster lower; own order lower",
            ("orders_order_matrix", "orders_fd_vs_steps"), check_3),
    Finding(4, "Random orders generalise",
            "A random-order model works at few steps and in unseen orders; fixed orders fall apart at small K; "
            "one fixed random permutation does nearly as well.", ("orders",),
            "qualitative (no numbers in SPEC)",
            "orders grid: random vs raster/snake/spiral/diagonal in own orders at K = 1, 2, 4; the random model in "
            "other orders vs its own at K = N; fixed_random vs random at K = N", "fd",
            "random lower at small K; others within 20%", ("orders_fd_vs_steps", "orders_order_matrix"), check_4),
    Finding(5, "Random intervals generalise; K matters",
            "Training with random intervals transfers across step counts, and the number of training sets "
            "matters.", ("intervals",), "16 training sets was best on ImageNet",
            "intervals grid: random-{2,4,16,2to32}-random vs random-N-ar at K = 4, 8; each random-K-random at its "
            "best inference K", "fd", "random intervals lower at few steps", ("intervals_fd_vs_steps",), check_5),
    Finding(6, "Transition states are fast and in between",
            "SAR-TS samples in few steps with a KV cache and lands between AR and MAR in quality.", ("spectrum",),
            "FMT-L SAR-TS 4.75 (AR 3.72, MAR 6.13); FMT-B 7.04 (AR 5.40, MAR 6.98)",
            "spectrum grid: AR at K = N, SAR-TS at K = 16 and K = N, MAR at its best K; seconds per image of "
            "SAR-TS at K = 16 vs AR at K = N", "fd, sec_per_image", "AR <= SAR-TS <= MAR; SAR-TS faster",
            ("spectrum_fd_vs_time", "spectrum_fd_vs_steps"), check_6),
    Finding(7, "The KV cache pays",
            "Sampling with the KV cache is several times faster than recomputing the prefix.", ("spectrum",),
            "1024x1024 text-to-image, 64 steps: 2.82 s cached vs 9.66 s uncached (174.49 s for 4096-step AR)",
            "spectrum grid: every model at each K >= 8, kv_cache true vs false", "sec_per_image", "cached lower",
            ("spectrum_fd_vs_time",), check_7),
    Finding(8, "At the MAR end, the split sampler matters",
            "MAR's mask-ratio split beats an equal-probability split; the first set's loss matters little; the "
            "causal decoder mask hurts.", ("mar",),
            "MAR split 7.19 vs equal-probability 29.20; causal decoder mask 8.81 vs 6.98 without",
            f"mar grid at K = {MAR_K} (a fixed K, causal inference attention for block-causal models)", "fd",
            "MAR split lower; first-set loss alike; full decoder lower", ("mar_mar_ablation",), check_8),
    Finding(9, "Full attention at inference helps only with few training sets",
            "Models trained with very few sets sample better with full attention; from K >= 4 it no longer helps.",
            ("mar",), "qualitative (no numbers in SPEC)",
            f"mar grid at K = {MAR_K}: attn full vs causal for MAR split, equal-probability split, random-4-random",
            "fd", "full lower for 2-set models; not lower for K = 4", ("mar_mar_ablation",), check_9),
    Finding(10, "Order annealing (RAR, beyond the paper)",
            "Annealing from random to raster order in training reaches raster's full-step quality and keeps part "
            "of random order's few-step robustness.", ("anneal",),
            "none: the SAR paper never compares; RAR reports FID 1.48 for RAR-XXL on ImageNet",
            "anneal grid: anneal vs raster in raster order at K = N; anneal vs raster (and random) in random "
            "order at K = 4, 8, 16", "fd", "anneal no worse at K = N; lower than raster at few steps",
            ("anneal_order_matrix", "anneal_fd_vs_steps"), check_10),
)


# ---- every finding on every data set ------------------------------------------------------------------------------

@dataclass
class Result:
    """One finding judged on one data set."""

    finding: Finding
    data: str
    comparisons: list[Comparison]
    verdict: str
    partial: bool

    @property
    def commands(self) -> list[str]:
        return [command(g, self.data) for g in self.finding.grids]


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


def check_all(pts: pd.DataFrame, runs: pd.DataFrame | None = None) -> list[Result]:
    """Every finding on every data set of ``pts`` (``table.aggregate`` output; ``runs``: ``table.prepare``
    output, for paired differences and timing intervals). A data set where a finding did not run is left out
    when another data set ran it."""
    ctxs, results = contexts(pts, runs), []
    for f in FINDINGS:
        per_data = []
        for ctx in ctxs:
            comps = f.check(ctx)
            per_data.append(Result(f, ctx.data, comps, *combine(comps, f.strict)))
        ran = [r for r in per_data if r.verdict != "not run"]
        results += ran or per_data[:1]
    return results
