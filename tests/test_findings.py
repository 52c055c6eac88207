"""sar_lightning.analysis.findings, .selection, .verdicts, .power, .forest and .report: the findings' verdicts and the
report, on synthetic tables (no training; the statistics themselves are tests/test_stats.py's)."""

from __future__ import annotations

import json
import math
import re
import zlib

import numpy as np
import pandas as pd
import pytest

from sar_lightning.analysis import findings as F
from sar_lightning.analysis import forest as FO
from sar_lightning.analysis import power as P
from sar_lightning.analysis import report as R
from sar_lightning.analysis import table
from sar_lightning.analysis import verdicts as V
from sar_lightning.cli import main as cli

KS = (1, 2, 4, 8, 16, 64)
ORDERS = F.ORDER_NAMES
OWN_N = dict(raster=10, snake=13, spiral=14, diagonal=15, next_scale=16, fixed_random=17, random=18)


def _side(name, values, n=None):
    """A side with per-seed FD values."""
    values = dict(enumerate(values))
    return V.Side(name, float(np.mean(list(values.values()))), n_seeds=n or len(values), values={"fd": values})


# ---- the verdict layer ----------------------------------------------------------------------------------------------

def _settled(*comps):
    comps = [V.run_tests(c) for c in comps]
    V.settle(comps)
    return comps


def test_a_secondary_contradiction_never_contradicts_the_finding():
    good, bad = _side("A", [10, 11, 12]), _side("B", [20, 22.5, 23])
    first, second = _settled(V.Comparison("primary", "less", good, bad, primary=True),
                             V.Comparison("secondary", "less", bad, good))
    assert first.verdict == "reproduced" and second.verdict == "contradicted"
    assert V.combine([first, second]) == ("reproduced", False)


def test_an_inconclusive_primary_short_of_seeds_is_undecidable():
    (c,) = _settled(V.Comparison("p", "less", _side("A", [10, 14, 9]), _side("B", [11, 10, 12]), primary=True))
    assert c.verdict == "undecidable" and c.main.needed > 3
    assert f"undecidable with 3 seeds; about {V.num(c.main.needed)} needed" in c.reason


def test_not_run_presence_and_the_floor():
    (missing,) = _settled(V.Comparison("m", "less", V.Side("a"), _side("B", [1, 2]), primary=True))
    assert missing.verdict == "not run" and V.combine([missing]) == ("not run", False)
    present = [V.run_tests(V.Comparison(f"{k}", "present", s)) for k, s in (("x", _side("x", [1])), ("y", V.Side("y")))]
    assert V.combine(present) == ("reproduced", True) and V.combine(present, strict=True) == ("not run", True)
    a, b = _side("A", [1.02, 1.05, 1.01]), _side("B", [1.2, 1.22, 1.25])
    (floor,) = [V.run_tests(V.Comparison("f", "less", a, b, primary=True))]
    V.settle([floor], floors={"fd": (1.0, 0.15)})
    assert floor.verdict == "at the floor" and "floor" in floor.reason
    V.settle([floor])  # no floor: the test decides
    assert floor.verdict == "reproduced"


def test_the_nll_is_judged_beside_the_fd_when_both_sides_have_it():
    a, b = _side("A", [10, 11, 12]), _side("B", [20, 22, 23])
    a.values[V.NLL], b.values[V.NLL] = {0: 1.0, 1: 1.01, 2: 0.99}, {0: 1.3, 1: 1.31, 2: 1.32}
    (c,) = _settled(V.Comparison("p", "less", a, b, primary=True))
    assert set(c.judged) == {"fd", V.NLL} and c.judged[V.NLL].verdict == "reproduced"
    assert V.combine([c], metric=V.NLL)[0] == "reproduced"
    (plain,) = _settled(V.Comparison("p", "less", _side("A", [1, 2]), _side("B", [2, 3]), primary=True))
    assert V.combine([plain], metric=V.NLL)[0] == "not measured"


