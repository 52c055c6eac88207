"""Trade-off figures from the results table: which recipe, at what cost?

    python analysis/plot_tradeoffs.py [--root runs] [--table analysis/results.parquet] [--grid NAME]
                                      [--out analysis/figures]
    python -m sar_lightning plots [root=runs] [table=...] [grid=NAME] [out=analysis/figures]   (the same)

Writes PNG + PDF per figure and ``summary.md`` (file names prefixed ``<grid>_`` when one is chosen):
- ``fd_vs_steps``: FD against inference steps, one line per training configuration (own order, CFG scale 1);
- ``fd_vs_time``: FD against seconds per image, every setting, the Pareto front, KV cache on/off marked;
- ``order_matrix``: train order x inference order FD at the largest step count;
- ``mar_ablation``: FD bars per MAR-end variant and inference attention, at each step count.
One figure per feature extractor: distances from different extractors never share an axis. Figures
that the table cannot support (no such rows or columns yet) are skipped with a note.

Every point is a recipe's mean over its training seeds (:func:`points`), drawn with its 95% interval: a t
interval across seeds where there are 2 or more, else the evaluation's bootstrap interval over samples;
a table without either (one seed, no ``fd_lo``/``fd_hi``) draws bare points, as before.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: sweeps run on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from sar_lightning.analysis.table import (  # noqa: E402
    CONFIDENCE,
    aggregate,
    check_columns,
    load_table,
    no_results_message,
    one_per_point,
    own_order,
    prepare,
    sampled_order,
    select_grid,
)

LEVEL = f"{CONFIDENCE:.0%}"


def fd_label(extractor: str) -> str:
    name = f"fd_{extractor}"
    return f"FID ({name})" if extractor == "inception" else name


def points(df: pd.DataFrame) -> pd.DataFrame:
    """``prepare``'s rows folded over training seeds (``table.aggregate``): one row per (recipe, setting) with
    ``fd_mean``, ``n_seeds`` and the interval every figure draws, ``fd_lo``..``fd_hi`` (``interval``: "seeds",
    "bootstrap", or "none" where ``fd_lo = fd_hi = fd_mean``)."""
    if df.empty:
        return df.assign(fd_mean=df["fd"], fd_lo=df["fd"], fd_hi=df["fd"], interval="none", n_seeds=0)
    return aggregate(df)


def interval_note(d: pd.DataFrame) -> str:
    """What the intervals of these points are, e.g. "95% t interval across 3 seeds"; "" if none has one.
    Points with 2+ seeds and points with one seed and a bootstrap interval may share a figure: both are said."""
    said = []
    n = d.loc[d["interval"] == "seeds", "n_seeds"]
    if len(n):
        said.append(f"{LEVEL} t interval across {n.min()}{'' if n.min() == n.max() else f'-{n.max()}'} seeds")
    if (d["interval"] == "bootstrap").any():
        said.append(f"{LEVEL} bootstrap interval over samples (1 seed)")
    return " or ".join(said)


def _yerr(g: pd.DataFrame) -> np.ndarray:
    """(2, P): from each mean down to ``fd_lo`` and up to ``fd_hi``, as errorbar and bar take it."""
    return np.clip(np.array([g["fd_mean"] - g["fd_lo"], g["fd_hi"] - g["fd_mean"]], dtype=float), 0, None)


def overlaps_own(d: pd.DataFrame) -> pd.Series:
    """Per row of ``d`` (one per line x infer_order): does its interval ``[fd_lo, fd_hi]`` overlap that of
    its line sampled in its own training order? False on that diagonal, where the line has no own-order row,
    and where neither of the two has an interval (two bare means say nothing about noise)."""
    diagonal = d["infer_order"] == sampled_order(d["train_order"])
    own = d[diagonal].set_index("line")
    lo, hi, kind = (d["line"].map(own[c]) for c in ("fd_lo", "fd_hi", "interval"))
    some_width = d["interval"].ne("none") | (kind.notna() & kind.ne("none"))
    return ~diagonal & some_width & (d["fd_lo"] <= hi) & (lo <= d["fd_hi"])


def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of the points that no other point dominates (<= on both, < on one), sorted by cost.

    cost, value: (P,) arrays, lower is better for both. Identical points are all kept.
    """
    order = np.lexsort((value, cost))  # by cost, then value
    front, best, last = [], np.inf, None
    for i in order:
        if value[i] < best or (last is not None and cost[i] == cost[last] and value[i] == value[last]):
            front.append(i)
            best, last = value[i], i
    return np.array(front, dtype=int)


