"""The results table: every run's ``results.jsonl`` in one pandas frame (Parquet and CSV).

    python -m sar_lightning collect [root=runs] [out=analysis/results]   (or: python analysis/collect.py --root ...)

One row per (run, checkpoint, sampler setting), as the evaluate command wrote it, plus what the run's
``config.yaml`` and the sweep manifests (``<root>/sweeps/<grid>-<profile>.json``) add: the run's label,
the grids it belongs to, its decoder attention and first-set loss, its training seed and ``recipe`` (the
run id without the seed: a run's seed replicas share it), and ``fd_<extractor>`` (a copy of ``fd`` under
its extractor's name, so distances from different extractors never share a column).

:func:`aggregate` folds seed replicas into one row per (recipe, setting): mean, standard deviation,
number of seeds and a 95% interval across seeds (``<out>_seeds.parquet`` / ``.csv``).
Plots read only this table, through the views at the end of this file (:func:`prepare`: each run at its
latest checkpoint, one row per setting, a ``line`` name per configuration; :func:`own_order`;
:func:`select_grid`), so that every figure picks its rows the same way.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sar_lightning.config import ModelSection
from sar_lightning.files import atomic_write
from sar_lightning.runs import CONFIG, RENAMED_COLUMNS, RESULTS, SETTING_KEYS, read_manifests, read_results

# The schema's defaults, for run folders without a config.yaml.
MODEL_DEFAULTS = {"decoder_attn": ModelSection.decoder_attn, "first_set_loss": ModelSection.first_set_loss}


def sweep_membership(root: str | Path) -> dict[str, dict]:
    """``run_id -> {"label": str | None, "grids": [grid, ...]}`` from every manifest in ``root/sweeps``."""
    out: dict[str, dict] = {}
    for m in read_manifests(root):
        grid = m["grid"]
        for run in m.get("runs", []):
            entry = out.setdefault(run["run_id"], {"label": None, "grids": []})
            entry["label"] = entry["label"] or run.get("label")  # the first manifest naming it wins
            if grid not in entry["grids"]:
                entry["grids"].append(grid)
    return out


def grid_runs(root: str | Path, grid: str) -> tuple[set[str], str | None]:
    """The run ids of every ``<root>/sweeps/<grid>-*.json`` manifest (any profile) and the grid's question."""
    ids, question = set(), None
    for m in read_manifests(root, f"{grid}-*.json"):
        if m["grid"] == grid:
            ids |= {r["run_id"] for r in m.get("runs", [])}
            question = m.get("question") or question
    return ids, question


def fallback_label(run_id: str, model: str | None = None) -> str:
    """``{order}-{K}-{schedule}`` from a run id ``{order}-{K}-{schedule}_{model}_{data}_s{seed}_{hash}``.

    Orders and schedules may hold underscores themselves (``fixed_random``, ``next_scale``), so cut at
    ``_{model}_`` when the model is known rather than at the first underscore.
    """
    if model and f"_{model}_" in run_id:
        return run_id.split(f"_{model}_")[0]
    parts = run_id.split("_")
    return "_".join(parts[:-4]) if len(parts) > 4 else parts[0]


def _run_config(run_dir: Path) -> dict:
    file = run_dir / CONFIG
    try:
        return (yaml.safe_load(file.read_text()) or {}) if file.exists() else {}
    except yaml.YAMLError as e:
        print(f"[collect] unreadable {file} ({e}); using the schema's model defaults", file=sys.stderr)
        return {}


def _recipe(run_dir: Path) -> str | None:
    """The run's ``recipe_id`` (its id less the seed), or None when its config.yaml cannot be read."""
    from sar_lightning.config import ConfigError, load_config, recipe_id

    try:
        return recipe_id(load_config(run_dir / CONFIG, check=False), run_dir.name)  # the data may be elsewhere
    except (ConfigError, OSError, ValueError):
        return None


