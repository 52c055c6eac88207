"""Gather every run's ``results.jsonl`` into one table (Parquet and CSV).

    python analysis/collect.py [--root runs] [--out analysis/results]

One row per (run, checkpoint, sampler setting), as the evaluate command wrote it, plus what the run's
``config.yaml`` and the sweep manifests (``<root>/sweeps/<grid>-<profile>.json``) add: the run's label,
the grids it belongs to, its decoder attention and first-set loss. Plots read only this table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml


def sweep_membership(root: Path) -> dict[str, dict]:
    """``run_id -> {"label": ..., "grids": [...]}`` from every sweep manifest under ``root/sweeps``."""
    out: dict[str, dict] = {}
    for manifest in sorted((root / "sweeps").glob("*.json")):
        m = json.loads(manifest.read_text())
        for run in m.get("runs", []):
            entry = out.setdefault(run["run_id"], {"label": run.get("label"), "grids": []})
            if m["grid"] not in entry["grids"]:
                entry["grids"].append(m["grid"])
    return out


def _run_config(run_dir: Path) -> dict:
    file = run_dir / "config.yaml"
    return yaml.safe_load(file.read_text()) if file.exists() else {}


def collect(root: str | Path = "runs") -> pd.DataFrame:
    """Every result row under ``root``, with run labels, grids and model options; empty if none."""
    root = Path(root)
    members = sweep_membership(root)
    rows = []
    for results in sorted(root.glob("*/results.jsonl")):
        cfg = _run_config(results.parent)
        for line in results.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            member = members.get(row["run_id"], {})
            row["label"] = member.get("label") or row["run_id"].split(f"_{row['model']}_")[0]
            row["grids"] = ",".join(member.get("grids", []))
            row["decoder_attn"] = cfg.get("model", {}).get("decoder_attn", "block_causal")
            row["first_set_loss"] = cfg.get("model", {}).get("first_set_loss", True)
            row[f"fd_{row['extractor']}"] = row["fd"]
            rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("train_num_sets_range", "top_k", "top_p"):  # mixed None/list/number: keep one type
        if col in df:
            df[col] = df[col].astype(str)
    return df


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_table(df: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """``<out>.parquet`` and ``<out>.csv``, each replaced in one rename."""
    out = Path(out)
    parquet, csv = out.with_suffix(".parquet"), out.with_suffix(".csv")
    _atomic(parquet, lambda p: df.to_parquet(p, index=False))
    _atomic(csv, lambda p: df.to_csv(p, index=False))
    return parquet, csv


def load_table(source: str | Path) -> pd.DataFrame:
    """A table file (.parquet or .csv) or a runs root to collect from."""
    source = Path(source)
    if source.suffix == ".parquet":
        return pd.read_parquet(source)
    if source.suffix == ".csv":
        return pd.read_csv(source)
    return collect(source)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="runs")
    p.add_argument("--out", default="analysis/results")
    args = p.parse_args(argv)
    df = collect(args.root)
    if df.empty:
        print(f"no results under {args.root}/*/results.jsonl: train and evaluate runs first "
              "(e.g. make sweep-orders)", file=sys.stderr)
        return 1
    parquet, csv = write_table(df, args.out)
    print(f"{len(df)} rows from {df['run_id'].nunique()} runs -> {parquet}, {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