def _styles(df: pd.DataFrame) -> dict[str, dict]:
    """``line -> {color, ls, marker, hatch}``: one colour per trained model; full attention at inference
    dashed, square, hatched; another interval schedule dotted."""
    configs = sorted(df["config"].unique())
    cmap = plt.get_cmap("tab10" if len(configs) <= 10 else "tab20")
    color = {c: cmap(i % cmap.N) for i, c in enumerate(configs)}
    styles = {}
    for line, config in df.drop_duplicates("line").set_index("line")["config"].items():
        full = "full attn at inference" in line
        styles[line] = dict(color=color[config], ls="--" if full else ":" if "intervals" in line else "-",
                            marker="s" if full else "o", hatch="///" if full else None)
    return styles


def _titles(fig, ax, own: str, question: str | None, note: str = "", ax_share: float = 1.0) -> None:
    """The grid's question over the figure, this figure's own question (and note) over the axes, which take
    ``ax_share`` of the figure's width (less where tick labels and a colour bar sit beside them)."""
    width = int(fig.get_figwidth() * 12)  # characters per line at these font sizes
    if question:  # the grid's question on top, this figure's own question under it
        fig.suptitle(textwrap.fill(question, width), fontsize=9, fontweight="bold")
    own_width = max(30, int(width * ax_share))
    ax.set_title(textwrap.fill(own, own_width) + (f"\n{textwrap.fill(note, own_width)}" if note else ""),
                 fontsize=8.5)


def _save(fig, out: Path, name: str, written: list[str]) -> None:
    """PNG and PDF, each replaced in one rename; no creation date in the PDF, so redrawing the same table
    gives the same bytes (a fresh clone's ``make report`` leaves git clean)."""
    from sar_lightning.files import atomic_write

    for ext in ("png", "pdf"):
        meta = {"CreationDate": None} if ext == "pdf" else {}
        atomic_write(out / f"{name}.{ext}", lambda path, ext=ext, meta=meta: fig.savefig(
            path, format=ext, bbox_inches="tight", dpi=130, metadata=meta))
    plt.close(fig)
    written.append(name)


def _log_if_wide(ax, values: pd.Series, axis: str = "y") -> None:
    v = values[values > 0]
    if len(v) and v.max() / v.min() > 20:  # FD spans 1-step noise to N-step quality: log shows both ends
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


# Each plot_* takes ``points``' frame and returns ``{figure name: the points it drew}``.