def collect(root: str | Path = "runs") -> pd.DataFrame:
    """Every result row under ``root``, with labels, grids and model options; an empty frame if none."""
    root = Path(root)
    members = sweep_membership(root) if root.is_dir() else {}
    rows = []
    for results in sorted(root.glob(f"*/{RESULTS}")):
        run_cfg = _run_config(results.parent)
        model_cfg = {**MODEL_DEFAULTS, **(run_cfg.get("model") or {})}
        recipe = _recipe(results.parent)
        for row in read_results(results):
            row.setdefault("run_id", results.parent.name)
            row.setdefault("train_seed", (run_cfg.get("train") or {}).get("seed", 0))
            row["recipe"] = recipe or _SEED_IN_ID.sub("", row["run_id"])
            member = members.get(row["run_id"], {})
            row["label"] = member.get("label") or fallback_label(row["run_id"], row.get("model"))
            row["grids"] = ",".join(member.get("grids", []))
            row["decoder_attn"] = model_cfg["decoder_attn"]
            row["first_set_loss"] = bool(model_cfg["first_set_loss"])
            if row.get("extractor") and "fd" in row:
                row[f"fd_{row['extractor']}"] = row["fd"]
            rows.append(row)
    return _tidy(pd.DataFrame(rows))


_SEED_IN_ID = re.compile(r"_s\d+(?=_[0-9a-f]{6}$)")  # a run id's "_s<seed>" before its hash


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """One type per column, so Parquet accepts it and a CSV reload gives back the same values."""
    for col in df.columns:
        values = df[col].dropna()
        if values.map(lambda v: isinstance(v, (list, tuple, dict))).any():
            # e.g. train_num_steps_range [2, 32]: stored as its JSON text, missing stays missing
            df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v)
        elif values.empty and df[col].dtype == object:
            df[col] = df[col].astype(float)  # all None (top_k, top_p unset): a float column of NaN
    if "grids" in df:
        df["grids"] = df["grids"].fillna("")
    return df




