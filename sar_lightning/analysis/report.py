"""The findings report: each finding's verdicts (checked by ``sar_lightning.analysis.findings``, judged by the rule
of ``verdicts`` with the tests of ``stats``) as Markdown, with its primary and secondary comparisons, the power
table and the seeds each grid needs (``power``), figures and the command that runs it; one CSV row per comparison;
``findings.json`` and a forest plot per finding (``write_extras``, ``forest``).

    python analysis/report.py [--root runs] [--out docs/results/FINDINGS.md] [--figures docs/results]
                              [--readme README.md]
    python -m sar_lightning report [root=runs] [out=...] [figures=...] [readme=README.md]   (the same)

With ``--readme`` it also rewrites the README's results block (between the two markers below), so that no
number there is typed by hand.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sar_lightning.analysis.findings import Result, check_all
from sar_lightning.analysis.forest import drawable, forest_name, write_forests
from sar_lightning.analysis.power import (
    BUDGET_MINUTES,
    MINIMUM_SEEDS,
    grid_minutes_per_seed,
    power_rows,
    seeds_plan,
    target_text,
)
from sar_lightning.analysis.stats import PairedTest
from sar_lightning.analysis.verdicts import (
    CLAIM_TEXT,
    METRIC_NAMES,
    NLL,
    Comparison,
    Judgement,
    Side,
    num,
    pct,
    rule_text,
)

# ---- the Markdown -------------------------------------------------------------------------------------------------

def ratio_text(t: PairedTest | None) -> str:
    """"0.67 [0.52, 0.88]": a ratio A/B with its 95% interval; "-" without a test."""
    if t is None or not math.isfinite(t.ratio):
        return "-"
    return num(t.ratio) + (f" [{num(t.ci_lo)}, {num(t.ci_hi)}]" if math.isfinite(t.ci_lo) else "")


def claim_text(c: Comparison) -> str:
    """The kind of claim with its margin: "lower than", "no worse than (margin 10%)", "alike (±10%)"."""
    text = CLAIM_TEXT.get(c.claim, c.claim)
    if c.claim == "not_worse":
        return f"{text} (margin {pct(c.margin)})"
    return f"{text} (±{pct(c.margin)})" if c.claim == "similar" else text


def p_text(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2g}"


def headline(r: Result) -> str:
    """The summary's "ours" cell: the primary comparison and its ratio A/B (finding 1: how many recipes ran)."""
    c = r.primary
    if c is None:
        votes = [c for c in r.comparisons if c.claim != "info"]
        return f"{sum(c.verdict == 'reproduced' for c in votes)} of {len(votes)} recipes have results"
    unit = "s/image, " if c.metric == "sec_per_image" else ""
    return f"{c.name}: {unit}{ratio_text(c.test)}" if c.test is not None else f"{c.name}: not run"


def seeds_range(r: Result) -> str:
    """The summary's seeds cell: the primary comparison's paired seeds, else the fewest to the most seeds."""
    if r.primary is not None:
        return str(r.primary.test.n) if r.primary.test is not None else "-"
    n = [s.n_seeds for c in r.comparisons for s in (c.a, c.b) if s is not None and s.ran]
    return "-" if not n else str(min(n)) if min(n) == max(n) else f"{min(n)}-{max(n)}"


def verdict_words(r: Result) -> str:
    """The FD verdict, "undecidable with n seeds; about m needed" spelt out."""
    if r.verdict == "undecidable":
        return f"undecidable with {r.primary.test.n} seeds; about {num(r.primary.main.needed)} needed"
    return r.verdict


def verdict_text(r: Result) -> str:
    """The summary's verdict cell: bold, "(partial)" when some comparisons did not run."""
    return f"**{verdict_words(r)}**" + (" (partial)" if r.partial else "")


def figure_links(r: Result, out: Path, figures: Path, root: str) -> str:
    """Markdown links to the finding's forest plot and figures for its data set, relative to the report, and
    the command that draws those not there yet."""
    links, missing = [], []
    names = ([forest_name(r.finding.number, r.data)] if drawable(r.comparisons) else []) + \
        [f"{fig}_{r.data}_cnn.png" for fig in r.finding.figures]
    for name in names:
        links.append(f"[{name}]({os.path.relpath(figures / name, out.parent)})")
        if not (figures / name).exists():
            links[-1] += " (not drawn yet)"
            if not name.startswith("forest_"):
                missing.append(name.split("_")[0])
    draw = [f"`python analysis/plot_tradeoffs.py --root {root} --grid {g} --out {figures}`"
            for g in dict.fromkeys(missing)]
    return ", ".join(links) + (f"; drawn by {', '.join(draw)}" if draw else "")


