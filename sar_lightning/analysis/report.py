"""The findings report: each finding's verdict (checked by ``sar_lightning.analysis.findings``, judged by the rule of
``verdicts``) as Markdown, with its
comparisons, figures and the command that runs it, and one CSV row per comparison.

    python analysis/report.py [--root runs] [--out docs/results/FINDINGS.md] [--figures docs/results]
                              [--readme README.md]

With ``--readme`` it also rewrites the README's results block (between the two markers below), so that no
number there is typed by hand.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import pandas as pd

from sar_lightning.analysis.findings import Result, check_all
from sar_lightning.analysis.verdicts import VERDICT_RULE, VERDICTS, Side, num

# ---- the Markdown -------------------------------------------------------------------------------------------------

def headline(r: Result) -> str:
    """The summary's "ours" cell: the first comparison that ran, and how many of them reproduced."""
    votes = [c for c in r.comparisons if c.claim != "info"]
    if r.finding.number == 1:
        return f"{sum(c.verdict == 'reproduced' for c in votes)} of {len(votes)} recipes have results"
    first = next((c for c in votes if c.verdict != "not run"), None)
    if first is None:
        return "not run"
    unit = " s" if first.metric != "fd" else ""
    text = f"{first.a.name}: {first.a.text(unit)} vs {first.b.name}: {first.b.text(unit)}"
    return text + (f"; {sum(c.verdict == 'reproduced' for c in votes)}/{len(votes)} reproduced" if len(votes) > 1
                   else "")


def seeds_range(r: Result) -> str:
    """The summary's seeds cell: the fewest to the most seeds of the sides that ran."""
    n = [s.n_seeds for c in r.comparisons for s in (c.a, c.b) if s is not None and s.ran]
    return "-" if not n else str(min(n)) if min(n) == max(n) else f"{min(n)}-{max(n)}"


def verdict_text(r: Result) -> str:
    """The summary's verdict cell, bold, "(partial)" when some comparisons did not run."""
    return f"**{r.verdict}**" + (" (partial)" if r.partial else "")


def figure_links(r: Result, out: Path, figures: Path, root: str) -> str:
    """Markdown links to the finding's figures for its data set, relative to the report, and the command
    that draws those not there yet."""
    links, missing = [], []
    for fig in r.finding.figures:
        name = f"{fig}_{r.data}_cnn.png"
        links.append(f"[{name}]({os.path.relpath(figures / name, out.parent)})")
        if not (figures / name).exists():
            links[-1] += " (not drawn yet)"
            missing.append(fig.split("_")[0])
    draw = [f"`python analysis/plot_tradeoffs.py --root {root} --grid {g} --out {figures}`"
            for g in dict.fromkeys(missing)]
    return ", ".join(links) + (f"; drawn by {', '.join(draw)}" if draw else "")


def section(r: Result, out: Path, figures: Path, root: str = "runs") -> list[str]:
    """A finding's section: claim, paper, rows, figures, the comparisons and the verdict."""
    f = r.finding
    lines = [f"## {f.number}. {f.title} ({r.data})", "", f"**Claim.** {f.claim}", "", f"**Paper.** {f.paper}", "",
             f"**Rows compared.** {f.rows}; metric `{f.metric}` (lower is better); claimed: {f.direction}.", "",
             f"**Figures.** {figure_links(r, out, figures, root)}", "",
             f"**Command.** {', '.join(f'`{c}`' for c in r.commands)}", ""]
    if r.verdict == "not run" and not r.partial:
        return lines + [f"**Verdict: not run.** No rows yet: {' and '.join(f'`{c}`' for c in r.commands)} runs "
                        "them.", ""]
    lines += ["| comparison | A | B | paired A - B | verdict | why |", "|---|---|---|---|---|---|"]
    for c in r.comparisons:
        unit = " s" if c.metric != "fd" else ""
        if c.claim == "info":
            lines.append(f"| {c.name} | {c.reason} | | | | |")
            continue
        b = f"{c.b.name}: {c.b.text(unit)}" if c.b is not None else ""
        p = (f"{num(c.paired[0])} [{num(c.paired[1])}, {num(c.paired[2])}] ({c.paired[3]} pairs)" if c.paired
             else "-")
        notes = "; ".join(s.note for s in (c.a, c.b) if s is not None and s.note)
        lines.append(f"| {c.name} | {c.a.name}: {c.a.text(unit)} | {b} | {p} | {c.verdict} | {c.reason}"
                     f"{'; ' + notes if notes else ''} |")
    votes = [c for c in r.comparisons if c.claim != "info"]
    counts = ", ".join(f"{sum(c.verdict == v for c in votes)} {v}" for v in VERDICTS
                       if any(c.verdict == v for c in votes))
    lines += ["", f"**Verdict: {r.verdict}**{' (partial)' if r.partial else ''}: {counts} of {len(votes)} "
              f"comparison{'s' * (len(votes) > 1)}."]
    if r.partial or r.verdict == "not run":
        lines.append(f"Some rows are missing: {' and '.join(f'`{c}`' for c in r.commands)} runs them.")
    return lines + [""]