def plot_fd_vs_steps(pts, out, prefix, question, styles, written, notes) -> dict[str, pd.DataFrame]:
    drawn = {}
    for ext, d in own_order(pts, notes).groupby("extractor"):
        d = one_per_point(d, ["line", "num_steps"])
        fig, ax = plt.subplots(layout="constrained", figsize=(7.5, 4.5))
        for line, g in d.groupby("line"):
            g = g.sort_values("num_steps")
            st = styles[line]
            ax.plot(g["num_steps"], g["fd_mean"], marker=st["marker"], ms=4, ls=st["ls"], color=st["color"],
                    label=line)
            if g["interval"].ne("none").any() and len(g) > 1:
                ax.fill_between(g["num_steps"], g["fd_lo"], g["fd_hi"], color=st["color"], alpha=0.15, lw=0)
            elif g["interval"].ne("none").any():  # a single point: no band to shade
                ax.errorbar(g["num_steps"], g["fd_mean"], _yerr(g), fmt="none", ecolor=st["color"], capsize=3)
        steps = sorted(d["num_steps"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        _log_if_wide(ax, d["fd_mean"])
        ax.set_xlabel("inference steps K (number of sets)")
        ax.set_ylabel(f"{fd_label(ext)} (lower is better)")
        note = interval_note(d)
        _titles(fig, ax, "How does quality hold up with fewer sampling steps? (each model in its own order, "
                "KV cache, CFG scale 1)", question, f"Lines: means; shaded: {note}." if note else "")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), title="training config", title_fontsize=7)
        ax.grid(alpha=0.3, which="both")
        drawn[f"{prefix}fd_vs_steps_{ext}"] = d
        _save(fig, out, f"{prefix}fd_vs_steps_{ext}", written)
    return drawn


def plot_fd_vs_time(pts, out, prefix, question, styles, written, notes) -> dict[str, pd.DataFrame]:
    if "sec_per_image" not in pts or pts["sec_per_image"].isna().all():
        notes.append("fd_vs_time: no sec_per_image column or values; skipped")
        return {}
    drawn = {}
    for ext, d in own_order(pts).dropna(subset=["sec_per_image"]).groupby("extractor"):
        fig, ax = plt.subplots(layout="constrained", figsize=(7.5, 4.5))
        for (line, kv), g in d.groupby(["line", "kv_cache"]):
            # filled: KV cache on; hollow: recomputing the prefix every step
            st = styles[line]
            ax.scatter(g["sec_per_image"], g["fd_mean"], s=30, marker=st["marker"], linewidths=1.2,
                       edgecolors=st["color"], facecolors=st["color"] if kv else "none")
            if (b := g[g["interval"].ne("none")]).size:
                ax.errorbar(b["sec_per_image"], b["fd_mean"], _yerr(b), fmt="none", ecolor=st["color"], lw=0.8,
                            capsize=2, alpha=0.7)
        front = d.iloc[pareto_front(d["sec_per_image"].to_numpy(), d["fd_mean"].to_numpy())]  # of the means
        ax.plot(front["sec_per_image"], front["fd_mean"], color="k", lw=1, ls="--", zorder=0)
        for i, (_, r) in enumerate(front.iterrows()):  # alternate sides: neighbours on the front sit close
            ax.annotate(f"K={r['num_steps']}", (r["sec_per_image"], r["fd_mean"]), fontsize=6, xytext=(4, 2) if i % 2
                        else (-4, -7), textcoords="offset points", ha="left" if i % 2 else "right")
        ax.set_xscale("log")
        _log_if_wide(ax, d["fd_mean"])
        ax.set_xlabel("seconds per image (fixed batch, after warm-up)")
        ax.set_ylabel(f"{fd_label(ext)} (lower is better)")
        note = interval_note(d)
        _titles(fig, ax, "Which settings give the best quality per second? (dashed: the Pareto front of the means, "
                "labelled with steps K; own order, CFG scale 1)", question,
                f"Points: means; bars: {note}." if note else "")
        handles = [Line2D([], [], ls="", marker=styles[line]["marker"], color=styles[line]["color"], label=line)
                   for line in sorted(d["line"].unique())]
        handles += [Line2D([], [], ls="", marker="o", color="k", label="KV cache on"),
                    Line2D([], [], ls="", marker="o", mfc="none", color="k", label="KV cache off"),
                    Line2D([], [], color="k", ls="--", lw=1, label="Pareto front")]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.grid(alpha=0.3, which="both")
        drawn[f"{prefix}fd_vs_time_{ext}"] = d
        _save(fig, out, f"{prefix}fd_vs_time_{ext}", written)
    return drawn


