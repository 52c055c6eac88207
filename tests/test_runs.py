"""The run folder (sar_lightning.runs): status, results read / append and the migration of renamed names,
old configs keeping their run ids, the model contract's refusals, and the sweep's progress display."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sar_lightning.config import load_config, run_id, to_yaml
from sar_lightning.core.sampling import Sampler, generate
from sar_lightning.models.registry import build_model, model_class
from sar_lightning.runs import RunDir, append_results, read_results, setting_id
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


def test_families_refuse_what_they_cannot_sample():
    fmt, gpt = model_class("tiny"), model_class("gpt-tiny")
    ones = [1] * 64
    assert fmt.refusal("random", [16] * 4, "causal") is None
    assert "full" in fmt.refusal("random", [32, 32], "causal", decoder_attn="full")
    assert gpt.refusal("raster", ones, "causal") is None
    assert "raster" in gpt.refusal("random", ones, "causal") and "raster" in gpt.refusal("raster", [16] * 4, "causal")
    assert "full" in gpt.refusal("raster", ones, "full")
    assert gpt.training_refusal("random", "ar") and fmt.training_refusal("random", "random") is None
    model = build_model("gpt-tiny").eval()
    with pytest.raises(ValueError, match="raster"):
        generate(model, torch.tensor([1]), order="raster", intervals=[16] * 4)
    assert Sampler("raster", num_steps=4).refusal(model) and Sampler("raster", num_steps=64).refusal(model) is None


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
