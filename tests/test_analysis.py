"""analysis/: the results table and the trade-off figures, on a synthetic results tree (no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sar_lightning import plots as plot_tradeoffs
from sar_lightning import table as collect

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
    assert collect.main(["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "again")]) == 0
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
    assert plot_tradeoffs.main(["--root", str(root), "--out", str(out)]) == 0
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
    assert plot_tradeoffs.main(["--root", str(root), "--grid", grid, "--out", str(out)]) == 0
    assert _figures(out) == figures
    summary = (out / f"{grid}_summary.md").read_text()
    assert summary.startswith(f"# Question of {grid}?")
    assert ("raster" in summary) == (grid == "orders") and ("MAR split" in summary) == (grid == "mar")


def test_figures_for_a_partial_table_skip_what_is_missing(tmp_path, capsys):
    df = collect.collect(_tree(tmp_path / "runs", matrix=False, uncached=False))
    table = tmp_path / "partial.csv"
    df.drop(columns=["sec_per_image", "kv_cache", "grids"]).to_csv(table, index=False)
    out = tmp_path / "fig"
    assert plot_tradeoffs.main(["--table", str(table), "--out", str(out)]) == 0
    assert _figures(out) == {"fd_vs_steps_digits_cnn", "fd_vs_steps_inception"}
    said = capsys.readouterr().out
    assert "fd_vs_time: no sec_per_image" in said and "order_matrix (digits_cnn)" in said and "no kv_cache" in said
    assert "K=16: - / -" in (out / "summary.md").read_text()


def test_no_results_is_said_clearly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "fig"
    assert plot_tradeoffs.main(["--root", str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert f"no results under {tmp_path / 'empty'}" in capsys.readouterr().err
    assert plot_tradeoffs.main(["--table", str(tmp_path / "missing.parquet"), "--out", str(out)]) == 1
    assert "no results table at" in capsys.readouterr().err
    root = _tree(tmp_path / "runs")
    assert plot_tradeoffs.main(["--root", str(root), "--grid", "nosuchgrid", "--out", str(out)]) == 1
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