# ---- a synthetic per-run table through table.prepare + table.aggregate ----------------------------------------------

def _recipe(rows, recipe, grids, order, schedule, k, fd, *, model="tiny", dec="block_causal", fsl=True,
            ks=KS, orders=None, attns=("causal",), kv=(True,), seeds=(0, 1, 2), extractor="digits_cnn"):
    """Per-run result rows of one recipe: ``fd(infer_order, K, attn)`` times a per-seed factor shared by every
    recipe (``SEED_EFFECT``) and a small noise of its own per seed (1%, from a hash of recipe and seed)."""
    head, tail = recipe.rsplit("_", 1)
    for seed in seeds:
        own = np.random.default_rng(zlib.crc32(f"{recipe}/{seed}".encode())).normal(0, 0.01)
        for o in orders or [order]:
            for n in ks:
                for attn in attns:
                    for cached in (kv if attn == "causal" else (False,)):
                        value = fd(o, n, attn) * math.exp(SEED_EFFECT[seed] + own)
                        rows.append(dict(
                            run_id=f"{head}_s{seed}_{tail}", recipe=recipe, label=head.split("_")[0], grids=grids,
                            data="digits", model=model, train_order=order, train_schedule=schedule,
                            train_num_steps=None, train_seed=seed, ckpt_step=100, ema=True, infer_order=o,
                            infer_schedule="cosine", num_steps=n, cfg_scale=1.0, kv_cache=cached, attn=attn,
                            extractor=extractor, seed=0, fd=value, fd_lo=value - 0.3, fd_hi=value + 0.3,
                            decoder_attn=dec, first_set_loss=fsl,
                            sec_per_image=1e-3 * n * (1 if cached else 4) * (1 + 0.01 * seed)))


SEED_EFFECT = {0: 0.25, 1: -0.2, 2: 0.05, 3: -0.1}  # larger than most planted gaps: only pairing sees them


def _fixed(o):
    return lambda io, n, attn: OWN_N[o] + (30 if io != o else 200 / n if n < 64 else 0)


def _random(io, n, attn):
    return 18 + (1 if io not in ("random",) and n == 64 else 0) + (20 / n if n < 64 else 0)