def write_table(df: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """``<out>.parquet`` and ``<out>.csv`` (``out`` without a suffix), each replaced in one rename."""
    out = str(out).removesuffix(".parquet").removesuffix(".csv")
    parquet, csv = Path(out + ".parquet"), Path(out + ".csv")
    atomic_write(parquet, lambda p: df.to_parquet(p, index=False))
    atomic_write(csv, lambda p: df.to_csv(p, index=False))
    return parquet, csv


def load_table(source: str | Path) -> pd.DataFrame:
    """A table file (``.parquet`` or ``.csv``) written by :func:`write_table`, or a runs root to collect."""
    source = Path(source)
    if source.suffix in (".parquet", ".csv"):
        if not source.exists():
            raise FileNotFoundError(f"no results table at {source}: run `python analysis/collect.py` first")
        df = pd.read_parquet(source) if source.suffix == ".parquet" else pd.read_csv(source)
        return _tidy(df.rename(columns=RENAMED_COLUMNS))  # a table written before a column was renamed
    return collect(source)


# ---- views of the table that every figure shares ----------------------------------------------------------------

# What makes two rows of one run the same sampler setting (the run folder's, less the sample count).
SETTING = tuple(k for k in SETTING_KEYS if k != "num_samples")
REQUIRED = ("run_id", "extractor", "fd", "num_steps")
DEFAULTS = {"kv_cache": True, "attn": "causal", "cfg_scale": 1.0, "decoder_attn": "block_causal", "grids": "",
            "ckpt_step": 0}


def check_columns(df: pd.DataFrame) -> None:
    """Raise ValueError naming the columns without which nothing can be plotted."""
    missing = [c for c in REQUIRED if c not in df]
    if missing:
        raise ValueError(f"the table has no {', '.join(missing)} column(s): nothing to plot")


def prepare(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Fill optional columns, keep each run's latest checkpoint and newest row per setting, add ``line``."""
    check_columns(df)
    df = df.copy()
    for col, default in DEFAULTS.items():
        if col not in df:
            notes.append(f"no {col} column: assuming {col} = {default!r}")
        df[col] = df[col].fillna(default) if col in df else default
    df["kv_cache"] = df["kv_cache"].astype(bool)
    fallback = [fallback_label(r, m) for r, m in zip(df["run_id"], df["model"] if "model" in df else [None] * len(df))]
    df["label"] = df["label"].fillna(pd.Series(fallback, index=df.index)) if "label" in df else fallback
    unusable = df["fd"].isna() | df["num_steps"].isna() | df["extractor"].isna()
    if unusable.any():
        notes.append(f"{int(unusable.sum())} rows without fd/num_steps/extractor skipped")
    df = df[~unusable].astype({"num_steps": int})
    old = df["ckpt_step"] < df.groupby("run_id")["ckpt_step"].transform("max")
    if old.any():
        notes.append(f"{int(old.sum())} rows of earlier checkpoints skipped (each run at its latest)")
    # A setting evaluated twice: results.jsonl appends, so the last row is the newest.
    df = df[~old].drop_duplicates(["run_id", *[c for c in SETTING if c in df]], keep="last")
    config, line = _line_key(df)
    return df.assign(config=config, line=line)


def _line_key(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(config, line): one name per trained model, and per model and inference variant, in every figure."""
    recipe = df["recipe"] if "recipe" in df else df["run_id"]
    recipes_per_label = recipe.groupby(df["label"]).transform("nunique")
    # Two recipes with one label (the same grid under two profiles): tell them apart by the recipe's hash.
    # Seed replicas of one recipe share the name.
    config = df["label"].astype(str).where(recipes_per_label == 1, df["label"] + " [" + recipe.str[-6:] + "]")
    full = df["attn"].eq("full") & df["decoder_attn"].ne("full")
    line = config + np.where(full, " (full attn at inference)", "")
    if "infer_schedule" in df:  # e.g. the VAR-like run also sampled with its own next_scale intervals
        schedule = df["infer_schedule"].fillna("").astype(str)
        usual = schedule.groupby(recipe).transform(lambda s: s.mode().iloc[0])
        line = line + np.where(schedule.ne(usual), ", " + schedule + " intervals", "")
    return config, line


def sampled_order(train_order: pd.Series) -> pd.Series:
    """The order a model is sampled in by default: its training order, raster for ``anneal`` (RAR)."""
    return train_order.replace({"anneal": "raster"})


def own_order(df: pd.DataFrame, notes: list[str] | None = None) -> pd.DataFrame:
    """Each model sampled in its own order at CFG scale 1: the rows that compare recipes fairly. A model
    trained with order ``anneal`` (RAR) is sampled in raster order, its own order at inference."""
    if {"infer_order", "train_order"} <= set(df.columns):
        df = df[(df["infer_order"] == df["train_order"]) | (df["infer_order"] == sampled_order(df["train_order"]))]
    elif notes is not None:
        notes.append("no train_order/infer_order columns: every row taken as sampled in its own order")
    return df[df["cfg_scale"] == 1.0]


def one_per_point(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    # Cached rows first: full attention at inference cannot use the cache, so its rows say kv_cache False.
    return df.sort_values("kv_cache", ascending=False, kind="stable").drop_duplicates(keys)


def select_grid(df: pd.DataFrame, root: str, grid: str) -> tuple[pd.DataFrame, str | None]:
    """The rows of the runs in ``<root>/sweeps/<grid>-*.json``, or tagged with the grid by collect."""
    ids, question = grid_runs(root, grid)
    tagged = df["grids"].fillna("").astype(str).str.split(",").apply(lambda g: grid in g) if "grids" in df else False
    return df[df["run_id"].isin(ids) | tagged], question


# The columns that name one point of a figure across seeds: the recipe and its sampler setting, without the
# seeds (training seed, sample seed) and the checkpoint step.
POINT = ("recipe", "line", "config", "label", *[k for k in SETTING if k not in ("seed", "ckpt_step")])
CONFIDENCE = 0.95


def seed_interval(values: pd.Series, level: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """``(mean, sd, lo, hi)`` of one point's values across seeds: Student's t interval
    ``mean +- t_{(1+level)/2, n-1} sd / sqrt(n)`` (sd with n - 1); lo = hi = mean when n < 2."""
    from scipy import stats

    x = values.dropna().to_numpy(float)
    n = len(x)
    if n == 0:
        return (float("nan"),) * 4
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), mean, mean
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / np.sqrt(n)
    return mean, sd, mean - half, mean + half


def aggregate(df: pd.DataFrame, metric: str = "fd") -> pd.DataFrame:
    """Seed replicas of ``prepare``'s rows folded into one row per (recipe, sampler setting).

    Columns: the point's keys (``POINT``), ``n_seeds``, ``seeds`` (e.g. "0,1,2"), ``<metric>_mean``,
    ``<metric>_sd``, ``<metric>_ci_lo`` / ``<metric>_ci_hi`` (``seed_interval``: a 95% t interval across
    seeds, which holds training-seed and sampling noise together), ``interval`` ("seeds" or, for a point
    with one seed, "bootstrap": the evaluation's 95% bootstrap interval over samples, ``fd_lo``/``fd_hi``,
    or "none"), ``<metric>_lo`` / ``<metric>_hi`` (the interval a figure or verdict uses), the mean
    ``sec_per_image``, and ``grids`` (every grid any replica belongs to).
    """
    keys = [k for k in POINT if k in df]
    rows = []
    for point, g in df.groupby(keys, dropna=False, sort=False):
        per_run = g.groupby("run_id")[metric].mean() if "run_id" in g else g[metric]  # one value per replica
        mean, sd, lo, hi = seed_interval(per_run)
        seeds = sorted({int(s) for s in g["train_seed"].dropna()}) if "train_seed" in g else []
        row = dict(zip(keys, point), n_seeds=len(per_run), seeds=",".join(map(str, seeds)), **{
            f"{metric}_mean": mean, f"{metric}_sd": sd, f"{metric}_ci_lo": lo, f"{metric}_ci_hi": hi})
        if len(per_run) >= 2:
            row.update(interval="seeds", **{f"{metric}_lo": lo, f"{metric}_hi": hi})
        elif metric == "fd" and {"fd_lo", "fd_hi"} <= set(g) and g["fd_lo"].notna().all() and len(g) == 1:
            row.update(interval="bootstrap", fd_lo=float(g["fd_lo"].iloc[0]), fd_hi=float(g["fd_hi"].iloc[0]))
        else:
            row.update(interval="none", **{f"{metric}_lo": mean, f"{metric}_hi": mean})
        if "sec_per_image" in g:
            row["sec_per_image"] = float(g["sec_per_image"].mean())
        if "grids" in g:
            row["grids"] = ",".join(sorted({x for v in g["grids"] for x in str(v).split(",") if x}))
        for col in ("train_order", "train_schedule", "train_num_steps", "model", "data", "decoder_attn",
                    "first_set_loss"):
            if col in g:
                row[col] = g[col].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def no_results_message(root: str | Path) -> str:
    return (f"no results under {root}/*/results.jsonl: train and evaluate runs first "
            "(e.g. make sweep-orders)")


@dataclass
class CollectArgs:
    """``python -m sar_lightning collect`` keys (``analysis/collect.py``: the same as ``--flags``)."""

    root: str = "runs"  # the folder holding the run folders
    out: str = "analysis/results"  # writes <out>.parquet and <out>.csv (and <out>_seeds.*)


def collect_command(args: CollectArgs) -> int:
    """Write the table and its seed aggregate; 1 when there are no results."""
    df = collect(args.root)
    if df.empty:
        print(no_results_message(args.root), file=sys.stderr)
        return 1
    parquet, csv = write_table(df, args.out)
    print(f"[collect] {len(df)} rows from {df['run_id'].nunique()} runs under {args.root} -> {parquet}, {csv}")
    notes: list[str] = []
    agg = aggregate(prepare(df, notes))
    parquet, csv = write_table(agg, f"{str(args.out).removesuffix('.parquet').removesuffix('.csv')}_seeds")
    print(f"[collect] {len(agg)} points ({int((agg['n_seeds'] > 1).sum())} with 2+ seeds) -> {parquet}, {csv}")
    return 0

