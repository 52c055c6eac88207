"""The paper's nine findings (docs/method.md section 7) and a tenth, RAR's order annealing, as checks over
the results table: what each finding claims and how it is judged (``sar_lightning.analysis.report`` writes them up).

Each :class:`Finding` is data (claim, grids, the paper's numbers, the rows it compares, metric, figures,
command, and its ``design``: the primary comparison, the margins, K and sampler settings, fixed from the paper's
wording before any result was seen) plus a check that turns one data set's tables (a
:class:`~sar_lightning.analysis.selection.Ctx`) into comparisons: rows picked by
``sar_lightning.analysis.selection`` (the :class:`~sar_lightning.analysis.selection.Sel` of each grid's recipes
are here), each tested by ``sar_lightning.analysis.verdicts`` (the rule is ``VERDICT_RULE``). :func:`check_all`
runs every finding on every data set and settles its verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from sar_lightning.analysis.selection import Ctx, Sel, compare, contexts, mean_side, orders_sampled, pick
from sar_lightning.analysis.verdicts import (
    EFFECT,
    MATCH,
    NEARLY,
    NLL,
    Comparison,
    Side,
    combine,
    info,
    num,
    primary,
    settle,
)

MAR_K = 16  # the fixed step count at which the MAR-end models of findings 8 and 9 are compared
FEW_K = 4  # "few steps": the step count of findings 4 and 5's primary comparisons
TS_K = 16  # SAR-TS's own step count (random-16-random), and MAR's in finding 6
FIXED_ORDERS = ("raster", "snake", "spiral", "diagonal")
ORDER_NAMES = (*FIXED_ORDERS, "next_scale", "fixed_random", "random")
# Effects for the power computation of "lower than" claims, from the paper's own numbers where it gives them.
CACHE_EFFECT = 1 - 2.82 / 9.66  # 64 steps: 2.82 s cached vs 9.66 s uncached (a 71% cut)
SPLIT_EFFECT = 1 - 7.19 / 29.20  # MAR split 7.19 vs equal-probability 29.20
DECODER_EFFECT = 1 - 6.98 / 8.81  # full decoder 6.98 vs causal decoder mask 8.81
AR_TS_EFFECT = 1 - 5.40 / 7.04  # FMT-B AR 5.40 vs SAR-TS 7.04


def command(grid: str, data: str = "digits") -> str:
    """The command that trains, evaluates and plots a grid with three seeds."""
    return f"make sweep-{grid} SEEDS=0,1,2" + (f" DATA={data}" if data != "digits" else "")


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
    design: str = ""  # the primary comparison, margins, K and settings, and the words of the claim they come from


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
                    pick(ctx, GPT, ctx.n), MATCH, primary=True)]


def check_3(ctx: Ctx) -> list[Comparison]:
    n, raster = ctx.n, orders_model("raster")
    own = {o: pick(ctx, orders_model(o), n) for o in ORDER_NAMES if o != "raster"}
    out = [compare(ctx, "raster < the other orders at K = N (each model in its own order)", "less",
                   pick(ctx, raster, n), mean_side("the other orders", list(own.values())), primary=True,
                   k=str(n))]
    out += [compare(ctx, f"raster < {o} at K = N (own orders)", "less", pick(ctx, raster, n), side)
            for o, side in own.items()]
    for o in ORDER_NAMES[:-1]:  # the random-trained model's generalisation is finding 4's
        sel = orders_model(o)
        others = [pick(ctx, sel, n, x, name=x) for x in orders_sampled(ctx, sel, n) if x != o]
        out.append(compare(ctx, f"{o} model: own order < other orders at K = N", "less",
                           pick(ctx, sel, n, name=f"{o} in {o}"), mean_side(f"{o} in other orders", others),
                           k=str(n)))
    return out


def check_4(ctx: Ctx) -> list[Comparison]:
    rnd = orders_model("random")
    fixed = [pick(ctx, orders_model(o), FEW_K) for o in FIXED_ORDERS]
    out = [compare(ctx, f"random < the fixed orders at K = {FEW_K} (each model in its own order)", "less",
                   pick(ctx, rnd, FEW_K), mean_side("raster, snake, spiral, diagonal", fixed), primary=True,
                   k=str(FEW_K))]
    out += [compare(ctx, f"random < {o} at K = {k} (own orders)", "less", pick(ctx, rnd, k),
                    pick(ctx, orders_model(o), k)) for k in (1, 2, 4) for o in FIXED_ORDERS]
    own = pick(ctx, rnd, ctx.n, name="random in random")
    out += [compare(ctx, f"random model in {x} still works: no worse than in random at K = N", "not_worse",
                    pick(ctx, rnd, ctx.n, x, name=f"random in {x}"), own, NEARLY)
            for x in orders_sampled(ctx, rnd, ctx.n) if x != "random"]
    out.append(compare(ctx, "fixed_random nearly as good as random at K = N", "not_worse",
                       pick(ctx, orders_model("fixed_random"), ctx.n), pick(ctx, rnd, ctx.n), NEARLY))
    return out


def check_5(ctx: Ctx) -> list[Comparison]:
    r16 = RANDOM_INTERVALS["16"]
    out = [compare(ctx, f"{r16.name} < random-N-ar at K = {FEW_K}", "less", pick(ctx, r16, FEW_K),
                   pick(ctx, RANDOM_AR, FEW_K), primary=True)]
    out += [compare(ctx, f"{s.name} < random-N-ar at K = {k}", "less", pick(ctx, s, k), pick(ctx, RANDOM_AR, k))
            for k in (4, 8) for s in RANDOM_INTERVALS.values() if (k, s) != (FEW_K, r16)]
    at = {key: pick(ctx, RANDOM_INTERVALS[key], TS_K) for key in ("2", "4", "16")}
    out += [compare(ctx, f"training K matters: random-16-random < random-{key}-random at K = {TS_K}", "less",
                    at["16"], at[key]) for key in ("2", "4")]
    ran = {key: s for key, s in at.items() if s.ran}
    if ran:
        low = min(ran, key=lambda key: ran[key].mean)
        out.append(info(f"lowest mean at K = {TS_K} (description, not a test)",
                        f"ours training K = {low} (FD {num(ran[low].mean)}); paper: 16", ran[low]))
    return out


def check_6(ctx: Ctx) -> list[Comparison]:
    n = ctx.n
    ar, sarts, mar = pick(ctx, AR, n), pick(ctx, SARTS, TS_K, name=f"SAR-TS at K={TS_K}"), pick(ctx, MAR, TS_K)
    sarts_n, mar_n = pick(ctx, SARTS, n, name="SAR-TS at K=N"), pick(ctx, MAR, n, name="MAR at K=N")
    return [
        compare(ctx, f"SAR-TS no worse than MAR (both K = {TS_K})", "not_worse", sarts, mar, MATCH, primary=True),
        compare(ctx, f"AR (K = N) < SAR-TS (K = {TS_K})", "less", ar, sarts, effect=AR_TS_EFFECT),
        compare(ctx, "AR < SAR-TS (both K = N)", "less", ar, sarts_n, effect=AR_TS_EFFECT),
        compare(ctx, "SAR-TS no worse than MAR (both K = N)", "not_worse", sarts_n, mar_n, MATCH),
        compare(ctx, f"SAR-TS at K = {TS_K} faster than AR at K = N (s/image, KV cache)", "less",
                pick(ctx, SARTS, TS_K, kv=True, metric="sec_per_image"),
                pick(ctx, AR, n, kv=True, metric="sec_per_image"), metric="sec_per_image")]


def check_7(ctx: Ctx) -> list[Comparison]:
    out = []
    for sel in (SARTS, AR, MAR, VAR, GPT):
        uncached = [r for r in ctx.model(sel) if not r.get("kv_cache", True) and r.get("attn", "causal") == "causal"]
        for k in sorted({int(r["num_steps"]) for r in uncached if r["num_steps"] >= 8}):
            out.append(compare(ctx, f"{sel.name} K = {k}: cached < uncached", "less",
                               pick(ctx, sel, k, kv=True, metric="sec_per_image", name=f"{sel.name} cached"),
                               pick(ctx, sel, k, kv=False, metric="sec_per_image", name=f"{sel.name} uncached"),
                               metric="sec_per_image", primary=sel is SARTS and k == TS_K, effect=CACHE_EFFECT))
    if not any(c.primary for c in out):
        out.insert(0, compare(ctx, f"{SARTS.name} K = {TS_K}: cached < uncached", "less", Side("cached"),
                              Side("uncached"), metric="sec_per_image", primary=True, effect=CACHE_EFFECT))
    return out


def check_8(ctx: Ctx) -> list[Comparison]:
    k = MAR_K
    return [compare(ctx, f"split matters: MAR split < equal-probability split (K = {k})", "less",
                    pick(ctx, MAR_SPLIT, k), pick(ctx, EQUAL, k), primary=True, effect=SPLIT_EFFECT),
            compare(ctx, f"first-set loss matters little: alike (K = {k})", "similar", pick(ctx, MAR_FSL, k),
                    pick(ctx, MAR_SPLIT, k), MATCH),
            compare(ctx, f"causal decoder mask hurts: full decoder < causal (K = {k})", "less",
                    pick(ctx, MAR_FULL, k), pick(ctx, MAR_SPLIT, k), effect=DECODER_EFFECT)]


def check_9(ctx: Ctx) -> list[Comparison]:
    k = MAR_K
    out = [compare(ctx, f"{s.name}: full attention < causal at inference (K = {k})", "less",
                   pick(ctx, s, k, attn="full", name=f"{s.name}, full attn"),
                   pick(ctx, s, k, name=f"{s.name}, causal"), primary=s is MAR_SPLIT) for s in (MAR_SPLIT, EQUAL)]
    out.append(compare(ctx, f"{R4.name}: full attention no longer helps (causal no worse, K = {k})", "not_worse",
                       pick(ctx, R4, k, name=f"{R4.name}, causal"),
                       pick(ctx, R4, k, attn="full", name=f"{R4.name}, full attn"), MATCH))
    return out


def check_10(ctx: Ctx) -> list[Comparison]:
    raster, rnd, anneal = (Sel("anneal", o, o, "ar") for o in ("raster", "random", "anneal"))
    out = [compare(ctx, "anneal reaches raster at K = N (both in raster order)", "not_worse",
                   pick(ctx, anneal, ctx.n, ("raster", "anneal"), name="anneal in raster"),
                   pick(ctx, raster, ctx.n, name="raster in raster"), MATCH, primary=True)]
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
            ("spectrum_fd_vs_steps",), check_1, strict=True,
            design="No test: the claim is that one model class and one code path run all four recipes, so it is "
                   "reproduced when each has results (every one of them must)."),
    Finding(2, "At the AR end FMT matches GPT",
            "A raster-order K = N FMT is as good as a decoder-only GPT of the same size.", ("spectrum",),
            "FMT AR FID 5.40 (B), 3.72 (L), 2.76 (XL), level with GPTs of the same size",
            "spectrum grid, K = N: FMT raster/ar vs gpt-* model", "fd", "FMT no worse than GPT",
            ("spectrum_fd_vs_steps",), check_2,
            design=f"Primary: FMT raster-N-ar against the GPT baseline, both at K = N in raster order with the KV "
                   f"cache; non-inferiority, margin {MATCH:.0%} (\"as good as\", \"level with\")."),
    Finding(3, "Raster is best at full steps; aligned orders win",
            "Among orders sampled one token per step, raster is best; sampling in the training order beats "
            "sampling in another.", ("orders",), "raster best at K = N on ImageNet (no per-order numbers in SPEC)",
            "orders grid, K = N: each model in its own order; each fixed-order model's own order vs the geometric "
            "mean of its other inference orders (the order matrix)", "fd", "raster lower; own order lower",
            ("orders_order_matrix", "orders_fd_vs_steps"), check_3,
            design=f"Primary: raster against the other six orders of the grid (\"among orders ... raster is best\"), "
                   f"all at K = N in their own order, the other side being the per-seed geometric mean of the six; "
                   f"\"lower than\", powered for a {EFFECT:.0%} effect (the paper gives no per-order numbers). "
                   "Secondary: raster against each order; each fixed-order model in its own order against its "
                   "other inference orders (\"aligned orders win\")."),
    Finding(4, "Random orders generalise",
            "A random-order model works at few steps and in unseen orders; fixed orders fall apart at small K; "
            "one fixed random permutation does nearly as well.", ("orders",),
            "qualitative (no numbers in SPEC)",
            "orders grid: random vs raster/snake/spiral/diagonal in own orders at K = 1, 2, 4; the random model in "
            "other orders vs its own at K = N; fixed_random vs random at K = N", "fd",
            f"random lower at small K; others within {NEARLY:.0%}", ("orders_fd_vs_steps", "orders_order_matrix"),
            check_4,
            design=f"Primary: the random-order model against the four fixed spatial orders (per-seed geometric "
                   f"mean) at K = {FEW_K} (\"few steps\", \"fall apart at small K\"), each in its own order; "
                   f"\"lower than\", powered for {EFFECT:.0%}. Secondary: random against each fixed order at "
                   f"K = 1, 2, 4; the random model in each unseen order against its own at K = N, non-inferiority "
                   f"{NEARLY:.0%} (\"still works\"); fixed_random against random at K = N, non-inferiority "
                   f"{NEARLY:.0%} (\"nearly as well\")."),
    Finding(5, "Random intervals generalise; K matters",
            "Training with random intervals transfers across step counts, and the number of training sets "
            "matters.", ("intervals",), "16 training sets was best on ImageNet",
            f"intervals grid: random-{{2,4,16,2to32}}-random vs random-N-ar at K = 4, 8; random-16-random vs "
            f"random-2/4-random at K = {TS_K}", "fd", "random intervals lower at few steps; 16 sets lower",
            ("intervals_fd_vs_steps",), check_5,
            design=f"Primary: random-16-random (the paper's best K) against random-N-ar at K = {FEW_K}, both in "
                   f"random order with cosine intervals; \"lower than\", powered for {EFFECT:.0%}. Secondary: the "
                   f"other random-K-random models against random-N-ar at K = 4 and 8; \"K matters\": "
                   f"random-16-random against random-2- and random-4-random, all sampled at K = {TS_K} (fixed in "
                   "advance; the old report took each model's best K on the FD it then judged)."),
    Finding(6, "Transition states are fast and in between",
            "SAR-TS samples in few steps with a KV cache and lands between AR and MAR in quality.", ("spectrum",),
            "FMT-L SAR-TS 4.75 (AR 3.72, MAR 6.13); FMT-B 7.04 (AR 5.40, MAR 6.98)",
            f"spectrum grid: SAR-TS and MAR at K = {TS_K}, AR at K = N, each in its own order with the KV cache; "
            f"seconds per image of SAR-TS at K = {TS_K} vs AR at K = N", "fd, sec_per_image",
            "SAR-TS no worse than MAR; AR lower than SAR-TS; SAR-TS faster",
            ("spectrum_fd_vs_time", "spectrum_fd_vs_steps"), check_6,
            design=f"Primary: SAR-TS (random-16-random) against MAR (random-2-mar), both at K = {TS_K} (the same "
                   f"step budget, fixed in advance; the old report took MAR's best K on the FD it judged); "
                   f"non-inferiority {MATCH:.0%} (\"between AR and MAR\", and for FMT-B \"level with MAR\": "
                   f"7.04 vs 6.98). Secondary: AR at K = N lower than SAR-TS (paper: 5.40 vs 7.04, "
                   f"{AR_TS_EFFECT:.0%}); the same at K = N; SAR-TS faster than AR in seconds per image."),
    Finding(7, "The KV cache pays",
            "Sampling with the KV cache is several times faster than recomputing the prefix.", ("spectrum",),
            "1024x1024 text-to-image, 64 steps: 2.82 s cached vs 9.66 s uncached (174.49 s for 4096-step AR)",
            "spectrum grid: every model at each K >= 8, kv_cache true vs false", "sec_per_image", "cached lower",
            ("spectrum_fd_vs_time",), check_7,
            design=f"Primary: SAR-TS (random-16-random) at K = {TS_K}, seconds per image cached against uncached "
                   f"(the paper's case: a transition state in few steps); \"lower than\", powered for the paper's "
                   f"{CACHE_EFFECT:.0%} cut (2.82 s vs 9.66 s). Secondary: every other model and K >= 8."),
    Finding(8, "At the MAR end, the split sampler matters",
            "MAR's mask-ratio split beats an equal-probability split; the first set's loss matters little; the "
            "causal decoder mask hurts.", ("mar",),
            "MAR split 7.19 vs equal-probability 29.20; causal decoder mask 8.81 vs 6.98 without",
            f"mar grid at K = {MAR_K} (a fixed K, causal inference attention for block-causal models)", "fd",
            "MAR split lower; first-set loss alike; full decoder lower", ("mar_mar_ablation",), check_8,
            design=f"Primary: MAR split against the equal-probability split at K = {MAR_K}, causal inference "
                   f"attention; \"lower than\", powered for the paper's {SPLIT_EFFECT:.0%} (7.19 vs 29.20). "
                   f"Secondary: with and without the first set's loss, equivalence {MATCH:.0%} (\"matters "
                   f"little\"); full decoder lower than the causal decoder mask (paper 6.98 vs 8.81)."),
    Finding(9, "Full attention at inference helps only with few training sets",
            "Models trained with very few sets sample better with full attention; from K >= 4 it no longer helps.",
            ("mar",), "qualitative (no numbers in SPEC)",
            f"mar grid at K = {MAR_K}: attn full vs causal for MAR split, equal-probability split, random-4-random",
            "fd", "full lower for 2-set models; not lower for K = 4", ("mar_mar_ablation",), check_9,
            design=f"Primary: the MAR split model (2 training sets) sampled with full against causal attention at "
                   f"K = {MAR_K}; \"lower than\", powered for {EFFECT:.0%}. Secondary: the same for the "
                   f"equal-probability split; random-4-random causal no worse than full, non-inferiority "
                   f"{MATCH:.0%} (\"no longer helps\")."),
    Finding(10, "Order annealing (RAR, beyond the paper)",
            "Annealing from random to raster order in training reaches raster's full-step quality and keeps part "
            "of random order's few-step robustness.", ("anneal",),
            "none: the SAR paper never compares; RAR reports FID 1.48 for RAR-XXL on ImageNet",
            "anneal grid: anneal vs raster in raster order at K = N; anneal vs raster (and random) in random "
            "order at K = 4, 8, 16", "fd", "anneal no worse at K = N; lower than raster at few steps",
            ("anneal_order_matrix", "anneal_fd_vs_steps"), check_10,
            design=f"Primary: anneal against raster, both sampled in raster order at K = N; non-inferiority "
                   f"{MATCH:.0%} (\"reaches raster's full-step quality\"). Secondary: anneal lower than raster at "
                   "K = 4, 8, 16 in random order (\"keeps few-step robustness\")."),
)


# ---- every finding on every data set ------------------------------------------------------------------------------

@dataclass
class Result:
    """One finding judged on one data set: ``verdict`` on the FD (the primary comparison's), ``nll_verdict`` on
    the held-out NLL ("not measured" without it)."""

    finding: Finding
    data: str
    comparisons: list[Comparison]
    verdict: str
    partial: bool
    nll_verdict: str = "not measured"

    @property
    def commands(self) -> list[str]:
        return [command(g, self.data) for g in self.finding.grids]

    @property
    def primary(self) -> Comparison | None:
        return primary(self.comparisons)


def judge_finding(f: Finding, ctx: Ctx, floors: dict | None = None) -> Result:
    """``f`` on one data set: its comparisons, settled together, and its verdicts."""
    comps = f.check(ctx)
    settle(comps, floors)
    verdict, partial = combine(comps, f.strict)
    nll = combine(comps, f.strict, NLL)[0] if primary(comps) is not None else "not measured"
    return Result(f, ctx.data, comps, verdict, partial, nll)


def check_all(pts: pd.DataFrame, runs: pd.DataFrame | None = None,
              floors: dict[str, tuple[float, float]] | None = None) -> list[Result]:
    """Every finding on every data set of ``pts`` (``table.aggregate`` output; ``runs``: ``table.prepare``
    output, whose per-seed values the paired tests read: without it no comparison is tested). ``floors``:
    metric -> (floor, its SD), for the "at the floor" rule (None: no floor check). A data set where a finding
    did not run is left out when another data set ran it."""
    ctxs, results = contexts(pts, runs), []
    for f in FINDINGS:
        per_data = [judge_finding(f, ctx, floors) for ctx in ctxs]
        ran = [r for r in per_data if r.verdict != "not run"]
        results += ran or per_data[:1]
    return results