def full_runs(drop: tuple[str, ...] = (), seeds=(0, 1, 2)) -> pd.DataFrame:
    """Every grid, built so that every finding is reproduced; ``drop``: grids left out."""
    rows, kw = [], dict(seeds=seeds)
    grids = lambda *g: ",".join(x for x in g if x not in drop)  # noqa: E731
    for i, o in enumerate(ORDERS):
        extra = {"raster": ("spectrum", "anneal"), "random": ("intervals", "anneal")}.get(o, ())
        g = grids("orders", *extra)
        if not g:
            continue
        fd = _random if o == "random" else _fixed(o)
        if "orders" in g:
            _recipe(rows, f"{o}-64-ar_tiny_digits_00000{i}", g, o, "ar", "64", fd, kv=(True, False), **kw)
            _recipe(rows, f"{o}-64-ar_tiny_digits_00000{i}", g, o, "ar", "64", fd, ks=(64,), orders=ORDERS, **kw)
        if "anneal" in g:  # raster and random sampled in both orders at every K
            far = (lambda io, n, a: 10 + (200 / n if n < 64 else 0) if io == "raster" else 80 if n < 64 else 40)
            _recipe(rows, f"{o}-64-ar_tiny_digits_00000{i}", g, o, "ar", "64", far if o == "raster" else fd,
                    orders=["raster", "random"], **kw)
    if "spectrum" not in drop:
        _recipe(rows, "raster-64-ar_gpt-tiny_digits_aaaaaa", "spectrum", "raster", "ar", "64",
                lambda io, n, a: 10.1, model="gpt-tiny", ks=(64,), **kw)
        _recipe(rows, "next_scale-4-next_scale_tiny_digits_bbbbbb", "spectrum", "next_scale", "next_scale", "4",
                lambda io, n, a: 30, kv=(True, False), **kw)
    _recipe(rows, "random-2-mar_tiny_digits_cccccc", grids("spectrum", "mar"), "random", "mar", "2",
            lambda io, n, a: (20 if a == "causal" else 16) + 20 / n, fsl=False, attns=("causal", "full"),
            kv=(True, False), **kw)
    _recipe(rows, "random-16-random_tiny_digits_dddddd", grids("spectrum", "intervals"), "random", "random", "16",
            lambda io, n, a: 12 + 10 / n, kv=(True, False), **kw)
    if "intervals" not in drop:
        for k, base in (("2", 16), ("2_32", 13)):
            _recipe(rows, f"random-{k}-random_tiny_digits_eeeee{len(k)}", "intervals", "random", "random", k,
                    lambda io, n, a, b=base: b + 10 / n, **kw)
    _recipe(rows, "random-4-random_tiny_digits_ffffff", grids("intervals", "mar"), "random", "random", "4",
            lambda io, n, a: (15 if a == "causal" else 15.5) + 10 / n, attns=("causal", "full"), **kw)
    if "mar" not in drop:
        both = dict(attns=("causal", "full"), **kw)
        _recipe(rows, "random-2-mar_tiny_digits_111111", "mar", "random", "mar", "2",
                lambda io, n, a: (20.05 if a == "causal" else 16) + 20 / n, **both)
        _recipe(rows, "random-2-random_tiny_digits_222222", "mar", "random", "random", "2",
                lambda io, n, a: (40 if a == "causal" else 35) + 20 / n, fsl=False, **both)
        _recipe(rows, "random-2-mar_tiny_digits_333333", "mar", "random", "mar", "2", lambda io, n, a: 15 + 20 / n,
                fsl=False, dec="full", attns=("full",), **kw)
    if "anneal" not in drop:
        _recipe(rows, "anneal-64-ar_tiny_digits_444444", "anneal", "anneal", "ar", "64",
                lambda io, n, a: 10.02 + (200 / n if n < 64 else 0) if io == "raster" else 40,
                orders=["raster", "random"], **kw)
    rows = [r for r in rows if r["grids"]]
    return table.prepare(pd.DataFrame(rows), [])


def verdicts(results):
    return {r.finding.number: r.verdict for r in results if r.data == "digits"}


@pytest.fixture(scope="module")
def full():
    """(per-run rows, aggregated rows, results) of the full synthetic table, built once."""
    runs = full_runs()
    pts = table.aggregate(runs)
    return runs, pts, F.check_all(pts, runs)


def test_full_table_reproduces_every_finding(full):
    runs, _, results = full
    assert verdicts(results) == {n: "reproduced" for n in range(1, 11)}, [
        (r.finding.number, c.name, c.verdict, c.reason) for r in results for c in r.comparisons
        if c.primary and c.verdict != "reproduced"]
    for r in results:  # one primary comparison per finding (finding 1: presence checks only)
        assert sum(c.primary for c in r.comparisons) == (0 if r.finding.number == 1 else 1), r.finding.number
        assert r.nll_verdict == ("not measured")
    best = next(c for r in results if r.finding.number == 5 for c in r.comparisons if c.claim == "info")
    assert "ours training K = 16" in best.reason
    f2 = next(r for r in results if r.finding.number == 2).primary
    assert f2.claim == "not_worse" and f2.margin == V.MATCH and f2.test.n == 3  # three seeds paired
    assert f2.test.ratio == pytest.approx(10 / 10.1, rel=0.03) and f2.test.ci_hi < 1 + V.MATCH
    f7 = next(r for r in results if r.finding.number == 7).primary
    assert f7.metric == "sec_per_image" and f7.k == "16" and f7.test.ratio == pytest.approx(0.25)
    f10 = [c for r in results if r.finding.number == 10 for c in r.comparisons if c.claim == "info"]
    gap = float(re.search(r"= ([\d.]+);", f10[0].reason).group(1))
    assert gap == pytest.approx((80 - 40) / (80 - 23), rel=0.05)  # K = 4, all in random order


