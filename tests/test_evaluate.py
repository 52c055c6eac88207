"""The evaluate command: result rows, skipping, batch-size invariance, crash safety, two processes."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, SMOKE

from sar_lightning.cli import main as cli
from sar_lightning.config import ConfigError, load_config
from sar_lightning.core.sampling import Sampler
from sar_lightning.data.codes import decoder_for
from sar_lightning.evaluation import evaluate as evaluate_module
from sar_lightning.evaluation.evaluate import evaluate, pass_seconds_per_image, sample_images
from sar_lightning.runs import RESULTS, read_results
from sar_lightning.training.checkpoints import load_model
from sar_lightning.training.train import train

COLUMNS = {"run_id", "data", "model", "params", "train_order", "train_schedule", "train_num_steps", "ckpt_step",
           "ema", "infer_order", "infer_schedule", "num_steps", "cfg_scale", "cfg_schedule", "temperature", "top_k",
           "top_p", "kv_cache", "num_samples", "reference", "extractor", "fd", "kid", "precision", "recall",
           "class_acc", "sec_per_image", "batch_size", "device", "git_sha"}
FAST_EVAL = ["infer.num_samples=60", "infer.batch_size=32", "infer.timing_batch=8", "infer.timing_repeats=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(SMOKE, [f"root={root}", "train.max_steps=30", "train.val_every=30", "train.ckpt_every=30",
                              "train.sample_steps=[4]", "trainer.enable_progress_bar=false"])
    return train(cfg)


def test_timing_repeats_zero_times_the_pass_itself(run_dir, tmp_path, monkeypatch):
    """infer.timing_repeats=0: seconds per image come from the evaluation's own batches, with no extra
    sampling, and the row says which batch size they were measured at."""
    def no_extra_batches(*args, **kwargs):
        raise AssertionError("timing_repeats=0 must not sample extra timing batches")

    monkeypatch.setattr(evaluate_module, "seconds_per_image", no_extra_batches)
    run = shutil.copytree(run_dir, tmp_path / run_dir.name)  # the module's run keeps its own results
    rows = evaluate(run, ["infer.num_samples=50", "infer.batch_size=16", "infer.timing_repeats=0",
                          "infer.num_steps=[2]", "infer.seed=7"])
    assert len(rows) == 1 and rows[0]["batch_size"] == 16 and rows[0]["sec_per_image"] > 0
    # the median over full batches: the last, smaller one (2 images) is left out unless it is the only one
    assert pass_seconds_per_image([(1.6, 16), (9.0, 16), (1.6, 16), (5.0, 2)]) == pytest.approx(0.1)
    assert pass_seconds_per_image([(0.5, 5)]) == pytest.approx(0.1)


def test_evaluate_writes_rows_then_skips_and_adds_only_new_settings(run_dir, capsys):
    rows = evaluate(run_dir, [*FAST_EVAL, "infer.num_steps=[1,4]", "infer.kv_cache=[true,false]"])
    assert len(rows) == 4
    table = read_results(run_dir / RESULTS)
    assert len(table) == 4 and COLUMNS <= set(table[0])
    assert {(r["num_steps"], r["kv_cache"]) for r in table} == {(1, True), (1, False), (4, True), (4, False)}
    r = table[0]
    assert r["extractor"] == "digits_cnn" and r["num_samples"] == 60 and r["ckpt_step"] == 30 and r["ema"]
    assert r["fd"] > 0 and 0 <= r["class_acc"] <= 1 and r["sec_per_image"] > 0
    # Cached and uncached sampling give the same images, hence the same metrics.
    by = {(r["num_steps"], r["kv_cache"]): r["fd"] for r in table}
    assert by[(4, True)] == pytest.approx(by[(4, False)], rel=1e-4)
    # Re-run: nothing to do. One more step count: only that one is sampled.
    assert evaluate(run_dir, [*FAST_EVAL, "infer.num_steps=[1,4]", "infer.kv_cache=[true,false]"]) == []
    new = evaluate(run_dir, [*FAST_EVAL, "infer.num_steps=[1,4,16]", "infer.kv_cache=[true]"])
    assert [(r["num_steps"], r["kv_cache"]) for r in new] == [(16, True)]
    assert len(read_results(run_dir / RESULTS)) == 5
    # Every row has its bootstrap interval; TensorBoard has FD against K as a curve whose step is K.
    assert all(r["fd_lo"] <= r["fd"] <= r["fd_hi"] and r["bootstrap"] == 200 for r in read_results(run_dir / RESULTS))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb")).Reload()
    curve = events.Scalars("eval/fd_vs_steps/random_cosine_cfg1.0_kv1")
    assert sorted(e.step for e in curve) == [1, 4, 16]
    assert {e.step: e.value for e in curve}[16] == pytest.approx(new[0]["fd"], rel=1e-6)


def test_same_seed_same_samples_at_batch_size_8_and_32(run_dir):
    model, info, _, _ = load_model(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    setting = Sampler("random", "random", num_steps=8, cfg_scale=2.0, cfg_schedule="linear", top_p=0.95,
                      attn="causal", seed=3)
    index = torch.arange(40)
    tok = decoder_for(cfg.data)
    a = sample_images(model, tok, index, 10, setting, 8, torch.device("cpu"))
    b = sample_images(model, tok, index, 10, setting, 32, torch.device("cpu"))
    c = sample_images(model, tok, index[24:], 10, setting, 5, torch.device("cpu"))  # another partition
    assert torch.equal(a, b) and torch.equal(a[24:], c)
    other = sample_images(model, tok, index, 10, dataclasses.replace(setting, seed=4), 32, torch.device("cpu"))
    assert not torch.equal(a, other)


def test_raw_and_ema_weights_differ(run_dir):
    ema, _, _, used_ema = load_model(run_dir, ema=True)
    raw, _, _, used_raw = load_model(run_dir, ema=False)
    assert used_ema and not used_raw
    assert not torch.equal(ema.head.weight, raw.head.weight)


def test_an_interrupted_evaluation_keeps_finished_rows(run_dir, monkeypatch):
    import sar_lightning.evaluation.metrics as metrics

    before = len(read_results(run_dir / RESULTS))
    real = metrics.compute_metrics
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(metrics, "compute_metrics", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        evaluate(run_dir, [*FAST_EVAL, "infer.num_steps=[2,8]", "infer.orders=[raster]"])
    rows = read_results(run_dir / RESULTS)  # parses: never half-written
    assert len(rows) == before + 1 and rows[-1]["infer_order"] == "raster"
    assert not list(run_dir.glob(".results.jsonl.*.tmp"))  # no temporary file left behind


def test_overrides_that_change_the_trained_run_are_refused(run_dir, capsys):
    with pytest.raises(ConfigError, match="only change infer"):
        evaluate(run_dir, ["train.lr=0.5"])
    assert cli(["evaluate", str(run_dir), "infer.orders=[zigzag]"]) == 2
    assert "valid orders" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(run_dir, tmp_path):
    # Copy the run so each evaluation starts with an empty results file.
    import shutil

    single, double = tmp_path / "one" / run_dir.name, tmp_path / "two" / run_dir.name
    for d in (single, double):
        shutil.copytree(run_dir, d, ignore=shutil.ignore_patterns(RESULTS))
    args = [*FAST_EVAL, "infer.num_steps=[4]", "threads=1"]
    cmd = [sys.executable, "-m", "sar_lightning", "evaluate"]
    one = subprocess.run([*cmd, str(single), *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    two = subprocess.run([*cmd, str(double), *args, "trainer.devices=2", "trainer.strategy=ddp"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    (a,), (b,) = read_results(single / RESULTS), read_results(double / RESULTS)
    assert b["world_size"] == 2 and a["world_size"] == 1
    for key in ("fd", "kid", "precision", "recall", "class_acc", "num_samples"):
        assert a[key] == pytest.approx(b[key], rel=1e-5), key
    assert json.dumps(a["num_samples"]) == "60"


def test_evaluations_joined_by_and_give_the_rows_of_separate_calls(run_dir, tmp_path):
    """``evaluate RUN a --and b`` (one process, as a sweep runs it) writes the rows of ``evaluate RUN a`` then
    ``evaluate RUN b``; a thread count given mid-way (``RunDir.give_threads``) changes no sample (a changed
    token would move the FD far more than float rounding in the feature extractor does)."""
    import shutil

    from sar_lightning.runs import RunDir

    apart, joined = tmp_path / "apart" / run_dir.name, tmp_path / "joined" / run_dir.name
    for d in (apart, joined):
        shutil.copytree(run_dir, d, ignore=shutil.ignore_patterns(RESULTS))
    first, second = [*FAST_EVAL, "infer.num_steps=[1,4]"], [*FAST_EVAL, "infer.orders=[raster]", "infer.num_steps=[4]"]
    evaluate(apart, first)
    evaluate(apart, second)
    RunDir(joined).give_threads(2)
    try:
        assert cli(["evaluate", str(joined), *first, "--and", *second]) == 0
        assert torch.get_num_threads() == 2  # taken up from the run folder's threads file
    finally:
        torch.set_num_threads(1)
    a, b = read_results(apart / RESULTS), read_results(joined / RESULTS)
    assert [(r["infer_order"], r["num_steps"]) for r in a] == [("random", 1), ("random", 4), ("raster", 4)]
    for key in ("infer_order", "num_steps", "precision", "recall", "class_acc"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    for key in ("fd", "fd_lo", "fd_hi", "kid"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-7), key