def render(results: list[Result], root: str, runs: pd.DataFrame | None, out: Path, figures: Path,
           notes: list[str] = ()) -> str:
    """The whole report as Markdown."""
    n_runs = runs["run_id"].nunique() if runs is not None and not runs.empty else 0
    seeds = sorted({int(s) for s in runs["train_seed"].dropna()}) if n_runs and "train_seed" in runs else []
    lines = ["# Findings: the paper's claims against this suite's results", "",
             f"Generated by `python analysis/report.py --root {root}` (`make report`) from {n_runs} runs"
             + (f" (training seeds {', '.join(map(str, seeds))})" if seeds else "") + f" under `{root}`.", ""]
    if not n_runs:
        lines += [f"**No results under `{root}`: every finding is not run.** Run the grids first, e.g. "
                  "`make sweep-all` (every grid with seeds 0, 1, 2, the figures and this report).", ""]
    lines += [f"- note: {n}" for n in notes] + ([""] if notes else [])
    lines += ["## Verdict rule", "", VERDICT_RULE, "", "## Summary", "",
              "| # | finding | claim | paper | ours (95% interval) | seeds | verdict |", "|---" * 7 + "|"]
    lines += [f"| {r.finding.number} | {r.finding.title} ({r.data}) | {r.finding.claim} | {r.finding.paper} | "
              f"{headline(r)} | {seeds_range(r)} | {verdict_text(r)} |" for r in results]
    lines.append("")
    for r in results:
        lines += section(r, out, figures, root)
    return "\n".join(lines + wall_times(root))


def wall_times(root: str) -> list[str]:
    """A section with each grid's wall time (``wall_time_table``), or nothing without manifests."""
    table = wall_time_table(root)
    return ["", "## Wall time per grid", "", *table, ""] if table else []


def wall_time_table(root: str) -> list[str]:
    """Each grid's wall time, from the manifests ``<root>/sweeps/*.json``: summed over the sweeps its ``sweeps``
    history records (one entry per sweep), else its last sweep; a sentence, then the table. Runs a sweep
    skipped because they were done cost it nothing."""
    from sar_lightning.runs import read_manifests, sweep_history

    rows = []
    for m in read_manifests(root):
        runs = m.get("runs", [])
        history = sweep_history(m)
        trained = sum(h.get("trained") or 0 for h in history)
        seeds = sorted({r["seed"] for r in runs if r.get("seed") is not None})
        seconds = [h["seconds"] for h in history if h.get("seconds") is not None]
        wall = f"{sum(seconds) / 60:.1f} min" if seconds else "not recorded"
        jobs = ",".join(dict.fromkeys(str(h.get("jobs")) for h in history if h.get("jobs"))) or "-"
        unfinished = sum("finished" in h and h["finished"] is None for h in history)
        sweeps = f"{len(history)}" + (f" ({unfinished} unfinished)" if unfinished else "")
        rows.append(f"| {m['grid']} | {m.get('profile')}{' / ' + m['data'] if m.get('data') else ''} | {len(runs)} "
                    f"| {trained} | {','.join(map(str, seeds)) or '-'} | {jobs} | {sweeps} | {wall} |")
    if not rows:
        return []
    return ["Each grid's sweeps as its manifest records them, wall times summed over the sweeps that ran it "
            "(2-core reference machine unless said otherwise); an unfinished sweep (killed, or still running) counts "
            "up to its last recorded run.", "",
            "| grid | profile / data | runs | trained or resumed | seeds | jobs | sweeps | wall time |",
            "|---" * 8 + "|", *rows]


# ---- README's generated block ----------------------------------------------------------------------------------------

README_START = "<!-- findings:start (generated by make report; edits here are overwritten) -->"
README_END = "<!-- findings:end -->"