def test_the_shared_seed_effect_is_paired_away(full):
    """The seed effect (up to 25% on FD, shared by every recipe) swamps several planted gaps, yet the paired tests
    find them: e.g. full attention's FD interval across seeds reaches below causal's mean, the ratio's lies
    well below 1."""
    _, pts, results = full
    f9 = next(r for r in results if r.finding.number == 9).primary
    assert f9.a.lo < f9.b.mean and f9.test.ci_hi < 0.9  # unpaired, the two overlap; paired, A is clearly lower


def _scaled(runs, keep, factors):
    """``runs`` with the FD of the rows ``keep`` scaled per training seed (``factors``: seed -> factor)."""
    out = runs.copy()
    out.loc[keep, "fd"] = out.loc[keep, "fd"] * out.loc[keep, "train_seed"].map(factors)
    return table.prepare(out, [])


def test_contradicted_undecidable_and_inconclusive_findings(full):
    runs, _, _ = full
    worse = _scaled(runs, runs["model"].eq("gpt-tiny"), {0: 0.25, 1: 0.25, 2: 0.25})
    assert verdicts(F.check_all(table.aggregate(worse), worse))[2] == "contradicted"  # FMT clearly worse
    # raster's seeds spread wide: its ratio to the other orders is not decided, and 3 seeds are far too few
    noisy = _scaled(runs, runs["train_order"].eq("raster") & runs["grids"].str.contains("orders"),
                    {0: 0.6, 1: 1.0, 2: 1.7})
    f3 = next(r for r in F.check_all(table.aggregate(noisy), noisy) if r.finding.number == 3)
    assert f3.verdict == "undecidable" and f3.primary.main.needed > 3
    assert "undecidable with 3 seeds" in R.verdict_text(f3)
    # a secondary comparison contradicted (spiral now lower than raster) leaves the finding reproduced
    spiral = _scaled(runs, runs["train_order"].eq("spiral") & runs["infer_order"].eq("spiral"),
                     {0: 0.5, 1: 0.5, 2: 0.5})
    f3 = next(r for r in F.check_all(table.aggregate(spiral), spiral) if r.finding.number == 3)
    side = next(c for c in f3.comparisons if c.name.startswith("raster < spiral"))
    assert side.verdict == "contradicted" and f3.verdict == "reproduced"
    # without the per-run table there are no paired seeds: nothing is decided
    assert verdicts(F.check_all(table.aggregate(runs)))[2] == "inconclusive"


def test_partial_and_single_seed_tables():
    runs = full_runs(drop=("mar", "anneal"), seeds=(0,))
    results = F.check_all(table.aggregate(runs), runs)
    v = verdicts(results)
    assert v[8] == v[10] == "not run" and v[3] == "inconclusive"  # one seed: no paired test
    f9 = next(r for r in results if r.finding.number == 9)
    assert f9.verdict == "not run"
    f3 = next(r for r in results if r.finding.number == 3)
    assert all("1 paired seed: no test" in c.reason for c in f3.comparisons if c.claim == "less")
    f1 = next(r for r in results if r.finding.number == 1)
    assert f1.verdict == "reproduced"  # the spectrum grid is there


def test_nll_verdicts_when_the_table_has_them(full):
    runs, _, _ = full
    nll = runs.assign(nll_bpt=runs["fd"] / 10)  # the NLL orders the recipes as the FD does
    results = F.check_all(table.aggregate(nll), nll)
    assert {r.nll_verdict for r in results if r.finding.number not in (1, 7)} == {"reproduced"}
    f7 = next(r for r in results if r.finding.number == 7)
    assert f7.nll_verdict == "not measured"  # a timing claim has no NLL


