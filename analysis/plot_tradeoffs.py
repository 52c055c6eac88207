"""Trade-off figures from the results table: which recipe, at what cost?

    python analysis/plot_tradeoffs.py [--root runs] [--table analysis/results.parquet] [--grid NAME]
                                      [--out analysis/figures]

Writes PNG + PDF per figure and ``summary.md`` (file names prefixed with the grid when one is chosen):
- ``fd_vs_steps``: FD against inference steps, one line per training configuration (own order, cfg 1);
- ``fd_vs_time``: FD against seconds per image, every setting, the Pareto front, KV cache on/off marked;
- ``order_matrix``: train order x inference order FD at the largest step count;
- ``mar_ablation``: FD bars per MAR-end variant and inference attention, at each step count.
One figure per feature extractor: distances from different extractors never share an axis. Figures
that the table cannot support (no such rows yet) are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import load_table  # noqa: E402


def fd_label(extractor: str) -> str:
    return "FID (Inception)" if extractor == "inception" else f"fd_{extractor} (lower is better)"


def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (lower cost, lower value), by cost."""
    order = np.lexsort((value, cost))
    front, best = [], np.inf
    for i in order:
        if value[i] < best:
            front.append(i)
            best = value[i]
    return np.array(front, dtype=int)


def _save(fig, out: Path, name: str, written: list) -> None:
    for ext in ("png", "pdf"):
        fig.savefig(out / f"{name}.{ext}", bbox_inches="tight", dpi=130)
    plt.close(fig)
    written.append(name)


def _own_order(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["infer_order"] == df["train_order"]) & (df["cfg"] == 1.0)]


def _line_key(df: pd.DataFrame) -> pd.Series:
    full = df["attn"].eq("full") & df["decoder_attn"].ne("full")
    return df["label"] + np.where(full, " (full attn at inference)", "")


def _colors(df: pd.DataFrame) -> dict[str, str]:
    # The same configuration gets the same colour in every figure.
    return {line: f"C{i % 10}" for i, line in enumerate(sorted(_line_key(df).unique()))}


