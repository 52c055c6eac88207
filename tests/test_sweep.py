"""The sweep runner: grid files, a smoke sweep end to end through the plots, re-runs, resume, failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from sar_lightning.cli import main as cli
from sar_lightning.config import ConfigError
from sar_lightning.runs import read_results
from sar_lightning.sweeps.sweep import Job, Manifest, expand, load_grid, sweep

GRIDS = sorted((REPO / "experiments" / "grids").glob("*.yaml"))
GRIDS = [g for g in GRIDS if g.name != "profiles.yaml"]


def _grid(tmp_path: Path, runs: str, name: str = "two", evals: str | None = None) -> Path:
    evals = evals or "  - {infer.orders: [], infer.num_steps: [1, 4, N]}\n"
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"# Question: a test grid\nname: {name}\nquestion: does the sweep run?\n"
                    f"defaults: [base, data/digits]\nruns:\n{runs}evals:\n{evals}")
    return path


TWO_RUNS = ("  - {label: AR, overrides: {train.order: raster, train.schedule: ar, train.num_steps: null}}\n"
            "  - {label: SAR-TS, overrides: {train.order: random, train.schedule: random, train.num_steps: 4}}\n")


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.stem)
@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_grid_files_validate(grid, profile, tmp_path):
    assert grid.read_text().startswith("# Question:")
    spec, jobs = expand(grid, profile, root=str(tmp_path))
    assert len(jobs) == len(spec.runs) >= 3
    assert len({j.run_id for j in jobs}) == len(jobs)
    for job in jobs:  # every run got its resolved config, with N substituted in the step counts
        assert (Path(job.run_dir) / "config.yaml").exists()
        assert all("N" not in arg.split("=")[1] for e in job.evals for arg in e if "num_steps" in arg)


def test_only_picks_runs_by_label_with_the_run_ids_of_the_whole_grid(tmp_path, capsys):
    grid = _grid(tmp_path, TWO_RUNS)
    _, whole = expand(grid, "smoke", root=str(tmp_path / "a"))
    _, part = expand(grid, "smoke", root=str(tmp_path / "b"), only=["SAR-TS"])
    assert [j.label for j in part] == ["SAR-TS"] and part[0].run_id == whole[1].run_id
    assert cli(["sweep", str(grid), "sweep.profile=smoke", f"root={tmp_path / 'c'}", "sweep.only=AR,GPT"]) == 2
    err = capsys.readouterr().err
    assert "sweep.only" in err and "'GPT'" in err and "valid labels: AR, SAR-TS" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()  # nothing written


def test_extra_evals_only_when_asked(tmp_path, monkeypatch):
    """The orders grid's extra_evals (make sweep-all): the same runs, one more evaluation block at the end."""
    grid = REPO / "experiments" / "grids" / "orders.yaml"
    _, plain = expand(grid, "smoke", root=str(tmp_path))
    _, extra = expand(grid, "smoke", root=str(tmp_path), extra_evals=True)
    assert [j.run_id for j in extra] == [j.run_id for j in plain]
    for p, e in zip(plain, extra):
        assert e.evals[:-1] == p.evals and len(e.evals) == len(p.evals) + 1
        assert 'infer.orders=["next_scale", "fixed_random"]' in e.evals[-1] and "infer.num_steps=[64]" in e.evals[-1]
    import sar_lightning.sweeps.sweep as sweep_module

    seen = []
    monkeypatch.setattr(sweep_module, "sweep", lambda *a: seen.append(a[-1]) or [])
    assert cli(["sweep", str(grid), "sweep.profile=smoke", "sweep.extra_evals=true"]) == 0
    assert cli(["sweep", str(grid)]) == 0
    assert seen == [True, False]


def test_a_finished_runs_unreadable_config_is_replaced_not_a_crash(tmp_path, capsys):
    from sar_lightning.runs import RunDir
    from sar_lightning.sweeps.sweep import _as_trained

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config.write_text("trainer: {devices: [1,\n")  # torn
    assert _as_trained(run, "threads: 2\n") == "threads: 2\n"
    assert "replacing unreadable" in capsys.readouterr().err
    run.config.write_text("threads: 1\ntrainer: {devices: 1}\n")
    assert _as_trained(run, "threads: 0\ntrainer: {devices: 4}\ninfer: {seed: 3}\n") == \
        "threads: 1\ntrainer:\n  devices: 1\ninfer:\n  seed: 3\n"


def test_paper_profile_says_what_data_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="imagenet_vq16"):
        expand(GRIDS[0], "paper", root=str(tmp_path))


