"""Sweep manifests beside the run folders (``<root>/sweeps/<grid>-<tag>.json``): where they live, the record
one sweep leaves, and the rule that merges the sweeps history of a grid across sweeps and archives."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SWEEPS = "sweeps"  # the folder of sweep manifests beside the run folders


def manifest_path(root: str | Path, grid: str, tag: str) -> Path:
    """Where a sweep records its runs: ``<root>/sweeps/<grid>-<tag>.json`` (tag: profile[-data])."""
    return Path(root) / SWEEPS / f"{grid}-{tag}.json"


def sweep_record(manifest: dict) -> dict:
    """One sweep as a manifest's ``sweeps`` history keeps it: when it started and finished (``finished`` None:
    still running, or killed), its wall time so far, jobs, and what it did."""
    runs = manifest.get("runs", [])
    record = {"finished": manifest.get("finished"), "seconds": manifest.get("seconds"), "jobs": manifest.get("jobs"),
              "runs": len(runs), "trained": sum(r.get("status") in ("trained", "resumed") for r in runs),
              "seeds": sorted({r["seed"] for r in runs if r.get("seed") is not None})}
    return {"started": manifest["started"]} | record if manifest.get("started") else record  # older: no start


def sweep_history(manifest: dict | None) -> list[dict]:
    """A manifest's ``sweeps`` history; for a manifest written before there was one, its own record."""
    return list(manifest.get("sweeps") or [sweep_record(manifest)]) if manifest else []


def superseded(old: dict | None, retrained: set) -> bool:
    """Whether every run of the earlier manifest ``old`` has been trained again (its run id in ``retrained``):
    then its sweeps describe no result any more, and a history built on it starts afresh."""
    return bool(old and old.get("runs")) and all(r["run_id"] in retrained for r in old["runs"])


def merge_history(old: list[dict], new: list[dict]) -> list[dict]:
    """Two sweep histories as one, each sweep once: a record of ``new`` replaces one of ``old`` that started at
    the same time (the same sweep, recorded later), and is added when no equal record is there."""
    again = {r["started"] for r in new if r.get("started")}
    history = [r for r in old if not (r.get("started") and r["started"] in again)]
    return history + [r for r in new if r not in history]


def read_manifests(root: str | Path, pattern: str = "*.json") -> list[dict]:
    """The sweep manifests ``<root>/sweeps/<pattern>``, each with its ``grid`` name, in name order."""
    out = []
    for manifest in sorted(Path(root, SWEEPS).glob(pattern)):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"[results] skipping unreadable manifest {manifest}: {e}", file=sys.stderr)
            continue
        out.append(m | {"grid": m.get("grid") or manifest.stem.split("-")[0]})
    return out