def plot_order_matrix(pts, out, prefix, question, styles, written, notes) -> dict[str, pd.DataFrame]:
    if not {"infer_order", "train_order"} <= set(pts.columns):
        notes.append("order_matrix: no train_order/infer_order columns; skipped")
        return {}
    drawn = {}
    for ext, d in pts[pts["cfg_scale"] == 1.0].groupby("extractor"):
        n = int(d["num_steps"].max())  # K = N: one token per step, where every order can be compared
        d = one_per_point(d[d["num_steps"] == n], ["line", "infer_order"])
        crossed = d.groupby("line")["infer_order"].nunique()
        d = d[d["line"].isin(crossed[crossed > 1].index)]  # only runs sampled in other orders than their own
        if d["line"].nunique() < 2:
            notes.append(f"order_matrix ({ext}): fewer than 2 runs sampled in several orders at K={n}; skipped")
            continue
        d = d.assign(near_own=overlaps_own(d))
        train = d.drop_duplicates("line").set_index("line")["train_order"].sort_values()
        cols = list(dict.fromkeys([o for o in train if o in set(d["infer_order"])] + sorted(d["infer_order"].unique())))
        cell = d.set_index(["line", "infer_order"])
        m = d.pivot_table(index="line", columns="infer_order", values="fd_mean").reindex(index=train.index,
                                                                                          columns=cols)
        note = interval_note(d)
        size = (max(5.0, 1.5 + 0.85 * m.shape[1]), 1.5 + (0.75 if note else 0.55) * m.shape[0])
        fig, ax = plt.subplots(layout="constrained", figsize=size)
        norm = LogNorm(np.nanmin(m.to_numpy()), np.nanmax(m.to_numpy()))
        im = ax.imshow(m.to_numpy(), cmap="viridis_r", norm=norm)
        own = sampled_order(train)  # the diagonal: each model's own inference order
        for (i, j), v in np.ndenumerate(m.to_numpy()):
            if np.isfinite(v):  # bold on the diagonal: sampled in the order it was trained in
                c = cell.loc[(m.index[i], cols[j])]
                text = ("≈" if c["near_own"] else "") + f"{v:.1f}"
                text += f"\n±{(c['fd_hi'] - c['fd_lo']) / 2:.1f}" if c["interval"] != "none" else ""
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w" if norm(v) > 0.6 else "k",
                        fontweight="bold" if cols[j] == own.iloc[i] else "normal")
        ax.set_xticks(range(m.shape[1]), m.columns, rotation=40, ha="right")
        ax.set_yticks(range(m.shape[0]), [f"{line} [{o}]" if line != o else line for line, o in train.items()])
        ax.set_xlabel("inference order")
        ax.set_ylabel("training order")
        _titles(fig, ax, f"Do aligned training and inference orders beat mismatched ones? ({fd_label(ext)} "
                f"at K = {n}, bold: own order)", question,
                f"Cells: mean ± half-width of the {note}; ≈: the interval overlaps the own-order cell's in that "
                "row (no clear difference)." if note else "", ax_share=0.55)  # row labels left, colour bar right
        fig.colorbar(im, ax=ax, shrink=0.8, label=f"{fd_label(ext)} (log colour)")
        drawn[f"{prefix}order_matrix_{ext}"] = d
        _save(fig, out, f"{prefix}order_matrix_{ext}", written)
    return drawn


