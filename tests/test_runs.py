"""The run folder (sar_lightning.runs): status, the result schema, results read / append and the migration of
renamed names, old configs keeping their run ids, and the sweep's progress display."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sar_lightning.config import load_config, run_id, to_yaml
from sar_lightning.runs import (
    RENAMED_COLUMNS,
    RESULT_COLUMNS,
    RESULT_SCHEMA_VERSION,
    SETTING_KEYS,
    RunDir,
    append_results,
    migrate_row,
    read_results,
    result_row,
    setting_id,
)
from sar_lightning.sweeps.progress import SweepProgress

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


def test_status_follows_the_files(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.status() == "new" and run.read_results() == [] and run.read_progress() is None
    run.last.parent.mkdir(parents=True)
    run.last.write_bytes(b"x")
    assert run.status() == "partial"
    run.write_done({"global_step": 3})
    assert run.status() == "done" and run.read_done() == {"global_step": 3}
    run.write_progress("training", 5, 10)
    assert run.read_progress() == {"state": "training", "done": 5, "total": 10}


def test_results_append_and_old_column_names_migrate(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    old = {"cfg": 2.0, "train_num_sets": 16, "train_num_sets_range": None, "num_steps": 4, "fd": 1.5}
    path.write_text(json.dumps(old) + "\n{not json\n")
    append_results(path, [{"cfg_scale": 1.0, "train_num_steps": 8, "num_steps": 2, "fd": 2.5}])
    rows = read_results(path)
    assert [r["cfg_scale"] for r in rows] == [2.0, 1.0] and [r["train_num_steps"] for r in rows] == [16, 8]
    assert "cfg" not in rows[0] and "train_num_steps_range" in rows[0]
    assert "line 2" in capsys.readouterr().err  # the bad line is named and skipped
    assert setting_id(rows[0]) != setting_id(rows[1])


def test_an_old_config_with_num_sets_loads_and_keeps_its_run_id(tmp_path):
    new = load_config(SMOKE, ["train.num_steps=8"])
    old_file = tmp_path / "config.yaml"  # a run's config.yaml as written before the rename
    old_file.write_text(to_yaml(new).replace("num_steps_range:", "num_sets_range:").replace("  num_steps: 8",
                                                                                           "  num_sets: 8"))
    assert "num_sets: 8" in old_file.read_text()
    old = load_config(old_file)
    assert old.train.num_steps == 8 and run_id(old) == run_id(new)


def test_a_result_row_has_every_column_of_the_schema_in_its_order():
    assert len(set(RESULT_COLUMNS)) == len(RESULT_COLUMNS) and set(SETTING_KEYS) <= set(RESULT_COLUMNS)
    values = {c: i for i, c in enumerate(reversed(RESULT_COLUMNS))}
    row = result_row(**values)
    assert list(row) == list(RESULT_COLUMNS) and row == values
    with pytest.raises(ValueError, match="missing columns \\['fd'\\]"):
        result_row(**{c: v for c, v in values.items() if c != "fd"})
    with pytest.raises(ValueError, match="unknown columns \\['fid'\\]"):
        result_row(**values, fid=1.0)


def test_an_old_row_migrates_to_the_schema_of_today():
    assert RESULT_SCHEMA_VERSION == 2 and set(RENAMED_COLUMNS.values()) <= set(RESULT_COLUMNS)
    old = {old: i for i, old in enumerate(RENAMED_COLUMNS)}
    assert migrate_row(dict(old)) == {new: old[o] for o, new in RENAMED_COLUMNS.items()}


def test_progress_prints_a_line_per_event_with_counts_and_time_left(tmp_path):
    jobs = [SimpleNamespace(label=name, run_dir=str(tmp_path / name), status="new") for name in ("a", "b")]
    out = io.StringIO()  # not a terminal: plain lines
    with SweepProgress(jobs, "test", stream=out) as progress:
        progress.set("a", "training")
        RunDir(tmp_path / "a").write_progress("training", 50, 100)
        assert progress.fraction("a") == pytest.approx(0.4) and progress.fraction("b") == 0.0
        assert "left" in progress.summary()
        progress.set("a", "done")
        progress.set("b", "failed")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[sweep] a: training") and "0/2 runs done" in lines[0]
    assert not [line for line in lines if "step" in line]  # no periodic line within the default minute
    assert lines[-1].startswith("[sweep] b: failed") and "2/2 runs done" in lines[-1]


def test_progress_counts_a_trained_run_with_settings_left_as_not_done(tmp_path):
    jobs = [SimpleNamespace(label="a", run_dir=str(tmp_path / "a"), status="done", evaluation_left=True),
            SimpleNamespace(label="b", run_dir=str(tmp_path / "b"), status="done")]
    progress = SweepProgress(jobs, "test", stream=io.StringIO())
    assert progress.summary().startswith("1/2 runs done") and progress.fraction("a") == 0.0


def test_progress_prints_what_active_runs_do_every_period(tmp_path):
    jobs = [SimpleNamespace(label="a", run_dir=str(tmp_path / "a"), status="new")]
    out = io.StringIO()
    with SweepProgress(jobs, "test", stream=out, line_every=0.05) as progress:
        progress.set("a", "training")
        RunDir(tmp_path / "a").write_progress("training", 7, 100)
        time.sleep(0.5)
    assert "[sweep] a: training step 7 of 100" in out.getvalue()
