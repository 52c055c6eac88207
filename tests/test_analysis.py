"""analysis/: the results table and the trade-off figures, on a synthetic results tree (no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from sar_lightning.analysis import plots as plot_tradeoffs
from sar_lightning.analysis import table as collect
from sar_lightning.cli import main as cli

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"  # the command-line scripts

ORDERS = ["raster", "fixed_random", "random"]  # fixed_random: an order name with an underscore


def _row(run_id, order, k, fd, kv=True, infer_order=None, attn="causal", extractor="digits_cnn", ckpt=100, **kw):
    return dict(run_id=run_id, data="digits", model="tiny", params=1, train_order=order, train_schedule="ar",
                train_num_steps=None, train_num_steps_range=None, ckpt_step=ckpt, ema=True,
                infer_order=infer_order or order, infer_schedule="cosine", num_steps=k, cfg_scale=1.0,
                cfg_schedule="constant", temperature=1.0, top_k=None, top_p=None, kv_cache=kv, attn=attn,
                num_samples=100, reference="val", extractor=extractor, seed=0, fd=fd, kid=0.1, kid_std=0.01,
                precision=0.5, recall=0.5, class_acc=0.9, sec_per_image=1e-3 * k * (1 if kv else 4), batch_size=8,
                device="cpu", world_size=1, reference_name="digits:val", git_sha="x") | kw


def _run(root: Path, run_id: str, rows: list[dict], decoder_attn: str = "block_causal") -> str:
    (root / run_id).mkdir(parents=True)
    (root / run_id / "config.yaml").write_text(f"model: {{name: tiny, decoder_attn: {decoder_attn}, "
                                               "first_set_loss: false}\n")
    (root / run_id / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_id


def _manifest(root: Path, grid: str, runs: dict[str, str]) -> None:
    (root / "sweeps").mkdir(exist_ok=True)
    (root / "sweeps" / f"{grid}-smoke.json").write_text(json.dumps({
        "grid": grid, "profile": "smoke", "question": f"Question of {grid}?",
        "runs": [{"run_id": rid, "label": label, "status": "done"} for rid, label in runs.items()]}))


def _tree(root: Path, matrix: bool = True, uncached: bool = True) -> Path:
    """3 runs of the orders grid, 2 of the mar grid, one outside any grid with another extractor."""
    orders = {}
    for i, order in enumerate(ORDERS):
        rid = f"{order}-16-ar_tiny_digits_s0_00000{i}"
        rows = [_row(rid, order, k, 100 / k + i) for k in (1, 4, 16)]
        rows += [_row(rid, order, k, 100 / k + i, kv=False) for k in (1, 16)] if uncached else []
        rows += [_row(rid, order, 16, 50.0 + i, infer_order=o) for o in ORDERS if o != order] if matrix else []
        rows.append(_row(rid, order, 16, 999.0, ckpt=50))  # an earlier checkpoint: never plotted
        orders[_run(root, rid, rows)] = order
    _manifest(root, "orders", orders)
    mar = {"random-2-mar_tiny_digits_s0_aaaaaa": "MAR split", "random-2-mar_tiny_digits_s0_bbbbbb": "full decoder"}
    a, b = mar
    _run(root, a, [_row(a, "random", k, 30 / k + 5) for k in (1, 4, 16)]
         + [_row(a, "random", k, 20 / k + 5, kv=False, attn="full") for k in (1, 4, 16)])
    _run(root, b, [_row(b, "random", k, 25 / k + 4, kv=False, attn="full") for k in (1, 4, 16)], "full")
    _manifest(root, "mar", mar)
    c = "next_scale-5-next_scale_B_imagenet_vq16_s0_cccccc"  # no manifest: label from the run id
    _run(root, c, [_row(c, "next_scale", k, 10.0 + k, model="B", extractor="inception") for k in (1, 5)])
    return root


def _figures(out: Path) -> set[str]:
    png, pdf = {p.stem for p in out.glob("*.png")}, {p.stem for p in out.glob("*.pdf")}
    assert png == pdf and all(p.stat().st_size > 1000 for p in out.glob("*.p*"))
    return png


def test_collect_finds_every_row_with_labels_grids_and_model_options(tmp_path):
    df = collect.collect(_tree(tmp_path / "runs"))
    assert len(df) == 3 * (3 + 2 + 2 + 1) + 6 + 3 + 2 and df["run_id"].nunique() == 6
    labels = df.groupby("run_id")["label"].first()
    assert set(labels) == set(ORDERS) | {"MAR split", "full decoder", "next_scale-5-next_scale"}
    grids = df.groupby("label")["grids"].first()
    assert grids["raster"] == "orders" and grids["MAR split"] == "mar" and grids["next_scale-5-next_scale"] == ""
    assert set(df[df["label"] == "full decoder"]["decoder_attn"]) == {"full"} and not df["first_set_loss"].any()
    digits = df["extractor"] == "digits_cnn"
    assert (df.loc[digits, "fd_digits_cnn"] == df.loc[digits, "fd"]).all()
    assert df.loc[digits, "fd_inception"].isna().all()
    assert (df.loc[~digits, "fd_inception"] == df.loc[~digits, "fd"]).all()


def test_table_is_written_atomically_and_reloads_equal(tmp_path):
    df = collect.collect(_tree(tmp_path / "runs"))
    parquet, csv = collect.write_table(df, tmp_path / "out" / "results")
    assert (parquet.name, csv.name) == ("results.parquet", "results.csv")
    pd.testing.assert_frame_equal(collect.load_table(parquet), df)
    pd.testing.assert_frame_equal(collect.load_table(csv), df, check_dtype=False)
    assert sorted(p.name for p in parquet.parent.iterdir()) == ["results.csv", "results.parquet"]  # no temp files
    assert cli(["collect", f"root={tmp_path / 'runs'}", f"out={tmp_path / 'again'}"]) == 0
    assert (tmp_path / "again.parquet").exists() and (tmp_path / "again.csv").exists()


def test_empty_root_says_so_and_exits_nonzero(tmp_path):
    (tmp_path / "empty").mkdir()
    assert collect.collect(tmp_path / "empty").empty
    script = subprocess.run([sys.executable, str(ANALYSIS / "collect.py"), "--root", str(tmp_path / "empty"),
                             "--out", str(tmp_path / "table")], capture_output=True, text=True, timeout=60)
    assert script.returncode == 1 and f"no results under {tmp_path / 'empty'}" in script.stderr
    assert not list(tmp_path.glob("table*"))


def test_figures_for_the_full_table_one_per_extractor(tmp_path, capsys):
    root, out = _tree(tmp_path / "runs"), tmp_path / "fig"
    assert cli(["plots", f"root={root}", f"out={out}"]) == 0
    per_extractor = {f"{fig}_{ext}" for fig in ("fd_vs_steps", "fd_vs_time") for ext in ("digits_cnn", "inception")}
    assert _figures(out) == per_extractor | {"order_matrix_digits_cnn", "mar_ablation_digits_cnn"}
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Results summary")
    assert "## fd_digits_cnn" in summary and "## FID (fd_inception)" in summary  # never mixed in one table
    assert "999" not in summary  # each run at its latest checkpoint
    assert "K=16: 0.016 / 0.064 (4.0x)" in summary  # the KV-cache speed-up at the largest K
    assert "MAR split (full attn at inference)" in summary and "earlier checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize("grid, figures", [
    ("orders", {"orders_fd_vs_steps_digits_cnn", "orders_fd_vs_time_digits_cnn", "orders_order_matrix_digits_cnn"}),
    ("mar", {"mar_fd_vs_steps_digits_cnn", "mar_fd_vs_time_digits_cnn", "mar_mar_ablation_digits_cnn"})])
def test_figures_for_one_grid(tmp_path, grid, figures):
    root, out = _tree(tmp_path / "runs"), tmp_path / "fig"
    assert cli(["plots", f"root={root}", f"grid={grid}", f"out={out}"]) == 0
    assert _figures(out) == figures
    summary = (out / f"{grid}_summary.md").read_text()
    assert summary.startswith(f"# Question of {grid}?")
    assert ("raster" in summary) == (grid == "orders") and ("MAR split" in summary) == (grid == "mar")
    # drawn again from the same table: the same bytes (no dates in the PDFs), no temporary file left
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli(["plots", f"root={root}", f"grid={grid}", f"out={out}"]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_figures_for_a_partial_table_skip_what_is_missing(tmp_path, capsys):
    df = collect.collect(_tree(tmp_path / "runs", matrix=False, uncached=False))
    table = tmp_path / "partial.csv"
    df.drop(columns=["sec_per_image", "kv_cache", "grids"]).to_csv(table, index=False)
    out = tmp_path / "fig"
    assert cli(["plots", f"table={table}", f"out={out}"]) == 0
    assert _figures(out) == {"fd_vs_steps_digits_cnn", "fd_vs_steps_inception"}
    said = capsys.readouterr().out
    assert "fd_vs_time: no sec_per_image" in said and "order_matrix (digits_cnn)" in said and "no kv_cache" in said
    assert "K=16: - / -" in (out / "summary.md").read_text()


def test_no_results_is_said_clearly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "fig"
    assert cli(["plots", f"root={tmp_path / 'empty'}", f"out={out}"]) == 1
    assert f"no results under {tmp_path / 'empty'}" in capsys.readouterr().err
    assert cli(["plots", f"table={tmp_path / 'missing.parquet'}", f"out={out}"]) == 1
    assert "no results table at" in capsys.readouterr().err
    root = _tree(tmp_path / "runs")
    assert cli(["plots", f"root={root}", "grid=nosuchgrid", f"out={out}"]) == 1
    assert "no results for grid 'nosuchgrid'" in capsys.readouterr().err
    assert not out.exists()


def test_pareto_front_is_exactly_the_non_dominated_points():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 30))
        # small integers in half the trials: ties in cost, in value and identical points
        cost, value = (rng.integers(0, 5, (2, n)).astype(float) if trial % 2 else rng.random((2, n)))
        front = plot_tradeoffs.pareto_front(cost, value)
        dominated = {i for i in range(n) for j in range(n)
                     if cost[j] <= cost[i] and value[j] <= value[i] and (cost[j] < cost[i] or value[j] < value[i])}
        assert set(front.tolist()) == set(range(n)) - dominated and len(front) == len(set(front.tolist()))
        assert (np.diff(cost[front]) >= 0).all()  # sorted by cost, ready to draw


# ---- intervals: means over training seeds, with bands, error bars and marks ------------------------------------

OFFSET = {0: -1.0, 1: 0.0, 2: 2.5}  # each training seed's shift of the FD


def _replicas(seeds=(0, 1, 2), bootstrap=False) -> pd.DataFrame:
    """Two recipes (raster, random) of the orders and mar grids, one run per seed, at K = 1, 4, 16, as collect
    gives them; with ``bootstrap`` each row carries its evaluation's interval [fd - 1 - i / 2, fd + 2]."""
    rows = []
    for i, order in enumerate(("raster", "random")):
        for s in seeds:
            rid = f"{order}-16-ar_tiny_digits_s{s}_00000{i}"
            for k in (1, 4, 16):
                fd = 100 / k + i + OFFSET[s] * (1 + k / 16)
                extra = dict(fd_lo=fd - 1 - i / 2, fd_hi=fd + 2, fd_std=0.5) if bootstrap else {}
                rows.append(_row(rid, order, k, fd, recipe=f"{order}-16-ar_tiny_digits_00000{i}", train_seed=s,
                                 label=order, grids="orders,mar", decoder_attn="block_causal", **extra))
    return pd.DataFrame(rows)


