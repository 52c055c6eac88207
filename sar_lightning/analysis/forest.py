"""Forest plots of the findings: per finding and data set, each comparison's ratio A/B with its 95% interval on
a log axis, 1 and the comparison's margin drawn in, the primary comparison first and marked
(``forest_<finding>_<data>.png``). Matplotlib's object API (no pyplot state), written in one rename; the PNG
carries no date, so redrawing the same results gives the same bytes.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sar_lightning.analysis.verdicts import METRIC_NAMES, Comparison
from sar_lightning.files import atomic_write

COLOURS = {"reproduced": "#1a9850", "contradicted": "#d73027", "inconclusive": "#7f7f7f", "undecidable": "#fc8d59",
           "at the floor": "#4575b4"}


def forest_name(number: int, data: str) -> str:
    return f"forest_{number}_{data}.png"


def drawable(comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons with a ratio to draw, the primary one first."""
    ok = [c for c in comparisons if c.tested and c.test is not None and math.isfinite(c.test.ratio)]
    return sorted(ok, key=lambda c: not c.primary)


def _limits(rows: list[Comparison]) -> tuple[float, float]:
    """The x range: every finite interval end, 1 and every margin, with some room."""
    xs = [1.0] + [v for c in rows for v in (c.test.ci_lo, c.test.ci_hi, c.test.ratio) if math.isfinite(v) and v > 0]
    xs += [1 + c.margin for c in rows if c.margin] + [1 / (1 + c.margin) for c in rows if c.claim == "similar"]
    lo, hi = min(xs), max(xs)
    return lo / 1.4, hi * 1.4


def _row(ax, c: Comparison, y: float, lo: float, hi: float) -> None:
    """One comparison at height ``y``: its interval (clipped to the axis, an open end drawn as an arrow), the
    ratio, its margin marks and its verdict at the right."""
    t, colour = c.test, COLOURS.get(c.verdict, "#7f7f7f")
    left = t.ci_lo if math.isfinite(t.ci_lo) else lo
    right = t.ci_hi if math.isfinite(t.ci_hi) else hi
    ax.plot([max(left, lo), min(right, hi)], [y, y], color=colour, lw=2.2 if c.primary else 1.4, solid_capstyle="butt")
    ax.plot([t.ratio], [y], marker="D" if c.primary else "o", ms=7 if c.primary else 5, color=colour,
            markeredgecolor="k" if c.primary else colour)
    marks = [1 + c.margin] if c.claim == "not_worse" else [1 / (1 + c.margin), 1 + c.margin] if c.claim == "similar" \
        else []
    for m in marks:
        ax.plot([m, m], [y - 0.38, y + 0.38], color="#984ea3", ls="--", lw=1.2)
    text = c.verdict + (f" (p={t.p:.2g})" if c.primary else f" (Holm p={c.main.p_adj:.2g})")
    ax.text(1.01, y, text, transform=ax.get_yaxis_transform(), fontsize=7, va="center", color=colour)


def draw(result, path: Path) -> bool:
    """The forest plot of one ``findings.Result`` at ``path``; False (nothing written) when no comparison has a
    ratio."""
    rows = drawable(result.comparisons)
    if not rows:
        return False
    lo, hi = _limits(rows)
    fig = Figure(figsize=(9.5, 1.5 + 0.34 * len(rows)), layout="constrained")
    ax = fig.subplots()
    ys = np.arange(len(rows))[::-1].astype(float)
    for c, y in zip(rows, ys):
        _row(ax, c, y, lo, hi)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    labels = [textwrap.shorten(("PRIMARY: " if c.primary else "") + c.name
                               + (f" [{METRIC_NAMES.get(c.metric, c.metric)}]" if c.metric != "fd" else ""), 80)
              for c in rows]
    ax.set_yticks(ys, labels, fontsize=7)
    ax.set_xlabel("ratio A / B over paired training seeds, with its 95% t interval (log scale; below 1: A lower)",
                  fontsize=8)
    ax.grid(alpha=0.3, axis="x", which="both")
    f = result.finding
    ax.set_title(textwrap.fill(f"Finding {f.number} ({result.data}): {f.title}. Verdict: {result.verdict}", 110),
                 fontsize=9)
    handles = [Line2D([], [], marker="D", ls="", color="k", label="primary comparison"),
               Line2D([], [], marker="o", ls="", color="#7f7f7f", label="secondary (Holm-adjusted p)"),
               Line2D([], [], color="#984ea3", ls="--", label="margin (1 + m; 1/(1 + m) for alike)")]
    fig.legend(handles=handles, fontsize=6.5, loc="outside lower center", ncol=3, frameon=False)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=130, bbox_inches="tight"))
    return True


def write_forests(results, out: str | Path) -> list[Path]:
    """Every finding's forest plot under ``out``; the paths written."""
    written = []
    for r in results:
        path = Path(out) / forest_name(r.finding.number, r.data)
        if draw(r, path):
            written.append(path)
    return written
