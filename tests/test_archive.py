"""sar_lightning.sweeps.archive: results of several sessions add up in the committed archive, by key, never lost."""

from __future__ import annotations

import json
from pathlib import Path

from sar_lightning.analysis.report import wall_times
from sar_lightning.cli import main as cli
from sar_lightning.runs import read_results, sweep_record
from sar_lightning.sweeps import archive as A


def _row(k: int, fd: float, extractor: str = "digits_cnn") -> dict:
    return {"ckpt_step": 100, "ema": True, "infer_order": "raster", "infer_schedule": "cosine", "num_steps": k,
            "cfg_scale": 1.0, "cfg_schedule": "constant", "extractor": extractor, "fd": fd}


def _session(root: Path, runs: dict[str, list[dict]], seconds: float, finished: str, seeds=(0,)) -> Path:
    """A runs root as a sweep leaves it: run folders with results and one manifest."""
    for run_id, rows in runs.items():
        (root / run_id).mkdir(parents=True)
        (root / run_id / "config.yaml").write_text(f"# {run_id}\n")
        (root / run_id / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / run_id / "last.ckpt").write_bytes(b"weights")
    manifest = {"grid": "orders", "profile": "default", "data": None, "jobs": 2, "seconds": seconds,
                "finished": finished, "runs": [{"run_id": r, "label": r, "seed": s, "status": "trained", "seconds": 1}
                                               for r, s in zip(runs, seeds)]}
    (root / "sweeps").mkdir(parents=True)
    (root / "sweeps" / "orders-default.json").write_text(json.dumps(manifest))
    return root


def test_two_sessions_add_up_and_archiving_twice_changes_nothing(tmp_path):
    into = tmp_path / "archive"
    first = _session(tmp_path / "a", {"r_s0": [_row(1, 9.0), _row(4, 5.0)]}, 600.0, "2026-12-01T10:00:00")
    assert A.archive(first, into) == (1, 2, 1)
    # The next session re-evaluates K = 4 (its row wins), adds K = 16, and trains a second seed.
    second = _session(tmp_path / "b", {"r_s0": [_row(4, 4.0), _row(16, 3.0)], "r_s1": [_row(1, 8.0)]}, 300.0,
                      "2026-12-02T10:00:00", seeds=(0, 1))
    A.archive(second, into)
    rows = {r["num_steps"]: r["fd"] for r in read_results(into / "r_s0" / "results.jsonl")}
    assert rows == {1: 9.0, 4: 4.0, 16: 3.0}
    assert [r["fd"] for r in read_results(into / "r_s1" / "results.jsonl")] == [8.0]
    assert not list(into.rglob("*.ckpt")) and (into / "r_s1" / "config.yaml").read_text() == "# r_s1\n"
    manifest = json.loads((into / "sweeps" / "orders-default.json").read_text())
    assert sorted(r["run_id"] for r in manifest["runs"]) == ["r_s0", "r_s1"]
    assert [s["seconds"] for s in manifest["sweeps"]] == [600.0, 300.0]
    before = {p: p.read_text() for p in into.rglob("*") if p.is_file()}
    A.archive(second, into)
    assert {p: p.read_text() for p in into.rglob("*") if p.is_file()} == before
    # The report's wall time sums both sweeps of the grid.
    table = "\n".join(wall_times(str(into)))
    assert "| orders | default | 2 | 3 | 0,1 | 2 | 2 | 15.0 min |" in table


def test_a_run_trained_again_replaces_its_rows_instead_of_mixing_two_trainings(tmp_path):
    into = tmp_path / "archive"
    first = _session(tmp_path / "a", {"r_s0": [_row(1, 9.0), _row(4, 5.0)]}, 600.0, "2026-12-01T10:00:00")
    (first / "r_s0" / "done.json").write_text('{"val_loss": 1.21}')
    A.archive(first, into)
    # Another evaluation of the same training adds up ...
    (first / "r_s0" / "results.jsonl").write_text(json.dumps(_row(16, 3.0)) + "\n")
    A.archive(first, into)
    assert {r["num_steps"] for r in read_results(into / "r_s0" / "results.jsonl")} == {1, 4, 16}
    # ... the same run id trained again (another machine, other float sums) replaces them all.
    again = _session(tmp_path / "b", {"r_s0": [_row(4, 4.5)]}, 300.0, "2026-12-02T10:00:00")
    (again / "r_s0" / "done.json").write_text('{"val_loss": 1.20}')
    assert A.retrained(again / "r_s0", into / "r_s0") and not A.retrained(first / "r_s0", first / "r_s0")
    A.archive(again, into)
    assert read_results(into / "r_s0" / "results.jsonl") == [_row(4, 4.5)]
    assert (into / "r_s0" / "done.json").read_text() == '{"val_loss": 1.20}'
    # every run of the grid trained again: its wall time is the re-run's, not the sum of both sweeps
    assert [s["seconds"] for s in json.loads((into / "sweeps" / "orders-default.json").read_text())["sweeps"]] \
        == [300.0]


def test_rows_of_other_extractors_are_kept_apart():
    old = [_row(4, 5.0, "inception"), _row(4, 6.0)]
    assert A._merge_rows(old, [_row(4, 7.0)]) == [_row(4, 5.0, "inception"), _row(4, 7.0)]


def test_a_missing_runs_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli(["archive", f"root={tmp_path / 'nope'}", f"into={tmp_path / 'archive'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and not (tmp_path / "archive").exists()


def test_a_torn_archived_manifest_is_one_line_and_exit_2(tmp_path, capsys):
    into = tmp_path / "archive"
    (into / "sweeps").mkdir(parents=True)
    (into / "sweeps" / "orders-default.json").write_text("{torn")
    root = _session(tmp_path / "a", {"r_s0": [_row(1, 9.0)]}, 60.0, "2026-12-01T10:00:00")
    assert cli(["archive", f"root={root}", f"into={into}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "orders-default.json" in err
    assert (into / "sweeps" / "orders-default.json").read_text() == "{torn"


def test_a_sweep_archived_while_it_ran_and_again_after_counts_once(tmp_path):
    """A manifest's history record is the sweep's by its start time: archived mid-sweep and again once it has
    finished, the later record replaces the earlier one instead of adding its wall time twice."""
    into, root = tmp_path / "archive", _session(tmp_path / "a", {"r_s0": [_row(1, 9.0)]}, 60.0, None)
    file = root / "sweeps" / "orders-default.json"
    running = json.loads(file.read_text()) | {"started": "2026-12-03T10:00:00+0000"}
    file.write_text(json.dumps(running | {"sweeps": [sweep_record(running)]}))
    A.archive(root, into)
    done = running | {"seconds": 600.0, "finished": "2026-12-03T10:10:00+0000"}
    file.write_text(json.dumps(done | {"sweeps": [sweep_record(done)]}))
    A.archive(root, into)
    history = json.loads((into / "sweeps" / "orders-default.json").read_text())["sweeps"]
    assert [(h["seconds"], h["finished"]) for h in history] == [(600.0, "2026-12-03T10:10:00+0000")]
