"""analysis/: the results table and the trade-off figures, on a synthetic results tree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
import collect  # noqa: E402
import plot_tradeoffs  # noqa: E402

ORDERS = ["raster", "random"]


def _row(run_id, order, infer_order, k, kv, fd, attn="causal"):
    return dict(run_id=run_id, data="digits", model="tiny", params=1, train_order=order, train_schedule="ar",
                train_num_sets=None, train_num_sets_range=None, ckpt_step=10, ema=True, infer_order=infer_order,
                infer_schedule="cosine", num_steps=k, cfg=1.0, cfg_schedule="constant", temperature=1.0, top_k=None,
                top_p=None, kv_cache=kv, attn=attn, num_samples=100, reference="val", extractor="digits_cnn", seed=0,
                fd=fd, kid=0.1, precision=0.5, recall=0.5, class_acc=0.9, sec_per_image=0.001 * k * (1 if kv else 4),
                batch_size=8, device="cpu", git_sha="x")


def _tree(root: Path, matrix: bool = True, uncached: bool = True, grid: str = "orders") -> Path:
    runs = []
    for i, order in enumerate(ORDERS):
        rid = f"{order}-64-ar_tiny_digits_s0_{i:06d}"
        (root / rid).mkdir(parents=True)
        (root / rid / "config.yaml").write_text("model: {decoder_attn: block_causal, first_set_loss: true}\n")
        rows = [_row(rid, order, order, k, True, 100 / k + i) for k in (1, 4, 64)]
        rows += [_row(rid, order, order, k, False, 100 / k + i) for k in (1, 64)] if uncached else []
        rows += [_row(rid, order, o, 64, True, 50.0 + i) for o in ORDERS if o != order] if matrix else []
        (root / rid / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append({"run_id": rid, "label": f"{order} order", "status": "trained"})
    (root / "sweeps").mkdir()
    (root / "sweeps" / f"{grid}-smoke.json").write_text(json.dumps(
        {"grid": grid, "profile": "smoke", "question": "Which order?", "runs": runs}))
    return root


def test_collect_finds_rows_labels_and_grids_and_round_trips(tmp_path):
    df = collect.collect(_tree(tmp_path / "runs"))
    assert len(df) == 2 * (3 + 2 + 1)
    assert set(df["label"]) == {"raster order", "random order"} and set(df["grids"]) == {"orders"}
    assert (df["fd_digits_cnn"] == df["fd"]).all() and set(df["decoder_attn"]) == {"block_causal"}
    parquet, csv = collect.write_table(df, tmp_path / "table")
    for path in (parquet, csv):
        back = collect.load_table(path)
        assert len(back) == len(df) and np.allclose(back["fd"], df["fd"])
    assert not list(tmp_path.glob(".table*"))  # no temporary files left


@pytest.mark.parametrize("matrix, uncached", [(True, True), (False, False)])
def test_plots_are_written_for_full_and_partial_tables(tmp_path, matrix, uncached):
    root, out = _tree(tmp_path / "runs", matrix, uncached), tmp_path / "fig"
    assert plot_tradeoffs.main(["--root", str(root), "--grid", "orders", "--out", str(out)]) == 0
    names = {p.stem for p in out.glob("*.png")}
    assert {"orders_fd_vs_steps_digits_cnn", "orders_fd_vs_time_digits_cnn"} <= names
    assert ("orders_order_matrix_digits_cnn" in names) == matrix
    assert all(p.stat().st_size > 1000 for p in out.glob("*.p*"))
    assert {p.stem for p in out.glob("*.pdf")} == names
    summary = (out / "orders_summary.md").read_text()
    assert summary.startswith("# Which order?") and "raster order" in summary
    assert ("4.0x" in summary) == uncached  # the cache speed-up column, when uncached rows exist


def test_mar_ablation_bars_for_the_mar_grid(tmp_path):
    root, out = _tree(tmp_path / "runs", grid="mar"), tmp_path / "fig"
    assert plot_tradeoffs.main(["--root", str(root), "--grid", "mar", "--out", str(out)]) == 0
    assert (out / "mar_mar_ablation_digits_cnn.png").exists()


def test_no_results_is_said_clearly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert plot_tradeoffs.main(["--root", str(tmp_path / "empty"), "--out", str(tmp_path / "f")]) == 1
    assert collect.main(["--root", str(tmp_path / "empty"), "--out", str(tmp_path / "t")]) == 1
    assert "no results" in capsys.readouterr().err
    root = _tree(tmp_path / "runs")
    assert plot_tradeoffs.main(["--root", str(root), "--grid", "nosuchgrid", "--out", str(tmp_path / "f")]) == 1


def test_pareto_front_is_exactly_the_non_dominated_points():
    rng = np.random.default_rng(0)
    for _ in range(50):
        cost, value = rng.random(30), rng.random(30)
        front = set(plot_tradeoffs.pareto_front(cost, value).tolist())
        dominated = {i for i in range(30) for j in range(30)
                     if (cost[j] <= cost[i] and value[j] <= value[i]) and (cost[j] < cost[i] or value[j] < value[i])}
        assert front == set(range(30)) - dominated