def plot_mar_ablation(pts, out, prefix, question, styles, written, notes) -> dict[str, pd.DataFrame]:
    d = own_order(pts)
    d = d[d["grids"].astype(str).str.split(",").apply(lambda g: "mar" in g)]
    if d.empty:
        notes.append("mar_ablation: no runs of the mar grid in this table; skipped")
        return {}
    drawn = {}
    for ext, e in d.groupby("extractor"):
        e = one_per_point(e, ["line", "num_steps"])
        steps, bars = sorted(e["num_steps"].unique()), sorted(e["line"].unique())
        width, spread = 0.85 / len(bars), e["interval"].ne("none").any()
        fig, ax = plt.subplots(layout="constrained", figsize=(max(7.0, 0.25 * len(steps) * len(bars) + 2), 4.5))
        for b, line in enumerate(bars):
            g = e[e["line"] == line].set_index("num_steps").reindex(steps)
            x = np.arange(len(steps)) + (b - (len(bars) - 1) / 2) * width
            ax.bar(x, g["fd_mean"], width, yerr=_yerr(g) if spread else None, label=line,
                   color=styles[line]["color"], hatch=styles[line]["hatch"], edgecolor="white", linewidth=0.5,
                   error_kw=dict(ecolor="0.25", elinewidth=0.8, capsize=2))
            for xb, v, top in zip(x, g["fd_mean"], g["fd_hi"]):  # the mean, above its error bar
                if np.isfinite(v):
                    ax.annotate(f"{v:.1f}", (xb, top), xytext=(0, 2), textcoords="offset points", rotation=90,
                                ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(steps)), [str(s) for s in steps])
        _log_if_wide(ax, e["fd_mean"])
        ax.set_xlabel("inference steps K")
        ax.set_ylabel(f"{fd_label(ext)} (lower is better)")
        note = interval_note(e)
        _titles(fig, ax, "At the MAR end, what matters: the split sampler, the first set's loss, the decoder mask, "
                "full attention at inference? (hatched: full attention at inference)", question,
                f"Bars: means; whiskers: {note}." if note else "")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.grid(alpha=0.3, axis="y", which="both")
        drawn[f"{prefix}mar_ablation_{ext}"] = e
        _save(fig, out, f"{prefix}mar_ablation_{ext}", written)
    return drawn


def _cost(g: pd.DataFrame, k: int) -> str:
    """``K=k: cached / uncached (speed-up)`` seconds per image at k steps."""
    sec = lambda kv: g[(g["num_steps"] == k) & (g["kv_cache"] == kv)]["sec_per_image"].min()
    c, u = sec(True), sec(False)
    text = " / ".join("-" if pd.isna(v) else f"{v:.3g}" for v in (c, u))
    return f"K={k}: {text}" + (f" ({u / c:.1f}x)" if c > 0 and u > 0 else "")


def fd_text(r: pd.Series, fmt: str = ".2f", seeds: bool = True) -> str:
    """One point's FD: ``2.36 [2.12, 2.61], 3 seeds``, ``... , 1 seed (bootstrap)``, or ``2.36`` alone."""
    if r["interval"] == "none":
        return f"{r['fd_mean']:{fmt}}"
    n = f", {r['n_seeds']} seeds" if r["interval"] == "seeds" else ", 1 seed (bootstrap)"
    return f"{r['fd_mean']:{fmt}} [{r['fd_lo']:{fmt}}, {r['fd_hi']:{fmt}}]" + (n if seeds else "")