def test_bad_grid_and_profile_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="valid profiles"):
        expand(_grid(tmp_path, TWO_RUNS), "huge", root=str(tmp_path))
    bad = _grid(tmp_path, "  - {label: x, overrides: {train.order: zigzag}}\n", name="bad")
    with pytest.raises(ConfigError, match="valid orders"):
        expand(bad, "smoke", root=str(tmp_path))
    with pytest.raises(ConfigError, match="runz"):
        bad.write_text("name: bad\nquestion: q\ndefaults: [base]\nrunz: []\n")
        load_grid(bad)


def test_smoke_sweep_with_two_seeds_end_to_end_then_rerun_trains_nothing(tmp_path, capsys):
    """One recipe x two training seeds through training, evaluation (with bootstrap intervals), the
    aggregated table, the figures and the findings report; a re-run trains nothing."""
    grid, root = _grid(tmp_path, TWO_RUNS.splitlines(keepends=True)[0]), tmp_path / "runs"
    results = sweep(grid, "smoke", jobs=2, root=str(root), seeds=[0, 1])
    assert [r["status"] for r in results] == ["trained", "trained"]
    manifest = json.loads((root / "sweeps" / "two-smoke.json").read_text())
    assert [(r["label"], r["seed"]) for r in manifest["runs"]] == [("AR", 0), ("AR", 1)]
    rows = [read_results(root / r["run_id"] / "results.jsonl") for r in results]
    assert [[r["num_steps"] for r in run] for run in rows] == [[1, 4, 64]] * 2
    assert all(r["fd_lo"] <= r["fd"] <= r["fd_hi"] and r["train_seed"] == r["seed"] for run in rows for r in run)
    assert [run[0]["seed"] for run in rows] == [0, 1] and rows[0][0]["fd"] != rows[1][0]["fd"]  # own samples
    # Each run trained and evaluated in one process; the evaluation is the one a process of its own gives.
    run0 = root / results[0]["run_id"]
    log = (run0 / "sweep.log").read_text()
    assert log.count("--then-evaluate") == 1 and "evaluating in the training process" in log
    assert "-m sar_lightning evaluate" not in log
    alone = tmp_path / "alone" / run0.name
    shutil.copytree(run0, alone, ignore=shutil.ignore_patterns("results.jsonl"))
    _, jobs = expand(grid, "smoke", root=str(root), seeds=[0, 1])
    assert [(j.status, j.evaluation_left) for j in jobs] == [("done", False)] * 2
    assert cli(["evaluate", str(alone), "threads=1", *jobs[0].evals[0]]) == 0
    separate = read_results(alone / "results.jsonl")
    assert [(r["num_steps"], r["fd"], r["fd_lo"], r["fd_hi"]) for r in separate] == \
        [(r["num_steps"], r["fd"], r["fd_lo"], r["fd_hi"]) for r in rows[0]]
    stamps = {p: p.stat().st_mtime for p in root.rglob("*.ckpt")}
    again = sweep(grid, "smoke", jobs=2, root=str(root), seeds=[0, 1])
    assert [r["status"] for r in again] == ["skipped (done)"] * 2
    assert {p: p.stat().st_mtime for p in root.rglob("*.ckpt")} == stamps
    # Only the new step count is sampled when the grid asks for one more.
    trained = (run0 / "config.yaml").read_text()
    assert "enable_progress_bar: false" in trained  # as the sweep trained it
    grid.write_text(grid.read_text().replace("[1, 4, N]", "[1, 2, 4, N]"))
    assert all(j.evaluation_left for j in expand(grid, "smoke", root=str(root), seeds=[0, 1])[1])  # not "done" yet
    sweep(grid, "smoke", jobs=2, root=str(root), seeds=[0, 1])
    from omegaconf import OmegaConf

    now, then = OmegaConf.load(run0 / "config.yaml"), OmegaConf.create(trained)
    assert (now.trainer, now.threads) == (then.trainer, then.threads)  # the record of how it trained stays
    assert list(now.infer.num_steps) == [1, 2, 4, 64] and list(then.infer.num_steps) == [1, 4, 64]  # infer moves
    assert sorted(r["num_steps"] for r in read_results(root / results[0]["run_id"] / "results.jsonl")) == [1, 2, 4, 64]
    history = json.loads((root / "sweeps" / "two-smoke.json").read_text())["sweeps"]  # three sweeps, one file
    assert [h["trained"] for h in history] == [2, 0, 0] and all(h["finished"] and h["started"] for h in history)
    # ... the table folds the two seeds into one point per setting ...
    table = tmp_path / "table"
    collect = subprocess.run([sys.executable, "analysis/collect.py", "--root", str(root), "--out", str(table)],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert collect.returncode == 0, collect.stderr[-2000:]
    import pandas as pd

    points = pd.read_csv(f"{table}_seeds.csv")
    assert len(points) == 4 and (points["n_seeds"] == 2).all() and (points["interval"] == "seeds").all()
    # ... the analysis draws from the table, and the report gives every finding a verdict.
    out = tmp_path / "figures"
    plot = subprocess.run([sys.executable, "analysis/plot_tradeoffs.py", "--root", str(root), "--grid", "two",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert list(out.glob("*.png")) and list(out.glob("*.pdf")) and list(out.glob("*.md"))
    report = subprocess.run([sys.executable, "analysis/report.py", "--root", str(root), "--out",
                             str(tmp_path / "FINDINGS.md")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (tmp_path / "FINDINGS.md").read_text()
    assert "not run" in text and "make sweep-orders" in text  # this grid runs none of the findings' grids
    # The committed archive (no checkpoints) gives the same table and the same report as the run folders.
    from sar_lightning.analysis.table import collect as collect_table
    from sar_lightning.sweeps.archive import archive

    assert archive(root, tmp_path / "archive")[:2] == (2, 8)
    assert not list((tmp_path / "archive").rglob("*.ckpt"))
    pd.testing.assert_frame_equal(collect_table(tmp_path / "archive"), collect_table(root))
    again = subprocess.run([sys.executable, "analysis/report.py", "--root", str(tmp_path / "archive"), "--out",
                            str(tmp_path / "FINDINGS2.md")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "FINDINGS2.md").read_text().replace(str(tmp_path / "archive"), str(root)) == text


def test_a_failed_run_is_reported_and_the_others_finish(tmp_path, capsys, tiny_codes):
    codes = tiny_codes("broken", n_train=64, n_val=32, source="test")  # 4x4 codes, vocabulary 5, 3 classes
    (codes / "train_codes.npy").write_bytes(b"not a numpy file")  # the config validates; training fails
    runs = TWO_RUNS + (f"  - {{label: broken, overrides: {{data.name: codes, data.path: {codes}, "
                       "train.sample_steps: [4], infer.num_steps: [4]}}\n")
    grid = _grid(tmp_path, runs, name="three", evals="  - {infer.orders: [], infer.num_steps: [4]}\n")
    assert cli(["sweep", str(grid), "sweep.profile=smoke", "sweep.jobs=2", f"root={tmp_path / 'runs'}"]) == 1
    out = capsys.readouterr().out
    assert "FAILED broken" in out and "sweep.log" in out and "2 trained, 1 failed" in out
    log = next((tmp_path / "runs").glob("random-16-random_tiny_broken_*/sweep.log"))
    assert "cannot read codes split" in log.read_text()


@pytest.mark.slow
def test_an_interrupted_sweep_resumes(tmp_path):
    # A short AR run and a longer SAR-TS run side by side: kill the sweep once the first is done and
    # the second has a checkpoint; the same command then skips the first and resumes the second.
    runs = ("  - {label: AR, overrides: {train.order: raster, train.schedule: ar, train.num_steps: null, "
            "train.max_steps: 12}}\n"
            "  - {label: SAR-TS, overrides: {train.order: random, train.schedule: random, train.num_steps: 4, "
            "train.max_steps: 200, train.ckpt_every: 10, train.val_every: 100}}\n")
    grid, root = _grid(tmp_path, runs), tmp_path / "runs"
    cmd = [sys.executable, "-m", "sar_lightning", "sweep", str(grid), "sweep.profile=smoke", "sweep.jobs=2",
           f"root={root}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (list(root.glob("raster-*/done.json"))
                                          and list(root.glob("random-4-*/checkpoints/step000020.ckpt"))):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its training subprocesses
    proc.wait()
    assert list(root.glob("raster-*/done.json")) and not list(root.glob("random-4-*/done.json"))
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1 skipped (done), 1 resumed, 0 trained, 0 failed" in out.stdout
    assert json.loads(next(root.glob("random-4-*/done.json")).read_text())["global_step"] == 200


@pytest.mark.slow
def test_submitit_local_executor_runs_the_same_jobs(tmp_path):
    grid, root = _grid(tmp_path, TWO_RUNS.splitlines(keepends=True)[0], name="one"), tmp_path / "runs"
    results = sweep(grid, "smoke", jobs=1, root=str(root), launcher="submitit-local")
    assert [r["status"] for r in results] == ["trained"]
    assert read_results(root / results[0]["run_id"] / "results.jsonl")
    assert list((root / "sweeps" / "submitit").iterdir())  # submitit's own job folders



def test_cores_freed_at_the_end_of_a_sweep_go_to_the_evaluations_still_going(tmp_path):
    """Two cores, two slots, three jobs: an evaluation starts with one thread while three jobs are unfinished;
    when jobs end, the evaluation still running is given both cores (its run folder's threads file), which
    goes when its job ends."""
    from sar_lightning.runs import RunDir
    from sar_lightning.sweeps.sweep import CoreShare

    runs = [RunDir(tmp_path / name) for name in ("a", "b", "c")]
    for r in runs:
        r.path.mkdir()
    share = CoreShare(cores=2, slots=2, jobs=3)
    assert share.begin(runs[0]) == 1 and runs[0].threads.read_text().strip() == "1"
    share.end(runs[1])  # b ended (say it failed in training): a and c are left, one core each
    assert runs[0].threads.read_text().strip() == "1" and not runs[1].threads.exists()
    share.end(runs[2])  # c ended: a takes both cores
    assert runs[0].threads.read_text().strip() == "2"
    share.end(runs[0])
    assert not runs[0].threads.exists()
    assert CoreShare(cores=8, slots=4, jobs=2).begin(runs[1]) == 4  # fewer runs than slots: more threads each


def test_slots_start_every_training_before_any_evaluation(tmp_path):
    """One slot, commands asking in a shuffled order: trainings (key 0) go first in grid order, then the
    evaluations (key 1), and none before every job has said hello; a waiting command gives up once the sweep
    is stopping."""
    import random
    import threading

    from sar_lightning.sweeps.sweep import Slots

    slots, order, gate = Slots(1, jobs=1), [], threading.Event()
    assert not slots.acquire((0, 0), lambda: True)  # no hello yet: nothing given (the waiter stops)
    slots.hello()
    assert slots.acquire((9, 9), lambda: False)  # hold the slot until every request waits
    keys = [(kind, job) for job in range(3) for kind in (0, 1)]
    random.Random(0).shuffle(keys)

    def ask(key):
        if slots.acquire(key, lambda: False):
            order.append(key)
            slots.release()

    threads = [threading.Thread(target=ask, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    while len(slots.waiting) < len(keys):
        time.sleep(0.01)
    slots.release()
    for t in threads:
        t.join(10)
    assert order == sorted(keys) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert slots.acquire((0, 0), lambda: False)  # held again: a stopping sweep's waiter leaves empty-handed
    gate.set()
    assert not slots.acquire((1, 5), gate.is_set) and slots.waiting == []


def test_the_manifest_is_kept_as_the_sweep_goes_and_a_killed_sweeps_time_is_kept(tmp_path):
    """Written when a sweep starts and after each run, so a sweep killed outright leaves its wall time so far;
    the sweep that resumes it adds its own record (the report sums both), unless it trained every run again."""
    from sar_lightning.analysis.report import wall_times

    path, root = tmp_path / "sweeps" / "g-default.json", str(tmp_path)
    jobs = [Job(f"{n} s0", f"{n}_s0", str(tmp_path / n), [], 1, name=n, seed=0) for n in ("a", "b")]
    head = {"grid": "g", "profile": "default", "data": None, "question": "?", "jobs": 2}
    killed = Manifest(path, jobs, time.time() - 600, head)
    killed.write()
    first = json.loads(path.read_text())
    assert [r["status"] for r in first["runs"]] == ["pending", "pending"] and first["finished"] is None
    killed.ended(0, {"status": "trained", "seconds": 500.0})  # then the sweep is killed while b trains
    on_disk = json.loads(path.read_text())
    assert [r["status"] for r in on_disk["runs"]] == ["trained", "pending"] and on_disk["seconds"] >= 600
    assert len(on_disk["sweeps"]) == 1 and on_disk["sweeps"][0]["trained"] == 1
    resumed = Manifest(path, jobs, time.time() - 300, head)
    resumed.write([{"status": "skipped (done)"}, {"status": "resumed", "seconds": 290.0}], finished=True)
    final = json.loads(path.read_text())
    assert [h["finished"] is None for h in final["sweeps"]] == [True, False]
    assert [round(h["seconds"], -1) for h in final["sweeps"]] == [600, 300]
    assert "| g | default | 2 | 2 | 0 | 2 | 2 (1 unfinished) | 15.0 min |" in "\n".join(wall_times(root))
    # a sweep that trained every run again from scratch: the earlier sweeps no longer describe any result
    Manifest(path, jobs, time.time() - 100, head).write([{"status": "trained"}] * 2, finished=True)
    assert [round(h["seconds"], -1) for h in json.loads(path.read_text())["sweeps"]] == [100]
    # a torn manifest is replaced, with a warning, rather than stopping the sweep
    path.write_text("{torn")
    Manifest(path, jobs, time.time(), head).write()
    assert len(json.loads(path.read_text())["sweeps"]) == 1
