"""The results archive: what the report needs of every evaluated run, kept where git keeps it.

    python -m sar_lightning archive [root=runs] [into=docs/results/runs]

Run folders hold checkpoints (megabytes each) and are not committed, so a fresh clone has none of them.
The archive copies the small files the results table is built from (``config.yaml``, ``done.json``,
``results.jsonl``) and the sweep manifests into a folder laid out like a runs root, which
``analysis/collect.py``, ``analysis/plot_tradeoffs.py`` and ``analysis/report.py`` read with ``--root``.
``make report`` archives ``runs/`` and then draws the figures and FINDINGS.md from the archive, so results
gathered in several sessions (or on several machines) add up, and anyone can redraw them from a clone.

Merging is by key, never by overwriting a whole file: a run's result rows are merged by sampler setting
(``runs.setting_id``; the run folder's row wins over the archived one) as long as both come from one training
(the same ``done.json``); a run trained again (the same run id on another machine or code, another
``done.json``) replaces its archived rows, so no run mixes two trainings' rows. A manifest's runs by run id (the
newer sweep's entry wins), and each sweep that ran is kept once in the manifest's ``sweeps`` history
(its wall time, jobs and counts; a record with the start time of one already there replaces it, so a sweep
archived while it ran counts once), so a grid run over two sessions reports both sweeps' wall time; once
every run of an archived manifest has been trained again, its old sweeps are dropped with its rows.
Every file is replaced in one rename.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from sar_lightning.files import atomic_write_text
from sar_lightning.runs import (
    CONFIG,
    DONE,
    RESULTS,
    SWEEPS,
    merge_history,
    read_results,
    results_text,
    setting_id,
    superseded,
    sweep_history,
)

ARCHIVE = "docs/results/runs"


def _merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` rows whose setting (checkpoint, sampler, extractor) is not in ``new``, then ``new``."""
    fresh = {setting_id(r) for r in new}
    return [r for r in old if setting_id(r) not in fresh] + new


def retrained(run: Path, archived: Path) -> bool:
    """Whether ``run`` is another training than the archived run of its id (their ``done.json`` differ)."""
    done, kept = run / DONE, archived / DONE
    return done.exists() and kept.exists() and done.read_text() != kept.read_text()


def archive_run(run: Path, into: Path, replaced: set | None = None) -> int:
    """Copy one run's config, done marker and result rows into ``into/<run id>``, merged with the archived
    rows of the same training (replacing those of another, whose run id then goes into ``replaced``); the
    row count."""
    dest = into / run.name
    again = retrained(run, dest)
    if again and replaced is not None:
        replaced.add(run.name)
    old = [] if again else read_results(dest / RESULTS)
    for name in (CONFIG, DONE):
        if (run / name).exists():
            atomic_write_text(dest / name, (run / name).read_text())
    rows = _merge_rows(old, read_results(run / RESULTS))
    atomic_write_text(dest / RESULTS, results_text(rows))
    return len(rows)


def merge_manifest(old: dict | None, new: dict, replaced: set = frozenset()) -> dict:
    """``new`` with the runs of ``old`` it does not name and both sweep histories (each sweep once). When
    every run of ``old`` has been trained again (``replaced``), its sweeps no longer describe any archived
    row, and only ``new``'s history is kept (the wall time is the re-run's, not the sum)."""
    if superseded(old, replaced):
        old = None
    history = merge_history(sweep_history(old), sweep_history(new))
    named = {r["run_id"] for r in new.get("runs", [])}
    runs = [r for r in (old or {}).get("runs", []) if r["run_id"] not in named] + list(new.get("runs", []))
    return {**new, "runs": runs, "sweeps": history}


def archive(root: str | Path = "runs", into: str | Path = ARCHIVE) -> tuple[int, int, int]:
    """Archive every run under ``root`` that has results, and its sweep manifests: (runs, rows, manifests)."""
    root, into = Path(root), Path(into)
    if not root.is_dir():
        raise FileNotFoundError(f"no runs folder {root}: train and evaluate runs first, or pass root=<runs folder>")
    n_runs = n_rows = n_manifests = 0
    replaced: set[str] = set()
    for results in sorted(root.glob(f"*/{RESULTS}")):
        n_rows += archive_run(results.parent, into, replaced)
        n_runs += 1
    for file in sorted((root / SWEEPS).glob("*.json")):
        try:
            new = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"[archive] skipping unreadable manifest {file}: {e}", file=sys.stderr)
            continue
        target = into / SWEEPS / file.name
        try:
            old = json.loads(target.read_text()) if target.exists() else None
        except json.JSONDecodeError as e:
            raise ValueError(f"the archived manifest {target} is not valid JSON ({e}): restore it with "
                             f"`git checkout -- {target}`, then archive again") from None
        atomic_write_text(target, json.dumps(merge_manifest(old, new, replaced), indent=1))
        n_manifests += 1
    return n_runs, n_rows, n_manifests


@dataclass
class ArchiveArgs:
    """``python -m sar_lightning archive`` keys."""

    root: str = "runs"  # the run folders
    into: str = ARCHIVE  # the archive


def archive_command(args: ArchiveArgs) -> int:
    """Archive ``args.root`` into ``args.into`` and say how much."""
    runs, rows, manifests = archive(args.root, args.into)
    print(f"[archive] {runs} runs ({rows} result rows) and {manifests} sweep manifests from {args.root} -> {args.into}")
    return 0