COMPARISON_HEAD = ["| role | comparison | claim | K | A | B | paired seeds | ratio A/B [95% interval] | p | p (Holm) "
                   "| verdict | why |", "|---" * 12 + "|"]


def comparison_line(c: Comparison) -> str:
    """One row of a finding's comparison table."""
    if c.claim == "info":
        return f"| info | {c.name} | {c.reason} | | | | | | | | | |"
    unit = " s" if c.metric == "sec_per_image" else ""
    b = f"{c.b.name}: {c.b.text(unit)}" if c.b is not None else ""
    t, j = c.test, c.main
    notes = "; ".join(s.note for s in (c.a, c.b) if s is not None and s.note)
    metric = f" [{METRIC_NAMES.get(c.metric, c.metric)}]" if c.metric != "fd" else ""
    role = "**primary**" if c.primary else "secondary" if c.tested else "check"
    return (f"| {role} | {c.name}{metric} | {claim_text(c)} | {c.k or '-'} | "
            f"{c.a.name}: {c.a.text(unit)} | {b} | {t.n if t else '-'} | {ratio_text(t)} | "
            f"{p_text(t.p) if t else '-'} | {p_text(j.p_adj) if t else '-'} | {c.verdict} | {c.reason}"
            f"{'; ' + notes if notes else ''} |")


def verdict_lines(r: Result) -> list[str]:
    """The finding's verdicts: FD (from its primary comparison), NLL, and the floor's slot."""
    c = r.primary
    if c is None:
        votes = [c for c in r.comparisons if c.claim != "info"]
        return [f"**Verdict (FD): {r.verdict}**{' (partial)' if r.partial else ''}: "
                f"{sum(c.verdict == 'reproduced' for c in votes)} of {len(votes)} recipes have results."]
    t, j = c.test, c.main
    if t is None:
        lines = [f"**Verdict (FD): {r.verdict}**{' (partial)' if r.partial else ''}: {c.reason}."]
    else:
        size = (f"powered for {target_text(c)}: {num(j.needed)} paired seeds give 80% power" if math.isfinite(j.needed)
                else "no power computation below 2 paired seeds")
        lines = [f"**Verdict (FD): {verdict_words(r)}**{' (partial)' if r.partial else ''}, from the primary "
                 f"comparison alone: ratio A/B {ratio_text(t)}, p = {p_text(t.p)} (the primary: not adjusted), "
                 f"{t.n} paired seeds, {claim_text(c)}; {size}."]
    nll = c.judged.get(NLL)
    lines += ["", f"**Verdict (NLL, `{NLL}`): {r.nll_verdict}**"
              + (f": ratio A/B {ratio_text(nll.test)}, {nll.reason}." if nll and nll.test else
                 " (no held-out NLL in these results yet; the same rule will judge it).")]
    lines += ["", "**Metric floor:** not set (when it is, a comparison whose two sides both lie within the floor's "
              "noise reads \"at the floor\" instead of a verdict)."]
    return lines


def section(r: Result, out: Path, figures: Path, root: str = "runs") -> list[str]:
    """A finding's section: claim, paper, design, rows, figures, the comparisons and the verdicts."""
    f = r.finding
    lines = [f"## {f.number}. {f.title} ({r.data})", "", f"**Claim.** {f.claim}", "", f"**Paper.** {f.paper}", "",
             f"**Design (fixed before the results).** {f.design}", "",
             f"**Rows compared.** {f.rows}; metric `{f.metric}` (lower is better); claimed: {f.direction}.", "",
             f"**Figures.** {figure_links(r, out, figures, root)}", "",
             f"**Command.** {', '.join(f'`{c}`' for c in r.commands)}", ""]
    if r.verdict == "not run" and not r.partial:
        return lines + [f"**Verdict: not run.** No rows yet: {' and '.join(f'`{c}`' for c in r.commands)} runs "
                        "them.", ""]
    lines += [*COMPARISON_HEAD, *(comparison_line(c) for c in r.comparisons), "", *verdict_lines(r)]
    if r.partial or r.verdict == "not run":
        lines += ["", f"Some rows are missing: {' and '.join(f'`{c}`' for c in r.commands)} runs them."]
    return lines + [""]


def paired_seeds(results: list[Result]) -> dict[str, str]:
    """data -> the paired seeds of its primary comparisons ("3", or "2-3")."""
    out = {}
    for data in dict.fromkeys(r.data for r in results):
        n = [r.primary.test.n for r in results if r.data == data and r.primary is not None and r.primary.test]
        if n:
            out[data] = str(min(n)) if min(n) == max(n) else f"{min(n)}-{max(n)}"
    return out