def summary_table(df: pd.DataFrame, question: str | None) -> str:
    """Markdown from ``prepare``'s rows: per configuration its best mean fd, the mean fd at the most steps
    (each with its interval and seeds), and cost with and without KV cache."""
    lines = [f"# {question}\n" if question else "# Results summary\n"]
    pts = points(df)
    samples = df.groupby("line")["num_samples"].max() if "num_samples" in df else pd.Series(dtype=float)
    for ext, d in pts.groupby("extractor"):
        own = own_order(d).assign(sec_per_image=d["sec_per_image"] if "sec_per_image" in d else np.nan)
        seeds = f"; mean over training seeds [{LEVEL} interval]" if interval_note(own) else ""
        lines += [f"## {fd_label(ext)} (lower is better; own order, CFG scale 1{seeds})\n",
                  "| run | samples | best fd (at K) | fd at max K | sec/img cached / uncached (KV-cache speed-up), "
                  "smallest K | same, largest K |", "|---|---|---|---|---|---|"]
        rows = []
        for line, g in own.groupby("line"):
            best, kmax = g.loc[g["fd_mean"].idxmin()], g["num_steps"].max()
            top = g[g["num_steps"] == kmax].sort_values("fd_mean").iloc[0]
            # The speed-up needs both timings: the smallest and largest K that have them, else any K.
            timed = g.dropna(subset=["sec_per_image"]).groupby("num_steps")["kv_cache"].nunique()
            ks = timed[timed == 2].index if (timed == 2).any() else g["num_steps"]
            n = samples.get(line, np.nan)
            cells = (line, "-" if pd.isna(n) else int(n), f"{fd_text(best, seeds=False)} ({int(best['num_steps'])})",
                     fd_text(top), _cost(g, min(ks)), _cost(g, max(ks)))
            rows.append((top["fd_mean"], "| " + " | ".join(map(str, cells)) + " |"))
        lines += [r for _, r in sorted(rows)]  # best at full steps first
        by_k = one_per_point(own, ["line", "num_steps"]).set_index(["line", "num_steps"]).sort_index()
        ks = sorted(by_k.index.get_level_values("num_steps").unique())
        note = interval_note(by_k)
        lines += ["", f"fd by inference steps K{f' (mean [{note}])' if note else ''}:", "",
                  "| run | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        lines += [f"| {line} | " + " | ".join(fd_text(by_k.loc[(line, k)], ".1f", seeds=False)
                                              if (line, k) in by_k.index else "-" for k in ks) + " |"
                  for line in by_k.index.get_level_values("line").unique()]
        lines.append("")
    return "\n".join(lines)


@dataclass
class PlotArgs:
    """``python -m sar_lightning plots`` keys (``analysis/plot_tradeoffs.py``: the same as ``--flags``)."""

    root: str = "runs"  # run folders and sweeps/ manifests
    table: str | None = None  # a .parquet/.csv from collect (default: collect root)
    grid: str | None = None  # only the runs of this sweep grid; file names get a <grid>_ prefix
    out: str = "analysis/figures"  # the figures and summary.md


def plots_command(args: PlotArgs) -> int:
    """Draw every figure the table supports into ``args.out``; 1 when there is nothing to draw."""
    try:
        df = load_table(args.table or args.root)
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"[plot] {e}", file=sys.stderr)
        return 1
    if df.empty:
        print(f"[plot] {no_results_message(args.root) if not args.table else f'the table {args.table} is empty'}",
              file=sys.stderr)
        return 1
    question, prefix, notes = None, "", []
    try:
        check_columns(df)
        if args.grid:
            df, question = select_grid(df, args.root, args.grid)
            prefix = f"{args.grid}_"
            if df.empty:
                raise ValueError(f"no results for grid {args.grid!r}: no run of {args.root}/sweeps/{args.grid}-*.json "
                                 "(or tagged with it in the table) has results yet")
        df = prepare(df, notes)
    except ValueError as e:
        print(f"[plot] {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    pts = points(df)  # one row per (recipe, setting): the mean over training seeds and its interval
    styles = _styles(pts)  # one style per configuration, the same in every figure
    for plot in (plot_fd_vs_steps, plot_fd_vs_time, plot_order_matrix, plot_mar_ablation):
        before = len(written), len(notes)
        plot(pts, out, prefix, question, styles, written, notes)
        if (len(written), len(notes)) == before:
            notes.append(f"{plot.__name__.removeprefix('plot_')}: no rows for it in this table; skipped")
    (out / f"{prefix}summary.md").write_text(summary_table(df, question))
    for note in notes:
        print(f"[plot] note: {note}")
    print(f"[plot] {len(df)} rows from {df['run_id'].nunique()} runs ({len(pts)} points) -> {out}: "
          f"{', '.join(written) or 'no figures'}, "
          f"{prefix}summary.md")
    return 0