def plot_fd_vs_steps(df, out, prefix, question, written):
    colors = _colors(df)
    for ext, d in _own_order(df).groupby("extractor"):
        d = d.assign(line=_line_key(d)).sort_values("kv_cache", ascending=False)
        d = d.drop_duplicates(["line", "num_steps"])  # kv on/off give the same samples
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for line, g in d.groupby("line"):
            g = g.sort_values("num_steps")
            ax.plot(g["num_steps"], g["fd"], marker="o", label=line, color=colors[line])
        steps = sorted(d["num_steps"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.set_xlabel("inference steps K (sets)")
        ax.set_ylabel(fd_label(ext))
        ax.set_title(question or "quality against the number of sampling steps", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.grid(alpha=0.3)
        _save(fig, out, f"{prefix}fd_vs_steps_{ext}", written)


def plot_fd_vs_time(df, out, prefix, question, written):
    colors = _colors(df)
    for ext, d in _own_order(df).groupby("extractor"):  # each model in its own order
        d = d.assign(line=_line_key(d))
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for (line, kv), g in d.groupby(["line", "kv_cache"]):
            kv_text = "on" if kv else "off"
            ax.scatter(g["sec_per_image"], g["fd"], s=28, color=colors[line], label=f"{line}, kv {kv_text}",
                       marker="o" if kv else "x")
        front = pareto_front(d["sec_per_image"].to_numpy(), d["fd"].to_numpy())
        f = d.iloc[front]
        ax.plot(f["sec_per_image"], f["fd"], color="k", lw=1, ls="--", label="Pareto front")
        for _, r in f.iterrows():
            ax.annotate(f"K={r['num_steps']}", (r["sec_per_image"], r["fd"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("seconds per image (fixed batch, after warm-up)")
        ax.set_ylabel(fd_label(ext))
        ax.set_title(question or "quality against sampling cost", fontsize=9)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.grid(alpha=0.3)
        _save(fig, out, f"{prefix}fd_vs_time_{ext}", written)


def plot_order_matrix(df, out, prefix, question, written):
    for ext, d in df[df["cfg"] == 1.0].groupby("extractor"):
        d = d[d["num_steps"] == d["num_steps"].max()].drop_duplicates(["train_order", "infer_order"])
        m = d.pivot_table(index="train_order", columns="infer_order", values="fd")
        if m.shape[0] < 2 or m.notna().sum(axis=1).max() < 2:
            continue  # no model was sampled in another order than its own: no matrix to draw
        names = [o for o in m.index if o in m.columns] + [o for o in m.columns if o not in m.index]
        m = m.reindex(index=[o for o in names if o in m.index], columns=names)
        fig, ax = plt.subplots(figsize=(1 + 0.9 * m.shape[1], 1 + 0.6 * m.shape[0]))
        im = ax.imshow(np.log10(m.to_numpy()), cmap="viridis_r")
        mid = np.nanmedian(m.to_numpy())
        for (i, j), v in np.ndenumerate(m.to_numpy()):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="w" if v > mid else "k")
        ax.set_xticks(range(m.shape[1]), m.columns, rotation=40, ha="right")
        ax.set_yticks(range(m.shape[0]), m.index)
        ax.set_xlabel("inference order")
        ax.set_ylabel("training order")
        k = int(d["num_steps"].max())
        ax.set_title(f"{fd_label(ext)} at K = {k} (colour: log10)", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
        _save(fig, out, f"{prefix}order_matrix_{ext}", written)


def plot_mar_ablation(df, out, prefix, question, written):
    d = _own_order(df)
    d = d[d["grids"].fillna("").str.split(",").apply(lambda g: "mar" in g)]
    for ext, e in d.groupby("extractor"):
        e = e.assign(line=_line_key(e)).drop_duplicates(["line", "num_steps"])
        table = e.pivot_table(index="num_steps", columns="line", values="fd")
        fig, ax = plt.subplots(figsize=(8, 4.5))
        table.plot.bar(ax=ax, width=0.85)
        ax.set_xlabel("inference steps K")
        ax.set_ylabel(fd_label(ext))
        ax.set_title(question or "the MAR end: sampler, first-set loss, decoder attention", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.grid(alpha=0.3, axis="y")
        _save(fig, out, f"{prefix}mar_ablation_{ext}", written)


def _seconds(g: pd.DataFrame, k: int, kv: bool) -> float | None:
    s = g[(g["num_steps"] == k) & (g["kv_cache"] == kv)]["sec_per_image"]
    return float(s.iloc[0]) if len(s) else None


def summary_table(df: pd.DataFrame, question: str | None) -> str:
    lines = [f"# {question}\n" if question else "# Results summary\n"]
    header = ("| run | samples | best fd (at K) | fd at max K | sec/img cached, min K / max K | uncached, max K "
              "| cache speed-up at max K |")
    for ext, d in df.groupby("extractor"):
        own = _own_order(d).assign(line=lambda x: _line_key(x))
        lines += [f"## {fd_label(ext)}\n", header, "|---|---|---|---|---|---|---|"]
        for line, g in own.groupby("line", sort=False):
            best = g.loc[g["fd"].idxmin()]
            kmax, kmin = g["num_steps"].max(), g["num_steps"].min()
            c_min, c_max, u_max = _seconds(g, kmin, True), _seconds(g, kmax, True), _seconds(g, kmax, False)
            fmt = lambda s: "-" if s is None else f"{s:.5f}"  # noqa: E731
            speed = f"{u_max / c_max:.1f}x" if u_max and c_max else "-"
            fd_max = g[g["num_steps"] == kmax]["fd"].min()
            lines.append(f"| {line} | {int(g['num_samples'].max())} | {best['fd']:.2f} ({int(best['num_steps'])}) | "
                         f"{fd_max:.2f} | {fmt(c_min)} / {fmt(c_max)} | {fmt(u_max)} | {speed} |")
        by_steps = own.drop_duplicates(["line", "num_steps"]).pivot_table(index="line", columns="num_steps",
                                                                          values="fd")
        lines += ["", "fd by inference steps K (own order, cfg 1):", "",
                  "| run | " + " | ".join(f"K={k}" for k in by_steps.columns) + " |",
                  "|---|" + "---|" * by_steps.shape[1]]
        lines += [f"| {line} | " + " | ".join("-" if np.isnan(v) else f"{v:.1f}" for v in row) + " |"
                  for line, row in zip(by_steps.index, by_steps.to_numpy())]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="runs")
    p.add_argument("--table", default=None, help="a .parquet/.csv from analysis/collect.py (default: collect --root)")
    p.add_argument("--grid", default=None, help="only the runs of this sweep grid")
    p.add_argument("--out", default="analysis/figures")
    args = p.parse_args(argv)
    df = load_table(args.table or args.root)
    question, prefix = None, ""
    if args.grid and not df.empty:
        df = df[df["grids"].fillna("").str.split(",").apply(lambda g: args.grid in g)]
        prefix = f"{args.grid}_"
        manifests = sorted(Path(args.root).glob(f"sweeps/{args.grid}-*.json"))
        question = json.loads(manifests[-1].read_text()).get("question") if manifests else None
    if df.empty:
        where = f"grid {args.grid!r} under {args.root}" if args.grid else (args.table or args.root)
        print(f"no results for {where}: train and evaluate runs first (e.g. make sweep-orders)", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for plot in (plot_fd_vs_steps, plot_fd_vs_time, plot_order_matrix, plot_mar_ablation):
        before = len(written)
        plot(df, out, prefix, question, written)
        if len(written) == before:
            print(f"[plot] {plot.__name__}: not enough rows in this table yet; skipped")
    (out / f"{prefix}summary.md").write_text(summary_table(df, question))
    print(f"[plot] {len(df)} rows from {df['run_id'].nunique()} runs -> {out}: {', '.join(written)}, "
          f"{prefix}summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