def power_lines(results: list[Result]) -> list[str]:
    """The power table: per primary comparison its pilot SD and the seeds it needs."""
    rows = power_rows(results)
    if not rows:
        return []
    lines = ["## Seeds: power from this pilot", "",
             "Per primary comparison: the paired seeds of these results (the pilot), the standard deviation of the "
             "per-seed log ratio, the effect or margin fixed in the finding's definition, and the paired seeds for "
             "80% power at the 5% level (two-sided; `statsmodels` `TTestPower`). A standard deviation from 2 or "
             "3 seeds is itself rough: read the counts as orders of magnitude.", "",
             "| # | data | primary comparison | claim | pilot seeds | SD of log ratio | sized for | seeds needed | "
             "verdict now |", "|---" * 9 + "|"]
    lines += [f"| {r['finding']} | {r['data']} | {r['comparison']} | {CLAIM_TEXT[r['claim']]} | {r['pilot_n']} | "
              f"{num(r['sd_log'])} | {r['target']} | {num(r['needed'])} | {r['verdict']} |" for r in rows]
    return lines + [""]


def plan_lines(results: list[Result], root: str) -> list[str]:
    """How many seeds each grid needs, within the budget (``power.seeds_plan``)."""
    from sar_lightning.runs import read_manifests

    rows = power_rows(results)
    manifests = read_manifests(root) if rows else []
    if not rows or not manifests:
        return []
    pilot = {(m["grid"], m.get("data") or "digits"): len({r.get("seed") for r in m.get("runs", [])} - {None})
             for m in manifests}
    plan = seeds_plan(rows, grid_minutes_per_seed(manifests), pilot)
    minimum = ", ".join(f"{n} {d}" for d, n in MINIMUM_SEEDS.items())
    lines = ["## Seeds to run next", "",
             f"Each grid gets at least its minimum ({minimum} seeds) and is raised to its findings' needs (the table "
             f"above) while the new seeds fit about {BUDGET_MINUTES / 60:.0f} h, cheapest first; a need that does "
             "not fit is left undecidable. Minutes per seed: the pilot sweeps' wall time per run they trained, "
             "times the runs one seed adds (conservative: runs shared by grids are counted in each).", "",
             "| grid | data | pilot seeds | min per new seed | largest need | planned seeds | minutes | findings met | "
             "findings still short (need) |", "|---" * 9 + "|"]
    for p in plan:
        short = ", ".join(f"{f} ({num(n)})" for f, n in p["short"]) or "-"
        lines.append(f"| {p['grid']} | {p['data']} | {p['pilot']} | {num(p['minutes_per_seed'])} | "
                     f"{num(p['needed'])} | {p['planned']} | {num(p['minutes'])} | "
                     f"{', '.join(map(str, p['decided'])) or '-'} | {short} |")
    total = sum(p["minutes"] for p in plan if math.isfinite(p["minutes"]))
    return lines + ["", f"New seeds in all: about {total:.0f} minutes.", ""]


SUMMARY_HEAD = ["| # | finding | primary comparison: ratio A/B [95% interval] | p | paired seeds | FD verdict | "
                "NLL verdict |", "|---" * 7 + "|"]


def summary_line(r: Result) -> str:
    p = r.primary.test.p if r.primary is not None and r.primary.test is not None else math.nan
    return (f"| {r.finding.number} | {r.finding.title} ({r.data}) | {headline(r)} | {p_text(p)} | {seeds_range(r)} | "
            f"{verdict_text(r)} | {r.nll_verdict} |")


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
    lines += ["## Verdict rule", "", rule_text(paired_seeds(results)), "", "## Summary", "", *SUMMARY_HEAD]
    lines += [summary_line(r) for r in results]
    lines += ["", *power_lines(results), *plan_lines(results, root)]
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
    """The README's results block: every finding's primary comparison and verdicts, and each grid's wall time."""
    n_runs = runs["run_id"].nunique() if runs is not None and not runs.empty else 0
    lines = [README_START, "",
             f"Verdicts from {n_runs} archived runs (`make report`): each finding's primary comparison as a ratio "
             "A/B over paired training seeds with its 95% interval, judged by the test its claim calls for "
             "(rule, margins, secondary comparisons and seeds needed in "
             "[docs/results/FINDINGS.md](docs/results/FINDINGS.md)):",
             "", *SUMMARY_HEAD]
    lines += [summary_line(r) for r in results]
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