def _t_interval(values) -> tuple[float, float, float]:
    from scipy import stats

    x = np.asarray(values, float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, by name, kept open instead of saved."""
    import matplotlib.pyplot as plt

    figs = {}
    monkeypatch.setattr(plot_tradeoffs, "_save", lambda fig, out, name, written: (figs.update({name: fig}),
                                                                                  written.append(name)))
    yield figs
    plt.close("all")


def _draw(df: pd.DataFrame, plot) -> dict[str, pd.DataFrame]:
    notes: list[str] = []
    pts = plot_tradeoffs.points(collect.prepare(df, notes))
    return plot(pts, None, "", None, plot_tradeoffs._styles(pts), [], notes)


def _title(ax) -> str:
    return " ".join(ax.get_title().split())  # unwrapped


def _bands(ax) -> list[dict[float, tuple[float, float]]]:
    """Per shaded band (fill_between), ``{x: (lowest, highest y)}`` of its polygon, lowest band first."""
    from matplotlib.collections import PolyCollection

    bands = []
    for coll in ax.collections:
        if isinstance(coll, PolyCollection):
            v = coll.get_paths()[0].vertices
            bands.append({float(x): (v[v[:, 0] == x, 1].min(), v[v[:, 0] == x, 1].max()) for x in np.unique(v[:, 0])})
    return sorted(bands, key=lambda b: b[16.0][0])


def test_three_seeds_draw_the_mean_and_the_t_interval(figures):
    df = _replicas()
    expected = {(order, k): _t_interval(df[(df["train_order"] == order) & (df["num_steps"] == k)]["fd"])
                for order in ("raster", "random") for k in (1, 4, 16)}
    d = _draw(df, plot_tradeoffs.plot_fd_vs_steps)["fd_vs_steps_digits_cnn"]
    assert len(d) == 6 and (d["n_seeds"] == 3).all() and (d["interval"] == "seeds").all()
    for _, r in d.iterrows():
        assert (r["fd_mean"], r["fd_lo"], r["fd_hi"]) == pytest.approx(expected[(r["line"], r["num_steps"])])
    ax = figures["fd_vs_steps_digits_cnn"].axes[0]
    bands = _bands(ax)  # raster's band lies below random's at every K
    assert [{k: pytest.approx(b[k]) for k in b} for b in bands] == [
        {float(k): expected[(order, k)][1:] for k in (1, 4, 16)} for order in ("raster", "random")]
    means = sorted(list(line.get_ydata()) for line in ax.lines if line.get_label() in ("raster", "random"))
    assert means == [pytest.approx([expected[(o, k)][0] for k in (1, 4, 16)]) for o in ("raster", "random")]
    assert "95% t interval across 3 seeds" in _title(ax)

    front = _draw(df, plot_tradeoffs.plot_fd_vs_time)["fd_vs_time_digits_cnn"]  # the Pareto front of the means
    ax = figures["fd_vs_time_digits_cnn"].axes[0]
    dashed = next(line for line in ax.lines if line.get_linestyle() == "--")
    assert set(np.round(dashed.get_ydata(), 9)) <= set(np.round(front["fd_mean"], 9))
    assert "bars: 95% t interval across 3 seeds" in _title(ax)

    mar = _draw(df, plot_tradeoffs.plot_mar_ablation)["mar_ablation_digits_cnn"]
    ax = figures["mar_ablation_digits_cnn"].axes[0]
    bar_series = [c for c in ax.containers if isinstance(c, BarContainer)]
    for bars, order in zip(bar_series, ("random", "raster"), strict=True):  # one bar series per line, sorted
        assert [b.get_height() for b in bars] == pytest.approx([expected[(order, k)][0] for k in (1, 4, 16)])
        whiskers = [(s[:, 1].min(), s[:, 1].max()) for s in bars.errorbar.lines[2][0].get_segments()]
        assert whiskers == [pytest.approx(expected[(order, k)][1:]) for k in (1, 4, 16)]
    assert (mar["interval"] == "seeds").all()

    summary = plot_tradeoffs.summary_table(collect.prepare(df, []), None)
    mean, lo, hi = expected[("raster", 16)]
    assert f"| {mean:.2f} [{lo:.2f}, {hi:.2f}], 3 seeds |" in summary and "95% t interval across 3 seeds" in summary


def test_one_seed_with_a_bootstrap_interval_draws_it(figures):
    df = _replicas(seeds=(0,), bootstrap=True)
    d = _draw(df, plot_tradeoffs.plot_fd_vs_steps)["fd_vs_steps_digits_cnn"]
    assert (d["interval"] == "bootstrap").all() and (d["n_seeds"] == 1).all()
    ax = figures["fd_vs_steps_digits_cnn"].axes[0]
    rows = {(r["train_order"], r["num_steps"]): r for _, r in df.iterrows()}
    assert [{k: pytest.approx(b[k]) for k in b} for b in _bands(ax)] == [
        {float(k): (rows[(o, k)]["fd_lo"], rows[(o, k)]["fd_hi"]) for k in (1, 4, 16)} for o in ("raster", "random")]
    assert "95% bootstrap interval over samples (1 seed)" in _title(ax)
    summary = plot_tradeoffs.summary_table(collect.prepare(df, []), None)
    r = rows[("random", 16)]
    assert f"{r['fd']:.2f} [{r['fd_lo']:.2f}, {r['fd_hi']:.2f}], 1 seed (bootstrap)" in summary


def test_order_matrix_marks_the_cells_whose_interval_overlaps_the_own_order_cell(figures):
    def row(order, infer, fd, seed=0, lo=None, hi=None):
        extra = dict(fd_lo=lo, fd_hi=hi) if lo is not None else {}
        return _row(f"{order}-16-ar_tiny_digits_s{seed}_abcdef", order, 16, fd, infer_order=infer, label=order,
                    recipe=f"{order}-16-ar_tiny_digits_abcdef", train_seed=seed, **extra)

    rows = [row("raster", "raster", 11, lo=10, hi=12), row("raster", "fixed_random", 13, lo=12, hi=14),  # touches
            row("raster", "random", 14, lo=12.5, hi=15),
            row("fixed_random", "fixed_random", 21, lo=20, hi=22), row("fixed_random", "raster", 5.5, lo=5, hi=6),
            row("fixed_random", "random", 21.2, lo=21, hi=21.5)]
    rows += [row("random", "random", 30 + s - 1, seed=s) for s in range(3)]  # t interval about [27.5, 32.5]
    rows += [row("random", "raster", 36 + s - 1, seed=s) for s in range(3)]  # about [33.5, 38.5]
    rows.append(row("random", "fixed_random", 32))  # one seed, no interval: a point inside own's interval
    marked = {("raster", "fixed_random"), ("fixed_random", "random"), ("random", "fixed_random")}
    cells = _draw(pd.DataFrame(rows), plot_tradeoffs.plot_order_matrix)["order_matrix_digits_cnn"]
    assert set(map(tuple, cells.loc[cells["near_own"], ["line", "infer_order"]].to_numpy())) == marked
    ax = figures["order_matrix_digits_cnn"].axes[0]
    ylabels, xlabels = [t.get_text() for t in ax.get_yticklabels()], [t.get_text() for t in ax.get_xticklabels()]
    texts = {(ylabels[round(t.get_position()[1])], xlabels[round(t.get_position()[0])]): t.get_text() for t in ax.texts}
    assert {cell for cell, text in texts.items() if "≈" in text} == marked and len(texts) == 9
    assert texts[("raster", "raster")] == "11.0\n±1.0" and texts[("random", "fixed_random")] == "≈32.0"
    assert texts[("random", "random")].startswith("30.0\n±2.")  # the t half-width, 4.30 / sqrt(3)
    assert "≈: the interval overlaps the own-order cell's" in _title(ax)


def test_old_single_seed_tables_still_plot_without_intervals(tmp_path, figures):
    old = collect.collect(_tree(tmp_path / "runs")).drop(columns=["recipe", "train_seed"])  # before seeds
    assert not {"fd_lo", "fd_hi"} & set(old.columns)
    for plot in (plot_tradeoffs.plot_fd_vs_steps, plot_tradeoffs.plot_fd_vs_time, plot_tradeoffs.plot_order_matrix,
                 plot_tradeoffs.plot_mar_ablation):
        for d in _draw(old, plot).values():
            assert (d["interval"] == "none").all() and (d["fd_mean"] == d["fd_lo"]).all()
    assert len(figures) == 6
    for name, fig in figures.items():
        ax = fig.axes[0]
        assert not _bands(ax) and "interval" not in _title(ax), name
        assert not any(isinstance(c, ErrorbarContainer) for c in ax.containers), name
        assert not any("±" in t.get_text() or "≈" in t.get_text() for t in ax.texts), name
    summary = plot_tradeoffs.summary_table(collect.prepare(old, []), None)
    assert "seed" not in summary and "[" not in summary
    table, out = tmp_path / "old.csv", tmp_path / "fig"
    old.to_csv(table, index=False)
    assert cli(["plots", f"table={table}", f"out={out}"]) == 0
    assert (out / "summary.md").read_text() == summary


def test_seed_replicas_of_codes_runs_share_a_recipe_without_the_codes_on_this_machine(tmp_path, monkeypatch):
    """The archive's Fashion-MNIST runs name a codes folder a fresh clone does not have: their recipe comes
    from the run id and the config alone, so the two seeds still fold into one recipe."""
    archive = Path(__file__).resolve().parents[1] / "docs" / "results" / "runs"
    runs = sorted(archive.glob("raster-49-ar_tiny_fashion_mnist_vq7_s*"))
    assert len(runs) >= 2
    root = tmp_path / "root"
    for run in runs:
        (root / run.name).mkdir(parents=True)
        for name in ("config.yaml", "results.jsonl"):
            (root / run.name / name).write_text((run / name).read_text())
    monkeypatch.chdir(tmp_path)  # data/fashion_mnist_vq7 is not here
    df = collect.collect(root)
    assert df["recipe"].nunique() == 1 and df["run_id"].nunique() == len(runs)
    assert df["recipe"].iloc[0].startswith("raster-49-ar_tiny_fashion_mnist_vq7_")
    assert df["recipe"].iloc[0] == collect._recipe(root / runs[0].name)
