"""Result rows: their schema (the columns, what makes two rows one sampler setting, the columns renamed since
rows were first written and the migration of old rows), and ``results.jsonl`` I/O (read with migration, append
atomically under a lock)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from filelock import FileLock

from sar_lightning.files import atomic_write_text

# What makes two result rows of one run the same sampler setting: evaluate skips a setting whose key
# is already in results.jsonl, and the analysis keeps one row per key.
SETTING_KEYS = ("ckpt_step", "ema", "infer_order", "infer_schedule", "num_steps", "cfg_scale", "cfg_schedule",
                "temperature", "top_k", "top_p", "kv_cache", "attn", "num_samples", "reference", "extractor",
                "seed")
# The trained run a row belongs to.
RUN_COLUMNS = ("run_id", "data", "model", "params", "train_order", "train_schedule", "train_num_steps",
               "train_num_steps_range", "train_seed")
# The metrics of the samples (None where a metric is not defined, e.g. KID against reference statistics).
METRIC_COLUMNS = ("fd", "fd_lo", "fd_hi", "fd_std", "kid", "kid_std", "precision", "recall", "class_acc")
# How the evaluation pass ran: timing, hardware, reference, code version.
PASS_COLUMNS = ("sec_per_image", "batch_size", "device", "world_size", "reference_name", "git_sha", "sample_seconds",
                "metric_seconds", "bootstrap_seconds", "bootstrap", "compiled")
# Every column of a row evaluate writes, in this order.
RESULT_COLUMNS = RUN_COLUMNS + SETTING_KEYS + METRIC_COLUMNS + PASS_COLUMNS
# Result columns renamed since results were first written: old name -> new (read_results migrates).
RENAMED_COLUMNS = {"cfg": "cfg_scale", "train_num_sets": "train_num_steps",
                   "train_num_sets_range": "train_num_steps_range"}
# The schema's version: 1 before the renames above, 2 today. Rows carry no version: an old row is told by its
# column names, and ``migrate_row`` brings it to this one. A rename adds to RENAMED_COLUMNS and bumps this.
RESULT_SCHEMA_VERSION = 2


def setting_id(row: dict) -> tuple:
    """The key of a result row's sampler setting (``SETTING_KEYS``)."""
    return tuple(row.get(k) for k in SETTING_KEYS)


def result_row(**values) -> dict:
    """A result row with every column of ``RESULT_COLUMNS``, in that order; a column missing from ``values`` or
    one the schema does not know raises ValueError."""
    missing = [c for c in RESULT_COLUMNS if c not in values]
    unknown = sorted(set(values) - set(RESULT_COLUMNS))
    if missing or unknown:
        raise ValueError(f"result row: missing columns {missing}, unknown columns {unknown}")
    return {c: values[c] for c in RESULT_COLUMNS}


def migrate_row(row: dict) -> dict:
    """A result row under today's column names (rows written before a rename keep loading)."""
    for old, new in RENAMED_COLUMNS.items():
        if old in row and new not in row:
            row[new] = row.pop(old)
    return row


def read_results(path: str | Path) -> list[dict]:
    """The rows of a ``results.jsonl``, migrated to today's column names; [] when there is none.
    An unreadable line is skipped with a warning naming it; exact duplicate lines count once."""
    path = Path(path)
    if not path.exists():
        return []
    rows, seen = [], set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line in seen:
            continue
        seen.add(line)
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            rows.append(migrate_row(row))
        except ValueError as err:
            print(f"[results] warning: skipping line {n} of {path} ({err}); it is kept in the file",
                  file=sys.stderr)
    return rows


def append_results(path: str | Path, rows: list[dict]) -> None:
    """Add ``rows`` to a ``results.jsonl`` by rewriting it atomically (old rows kept, never torn), under a
    lock so that two writers never lose each other's rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        old = path.read_text() if path.exists() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(path, old + results_text(rows))


def results_text(rows: list[dict]) -> str:
    """``rows`` as ``results.jsonl`` lines: one JSON object per line, keys sorted."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