def readme_block(results: list[Result], root: str, runs: pd.DataFrame | None) -> str:
    """The README's results block: every finding's verdict with our numbers, and each grid's wall time."""
    n_runs = runs["run_id"].nunique() if runs is not None and not runs.empty else 0
    lines = [README_START, "",
             f"Verdicts from {n_runs} archived runs (`make report`; details, rule and per-comparison tables in "
             "[docs/results/FINDINGS.md](docs/results/FINDINGS.md)):", "",
             "| # | finding | ours (95% interval) | seeds | verdict |", "|---" * 5 + "|"]
    lines += [f"| {r.finding.number} | {r.finding.title} ({r.data}) | {headline(r)} | {seeds_range(r)} | "
              f"{verdict_text(r)} |" for r in results]
    table = wall_time_table(root)
    lines += ["", *table] if table else []
    return "\n".join(lines + ["", README_END])


def update_readme(path: Path, block: str) -> bool:
    """Replace the text between README_START and README_END in ``path`` by ``block``; False (file untouched)
    when the file or either marker is missing."""
    from sar_lightning.files import atomic_write_text

    if not path.is_file():
        return False
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    atomic_write_text(path, text[:start] + block + text[end + len(README_END):])
    return True


# ---- the CSV, the table it reads, the command line ----------------------------------------------------------------

def csv_rows(results: list[Result]) -> pd.DataFrame:
    """One row per finding and comparison (information rows included, with an empty verdict)."""
    rows = []
    for r in results:
        for c in r.comparisons:
            row = dict(finding=r.finding.number, title=r.finding.title, data=r.data, comparison=c.name,
                       claim=c.claim, metric=c.metric, verdict=c.verdict, reason=c.reason,
                       finding_verdict=r.verdict, partial=r.partial, command="; ".join(r.commands))
            for key, s in (("a", c.a), ("b", c.b)):
                s = s or Side("")
                row.update({key: s.name, f"{key}_mean": s.mean, f"{key}_lo": s.lo, f"{key}_hi": s.hi,
                            f"{key}_seeds": s.n_seeds, f"{key}_interval": s.interval if s.ran else ""})
            p = c.paired or (math.nan, math.nan, math.nan, 0)
            row.update(paired_mean=p[0], paired_lo=p[1], paired_hi=p[2], paired_n=p[3])
            rows.append(row)
    return pd.DataFrame(rows)


def load(root: str | Path, notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-run rows, aggregated rows) of every result under ``root``; two empty frames when there are none."""
    from sar_lightning.analysis.table import aggregate, collect, prepare

    df = collect(root)
    if df.empty:
        return pd.DataFrame(), pd.DataFrame()
    try:
        runs = prepare(df, notes)
    except ValueError as e:
        notes.append(str(e))
        return pd.DataFrame(), pd.DataFrame()
    return runs, aggregate(runs)


def main(argv: list[str] | None = None) -> int:
    """Write the report and findings.csv beside it from the results under ``--root``."""
    from sar_lightning.files import atomic_write, atomic_write_text

    p = argparse.ArgumentParser(description="Write the findings report (verdicts from the results table).")
    p.add_argument("--root", default="runs", help="run folders and sweeps/ manifests (default: runs)")
    p.add_argument("--out", default="docs/results/FINDINGS.md", help="the report; findings.csv goes beside it")
    p.add_argument("--figures", default="docs/results", help="where the figures are (linked relative to --out)")
    p.add_argument("--readme", default=None,
                   help=f"also rewrite this file's block between {README_START!r} and {README_END!r}")
    args = p.parse_args(argv)
    notes: list[str] = []
    runs, pts = load(args.root, notes)
    results = check_all(pts, runs)
    out = Path(args.out)
    atomic_write_text(out, render(results, args.root, runs, out, Path(args.figures), notes))
    csv = out.with_name("findings.csv")
    frame = csv_rows(results)
    atomic_write(csv, lambda path: frame.to_csv(path, index=False))
    if args.readme and not update_readme(Path(args.readme), readme_block(results, args.root, runs)):
        print(f"[report] {args.readme}: no block between {README_START!r} and {README_END!r}; left as it is")
    tally = ", ".join(f"{r.finding.number}{'' if r.data == 'digits' else f' ({r.data})'}: {r.verdict}"
                      for r in results)
    print(f"[report] {runs['run_id'].nunique() if not runs.empty else 0} runs -> {out}, {csv}\n[report] {tally}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