def test_two_data_sets_reported_apart(full):
    runs, pts, _ = full
    fashion = runs[runs["grids"].str.contains("orders")].assign(extractor="fashion_mnist_cnn", data="codes")
    fashion = fashion[fashion["num_steps"].le(49)]  # no K = 64 there: N is 49 for fashion, here 16
    both = pd.concat([runs, fashion], ignore_index=True)
    # aggregate groups by extractor, so the digits points can be reused
    results = F.check_all(pd.concat([pts, table.aggregate(fashion)], ignore_index=True), both)
    by = {(r.finding.number, r.data) for r in results}
    assert (3, "digits") in by and (3, "fashion_mnist") in by and (4, "fashion_mnist") in by
    assert (8, "fashion_mnist") not in by  # not run there while digits ran it: left out
    assert "DATA=fashion_mnist" in next(r for r in results if r.data == "fashion_mnist").commands[0]


# ---- the report ---------------------------------------------------------------------------------------------------

def test_report_on_empty_root(tmp_path, capsys):
    out = tmp_path / "docs" / "FINDINGS.md"
    assert cli(["report", f"root={tmp_path / 'none'}", f"out={out}", f"figures={tmp_path}"]) == 0
    text = out.read_text()
    assert "every finding is not run" in text and "Verdict rule" in text
    summary = text.split("## Summary")[1].split("\n## ")[0]
    assert summary.count("**not run**") == 10 and "reproduced" not in summary
    assert "make sweep-mar SEEDS=0,1,2" in text and "make sweep-anneal SEEDS=0,1,2" in text
    csv = pd.read_csv(out.with_name("findings.csv"))
    assert set(csv["finding"]) == set(range(1, 11)) and set(csv["finding_verdict"]) == {"not run"}


def test_report_on_full_table(full, tmp_path):
    runs, _, results = full
    out = tmp_path / "FINDINGS.md"
    (tmp_path / "orders_order_matrix_digits_cnn.png").write_bytes(b"")
    text = R.render(results, "runs", runs, out, tmp_path)
    summary = text.split("## Summary")[1].split("\n## ")[0]
    for n in range(1, 11):
        row = next(line for line in summary.splitlines() if line.startswith(f"| {n} |"))
        assert "**reproduced**" in row and "not measured" in row
    assert f"from {runs['run_id'].nunique()} runs (training seeds 0, 1, 2)" in text
    assert "paired seeds in this report: digits: 3" in text
    assert "[orders_order_matrix_digits_cnn.png](orders_order_matrix_digits_cnn.png)," in text  # drawn: no note
    assert "orders_fd_vs_steps_digits_cnn.png) (not drawn yet)" in text
    assert "ours training K = 16" in text and "paper: 16" in text
    assert "## Seeds: power from this pilot" in text and "**Design (fixed before the results).**" in text
    assert "| **primary** | FMT AR no worse than GPT at K = N | no worse than (margin 10%) | 64 |" in text
    assert "**Verdict (NLL, `nll_bpt`): not measured**" in text and "**Metric floor:** not set" in text
    frame = R.csv_rows(results)
    assert set(frame["finding_verdict"]) == {"reproduced"} and frame["primary"].sum() == 9
    assert frame.loc[frame["primary"], "ratio"].notna().all()