def _judged(prefix: str, j: Judgement | None) -> dict:
    """One metric's test of a comparison as CSV/JSON fields (``prefix`` "" or "nll_")."""
    t = j.test if j is not None else None
    return {f"{prefix}n_pairs": t.n if t else 0, f"{prefix}ratio": t.ratio if t else math.nan,
            f"{prefix}ci_lo": t.ci_lo if t else math.nan, f"{prefix}ci_hi": t.ci_hi if t else math.nan,
            f"{prefix}p": t.p if t else math.nan, f"{prefix}p_adj": j.p_adj if j else math.nan,
            f"{prefix}sd_log": t.sd if t else math.nan, f"{prefix}verdict": j.verdict if j else ""}


def comparison_record(c: Comparison) -> dict:
    """A comparison as flat data: sides, claim, margin, K, and its FD (or timing) and NLL tests."""
    row = dict(comparison=c.name, primary=c.primary, claim=c.claim, metric=c.metric, K=c.k, margin=c.margin,
               effect=c.effect if c.claim == "less" else math.nan, reason=c.reason, seeds_needed=c.main.needed)
    for key, s in (("a", c.a), ("b", c.b)):
        s = s or Side("")
        row.update({key: s.name, f"{key}_mean": s.mean, f"{key}_seeds": s.n_seeds})
    return row | _judged("", c.main) | _judged("nll_", c.judged.get(NLL))


def csv_rows(results: list[Result]) -> pd.DataFrame:
    """One row per finding and comparison (information rows included, with an empty verdict)."""
    rows = [dict(finding=r.finding.number, title=r.finding.title, data=r.data) | comparison_record(c)
            | dict(finding_verdict=r.verdict, finding_nll_verdict=r.nll_verdict, partial=r.partial,
                   command="; ".join(r.commands)) for r in results for c in r.comparisons]
    return pd.DataFrame(rows)


def _clean(v):
    """A JSON value: floats to 6 significant digits, NaN and infinities as null."""
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    return v


def findings_json(results: list[Result]) -> list[dict]:
    """The machine-readable findings: per finding its id, data set, verdicts (FD and NLL), primary comparison
    and every tested comparison (A, B, claim kind, metric, K, margin, n_pairs, ratio, ci_lo, ci_hi, p, p_adj,
    verdict)."""
    keys = ("a", "b", "claim", "metric", "K", "margin", "n_pairs", "ratio", "ci_lo", "ci_hi", "p", "p_adj",
            "verdict", "primary", "seeds_needed")
    out = []
    for r in results:
        comps = []
        for c in r.comparisons:
            if c.claim == "info":
                continue
            rec = comparison_record(c)
            nll = _judged("", c.judged[NLL]) if NLL in c.judged else None
            comps.append({"name": c.name} | {k.upper() if k in "ab" else k: _clean(rec[k]) for k in keys}
                         | {"nll": {k: _clean(v) for k, v in nll.items()} if nll else None})
        main = r.primary.main if r.primary is not None else None
        out.append({"id": r.finding.number, "title": r.finding.title, "data": r.data,
                    "verdict": {"fd": r.verdict, "nll": r.nll_verdict}, "verdict_text": verdict_words(r),
                    "partial": r.partial, "primary": r.primary.name if r.primary is not None else None,
                    "n_pairs": main.test.n if main and main.test else 0,
                    "seeds_needed": _clean(float(main.needed)) if main else None, "comparisons": comps})
    return out


def write_extras(results: list[Result], out: Path, figures: Path) -> list[Path]:
    """``findings.json`` beside the report and a forest plot per finding in ``figures``; the paths written."""
    from sar_lightning.files import atomic_write_text

    path = Path(out).with_name("findings.json")
    atomic_write_text(path, json.dumps(findings_json(results), indent=1, sort_keys=False) + "\n")
    return [path, *write_forests(results, figures)]


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


@dataclass
class ReportArgs:
    """``python -m sar_lightning report`` keys (``analysis/report.py``: the same as ``--flags``)."""

    root: str = "runs"  # run folders and sweeps/ manifests
    out: str = "docs/results/FINDINGS.md"  # the report; findings.csv goes beside it
    figures: str = "docs/results"  # where the figures are (linked relative to out)
    readme: str | None = None  # also rewrite this file's results block (between the report's markers)


def report_command(args: ReportArgs) -> int:
    """Write the report and findings.csv beside it from the results under ``args.root``."""
    from sar_lightning.files import atomic_write, atomic_write_text

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

