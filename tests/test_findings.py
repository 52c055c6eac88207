"""sar_lightning.analysis.findings, .selection, .verdicts and .report: the verdict rules and the report, on synthetic
tables (no training)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sar_lightning.analysis import findings as F
from sar_lightning.analysis import report as R
from sar_lightning.analysis import selection as S
from sar_lightning.analysis import table
from sar_lightning.analysis import verdicts as V

KS = (1, 2, 4, 8, 16, 64)
ORDERS = F.ORDER_NAMES
OWN_N = dict(raster=10, snake=13, spiral=14, diagonal=15, next_scale=16, fixed_random=17, random=18)


def _side(mean, half=0.5, n=3):
    return V.Side("x", mean, mean - half, mean + half, n, "seeds" if n > 1 else "bootstrap")


# ---- the rules ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("claim, a, b, verdict", [
    ("less", 10, 20, "reproduced"), ("less", 20, 10, "contradicted"), ("less", 10, 10.5, "inconclusive"),
    ("not_worse", 10.5, 10, "reproduced"), ("not_worse", 5, 10, "reproduced"), ("not_worse", 20, 10, "contradicted"),
    ("similar", 10, 10.5, "reproduced"), ("similar", 5, 10, "contradicted"), ("similar", 20, 10, "contradicted"),
])
def test_judge_each_verdict(claim, a, b, verdict):
    assert V.judge(claim, _side(a), _side(b))[0] == verdict


def test_judge_not_run_tolerance_and_seed_caveats():
    assert V.judge("less", V.Side("a"), _side(3))[0] == "not run"
    assert V.judge("present", V.Side("a"), None)[0] == "not run"
    assert V.judge("not_worse", _side(12, 0.1), _side(10, 0.1), tol=0.2)[0] == "reproduced"  # 11.9 <= 1.2 * 10.1
    assert V.judge("not_worse", _side(12, 0.1), _side(10, 0.1))[0] == "contradicted"
    assert "1 seed: bootstrap interval only" in V.judge("less", _side(1, n=1), _side(5, n=1))[1]
    assert "2 seeds" in V.judge("less", _side(1, n=2), _side(5))[1]
    assert "seed" not in V.judge("less", _side(1), _side(5))[1]


def test_combine():
    c = lambda v: V.Comparison("c", "less", V.Side("a"), verdict=v)  # noqa: E731
    info = S.info("i", "text")
    assert V.combine([c("reproduced"), c("reproduced"), info]) == ("reproduced", False)
    assert V.combine([c("reproduced"), c("contradicted")]) == ("contradicted", False)
    assert V.combine([c("reproduced"), c("inconclusive")]) == ("inconclusive", False)
    assert V.combine([c("reproduced"), c("not run")]) == ("reproduced", True)
    assert V.combine([c("reproduced"), c("not run")], strict=True) == ("not run", True)
    assert V.combine([c("not run"), info]) == ("not run", False)


# ---- a synthetic per-run table through table.prepare + table.aggregate ----------------------------------------------

def _recipe(rows, recipe, grids, order, schedule, k, fd, *, model="tiny", dec="block_causal", fsl=True,
            ks=KS, orders=None, attns=("causal",), kv=(True,), seeds=(0, 1, 2), extractor="digits_cnn"):
    """Per-run result rows of one recipe: ``fd(infer_order, K, attn)`` times a small per-seed factor."""
    head, tail = recipe.rsplit("_", 1)
    for seed in seeds:
        for o in orders or [order]:
            for n in ks:
                for attn in attns:
                    for cached in (kv if attn == "causal" else (False,)):
                        value = fd(o, n, attn) * (1 + 0.002 * (seed - 1))
                        rows.append(dict(
                            run_id=f"{head}_s{seed}_{tail}", recipe=recipe, label=head.split("_")[0], grids=grids,
                            data="digits", model=model, train_order=order, train_schedule=schedule,
                            train_num_steps=None, train_seed=seed, ckpt_step=100, ema=True, infer_order=o,
                            infer_schedule="cosine", num_steps=n, cfg_scale=1.0, kv_cache=cached, attn=attn,
                            extractor=extractor, seed=0, fd=value, fd_lo=value - 0.3, fd_hi=value + 0.3,
                            decoder_attn=dec, first_set_loss=fsl,
                            sec_per_image=1e-3 * n * (1 if cached else 4) * (1 + 0.01 * seed)))


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
        if c.verdict not in ("reproduced", "")]
    best = next(c for r in results if r.finding.number == 5 for c in r.comparisons if c.name == "best training K")
    assert "ours K = 16" in best.reason
    f2 = next(r for r in results if r.finding.number == 2).comparisons[0]
    assert f2.paired is not None and f2.paired[3] == 3  # three seeds paired
    assert f2.paired[0] == pytest.approx(-0.1)
    f7 = next(r for r in results if r.finding.number == 7).comparisons[0]
    assert f7.metric == "sec_per_image" and "4.0x" in f7.reason
    f10 = [c for r in results if r.finding.number == 10 for c in r.comparisons if c.claim == "info"]
    assert "= 0.7018" in f10[0].reason  # K = 4, all in random order: (80 - 40) / (80 - 23)


def test_contradicted_and_inconclusive_findings(full):
    _, pts, _ = full
    gpt = pts["model"].eq("gpt-tiny")
    worse = pts.copy()
    worse.loc[gpt, ["fd_mean", "fd_lo", "fd_hi"]] = [2.5, 2.0, 3.0]
    assert verdicts(F.check_all(worse))[2] == "contradicted"  # FMT clearly worse than the GPT
    # snake as good as raster at K = N: overlap, finding 3 inconclusive
    snake = pts["train_order"].eq("snake") & pts["infer_order"].eq("snake") & pts["num_steps"].eq(64)
    tied = pts.copy()
    tied.loc[snake, ["fd_mean", "fd_lo", "fd_hi"]] = [10.0, 9.0, 11.0]
    assert verdicts(F.check_all(tied))[3] == "inconclusive"


def test_partial_and_single_seed_tables():
    runs = full_runs(drop=("mar", "anneal"), seeds=(0,))
    results = F.check_all(table.aggregate(runs), runs)
    v = verdicts(results)
    assert v[8] == v[10] == "not run" and v[3] == "reproduced"
    f9 = next(r for r in results if r.finding.number == 9)
    assert f9.verdict == "not run"
    f3 = next(r for r in results if r.finding.number == 3)
    assert all("1 seed: bootstrap interval only" in c.reason for c in f3.comparisons if c.claim == "less")
    assert all(c.paired is None for c in f3.comparisons)
    f1 = next(r for r in results if r.finding.number == 1)
    assert f1.verdict == "reproduced"  # the spectrum grid is there


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
    assert R.main(["--root", str(tmp_path / "none"), "--out", str(out), "--figures", str(tmp_path)]) == 0
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
        assert "**reproduced**" in row
    assert f"from {runs['run_id'].nunique()} runs (training seeds 0, 1, 2)" in text
    assert "[orders_order_matrix_digits_cnn.png](orders_order_matrix_digits_cnn.png)," in text  # drawn: no note
    assert "orders_fd_vs_steps_digits_cnn.png) (not drawn yet)" in text
    assert "ours K = 16" in text and "paper: 16" in text
    frame = R.csv_rows(results)
    assert set(frame["finding_verdict"]) == {"reproduced"} and not math.isnan(frame["paired_mean"].dropna().iloc[0])


def test_no_worse_and_alike_need_the_estimate_inside_the_other_interval():
    """Overlapping intervals alone do not reproduce "no worse than": A's mean must lie within B's interval."""
    b = V.Side("B", mean=4.0, lo=1.0, hi=7.0, n_seeds=3, interval="seeds")
    assert V.judge("not_worse", V.Side("A", mean=6.0, lo=2.0, hi=10.0, n_seeds=3, interval="seeds"), b)[0] == \
        "reproduced"
    assert V.judge("not_worse", V.Side("A", mean=17.0, lo=-0.5, hi=35.0, n_seeds=3, interval="seeds"), b)[0] == \
        "inconclusive"
    assert V.judge("not_worse", V.Side("A", mean=20.0, lo=8.0, hi=30.0, n_seeds=3, interval="seeds"), b)[0] == \
        "contradicted"
    assert V.judge("similar", V.Side("A", mean=5.0, lo=2.0, hi=8.0, n_seeds=3, interval="seeds"), b)[0] == "reproduced"
    assert V.judge("similar", V.Side("A", mean=9.0, lo=6.5, hi=11.0, n_seeds=3, interval="seeds"), b)[0] == \
        "inconclusive"


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