def test_findings_json_and_forest_plots(full, tmp_path):
    _, _, results = full
    written = R.write_extras(results, tmp_path / "FINDINGS.md", tmp_path)
    data = json.loads((tmp_path / "findings.json").read_text())
    assert [d["id"] for d in data] == list(range(1, 11)) and data[0]["primary"] is None
    f8 = next(d for d in data if d["id"] == 8)
    assert f8["verdict"] == {"fd": "reproduced", "nll": "not measured"} and f8["n_pairs"] == 3
    first = f8["comparisons"][0]
    assert first["primary"] and first["name"] == f8["primary"] and first["claim"] == "less" and first["K"] == "16"
    assert {"A", "B", "metric", "margin", "n_pairs", "ratio", "ci_lo", "ci_hi", "p", "p_adj", "verdict"} <= set(first)
    alike = f8["comparisons"][1]
    assert alike["claim"] == "similar" and alike["margin"] == V.MATCH and alike["p_adj"] >= alike["p"]
    forests = sorted(p.name for p in written if p.suffix == ".png")
    assert forests == sorted(FO.forest_name(n, "digits") for n in range(2, 11))  # finding 1 has no ratios
    before = (tmp_path / "forest_3_digits.png").read_bytes()
    R.write_extras(results, tmp_path / "FINDINGS.md", tmp_path)
    assert (tmp_path / "forest_3_digits.png").read_bytes() == before  # deterministic


def test_power_rows_and_the_seeds_plan(full):
    _, _, results = full
    rows = P.power_rows(results)
    assert len(rows) == 9 and all(r["pilot_n"] == 3 for r in rows)
    assert {r["grid"] for r in rows} == {"spectrum", "orders", "intervals", "mar", "anneal"}
    fake = [dict(finding=f, data="digits", grid=g, pilot_n=3, needed=n)
            for f, g, n in ((2, "spectrum", 40), (6, "spectrum", 8), (3, "orders", 6), (5, "intervals", 12))]
    minutes = {("spectrum", "digits"): 10.0, ("orders", "digits"): 10.0, ("intervals", "digits"): 10.0}
    plan = {p["grid"]: p for p in P.seeds_plan(fake, minutes, budget_minutes=200)}
    assert plan["orders"]["planned"] == 6 and plan["orders"]["decided"] == [3]  # 5 is the minimum, 6 needed
    assert plan["spectrum"]["planned"] == 8 and plan["spectrum"]["short"] == [(2, 40)]  # 40 does not fit
    assert plan["intervals"]["planned"] == 12 and sum(p["minutes"] for p in plan.values()) <= 200
    tight = {p["grid"]: p["planned"] for p in P.seeds_plan(fake, minutes, budget_minutes=75)}
    assert tight == {"orders": 6, "spectrum": 5, "intervals": 5}  # the minimum (60 min) and the one raise that fits
    manifest = {"grid": "mar", "data": None, "runs": [{"run_id": f"r{i}", "seed": i % 3} for i in range(15)],
                "sweeps": [{"seconds": 1200.0, "trained": 12}, {"seconds": 60.0, "trained": 0}]}
    assert P.grid_minutes_per_seed([manifest]) == {("mar", "digits"): pytest.approx(1200 / 12 * 5 / 60)}


def test_report_rewrites_only_the_readme_block(full, tmp_path):
    """``--readme`` replaces the text between the markers with the verdicts, keeps the rest byte for byte, and
    leaves a file without markers untouched."""
    runs, _, results = full
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nhand-written 1.5\n\n", "\n\n## Speed\n\nmore text\n"
    readme.write_text(before + R.README_START + "\nstale 9.99\n" + R.README_END + after)
    assert R.update_readme(readme, R.readme_block(results, "runs", runs))
    text = readme.read_text()
    assert text.startswith(before + R.README_START) and text.endswith(R.README_END + after)
    assert "stale 9.99" not in text and text.count(R.README_START) == 1 == text.count(R.README_END)
    block = text[text.index(R.README_START):text.index(R.README_END)]
    assert f"from {runs['run_id'].nunique()} archived runs" in block
    for n in range(1, 11):
        assert "**reproduced**" in next(line for line in block.splitlines() if line.startswith(f"| {n} |"))
    assert R.update_readme(readme, R.readme_block(results, "runs", runs)) and readme.read_text() == text  # stable
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers 1.5\n")
    assert not R.update_readme(plain, "x") and plain.read_text() == "no markers 1.5\n"
    assert not R.update_readme(tmp_path / "missing.md", "x")
