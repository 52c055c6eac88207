"""Sweeps die cleanly: a stopped sweep starts nothing new, stops its jobs' whole process groups (SIGTERM,
then SIGKILL), and its children die with it even when the sweep itself is SIGKILLed (Linux)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO

from sar_lightning.sweeps.processes import Children
from sar_lightning.sweeps.sweep import Job, launch, run_job

LINUX = sys.platform.startswith("linux")


def _grid(tmp_path: Path) -> Path:
    """One AR run of the tiny model on digits, long enough to still be training seconds after it began."""
    path = tmp_path / "long.yaml"
    path.write_text("# Question: a test grid\nname: long\nquestion: does the sweep die cleanly?\n"
                    "defaults: [base, data/digits]\nruns:\n"
                    "  - {label: AR, overrides: {train.order: raster, train.schedule: ar, train.num_steps: null, "
                    "train.max_steps: 400, train.val_every: 400, train.ckpt_every: 20, train.log_every: 2, "
                    "train.sample_steps: [4]}}\n"
                    "evals:\n  - {infer.orders: [], infer.num_steps: [4]}\n")
    return path


def _pids_mentioning(text: str) -> list[int]:
    """Processes (not this one) whose command line contains ``text``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _jobs(tmp_path: Path, n: int) -> list[Job]:
    return [Job(f"run{i}", f"run{i}", str(tmp_path / f"run{i}"), [[]], 1) for i in range(n)]


def test_a_stopped_launch_cancels_every_queued_job_and_starts_nothing(tmp_path, capsys):
    children = Children()
    children.request_stop(signal.SIGTERM)
    results = launch(_jobs(tmp_path, 3), 2, "local", tmp_path / "submitit", {}, "t", children=children)
    assert [r["status"] for r in results] == ["cancelled"] * 3
    assert not list(tmp_path.rglob("sweep.log"))  # no step was begun
    assert capsys.readouterr().out.count(": cancelled") == 3  # the progress display says so


@pytest.mark.parametrize("code", [0, 3])
def test_run_job_runs_its_steps_as_before(tmp_path, monkeypatch, code):
    # A stand-in interpreter: each step prints its arguments into sweep.log and exits with FAKE_CODE.
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/sh\necho "ran $2 $3 $4"\nexit ${FAKE_CODE:-0}\n')
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    monkeypatch.setenv("FAKE_CODE", str(code))
    job = _jobs(tmp_path, 1)[0]
    Path(job.run_dir).mkdir()  # expand writes its config.yaml
    job.evals = [["infer.num_steps=[4]"], ["infer.num_steps=[8]"]]
    result = run_job(job)
    assert result["status"] == ("trained" if code == 0 else "failed") and result["was"] == "new"
    log = (tmp_path / "run0" / "sweep.log").read_text()
    assert log.count("ran sar_lightning train") == 1
    # both evaluations in one process, one after the other
    assert log.count("ran sar_lightning evaluate") == (1 if code == 0 else 0)
    assert ("infer.num_steps=[4] --and infer.num_steps=[8]" in log) == (code == 0)


# A stand-in interpreter for a local sweep's job: "train ... --then-evaluate" writes done.json, then reads its
# evaluation's thread count from stdin; "evaluate" (a process of its own) only says it ran.
MERGED = """#!/bin/sh
echo "ran $2 $3 $4"
case "$*" in *--then-evaluate*)
  run=$(dirname "$4"); [ -n "$FAKE_DDP" ] && exit 0
  echo '{"global_step": 1}' > "$run/done.json"
  read threads || { echo "no slot given"; exit 0; }
  echo "evaluated in the training process with $threads thread(s)";;
esac
exit 0
"""


@pytest.mark.parametrize("how", ["merged", "several devices", "stopped"])
def test_a_local_job_trains_and_evaluates_in_one_process(tmp_path, monkeypatch, how):
    """Locally, one process trains, waits for an evaluation slot holding none, then evaluates with the
    threads it is given on stdin; a process that exits after training (several devices trained) leaves
    the evaluation to a process of its own; a sweep stopped before the slot closes stdin: no evaluation."""
    from sar_lightning.sweeps import sweep as sweep_module
    from sar_lightning.sweeps.sweep import CoreShare, Slots

    fake = tmp_path / "fake-python"
    fake.write_text(MERGED)
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    if how == "several devices":
        monkeypatch.setenv("FAKE_DDP", "1")
    monkeypatch.setattr(sweep_module, "pending_settings",
                        lambda path, e: 0 if "in the training process" in (Path(path) / "sweep.log").read_text() else 1)
    job = _jobs(tmp_path, 1)[0]
    Path(job.run_dir).mkdir()
    (Path(job.run_dir) / "config.yaml").write_text("{}")
    job.evals = [["infer.num_steps=[4]"], ["infer.num_steps=[8]"]]
    slots, children = Slots(2, jobs=1), Children()
    if how == "stopped":  # the stop comes while the trained process waits for its evaluation slot
        real = slots.acquire
        monkeypatch.setattr(slots, "acquire", lambda key, stopping: real(key, stopping) if key[0] == 0 else
                            (children.request_stop(signal.SIGTERM), real(key, stopping))[1])
    result = run_job(job, children=children, cores=CoreShare(2, 2, 1), slots=slots)
    log = (tmp_path / "run0" / "sweep.log").read_text()
    assert log.count("ran sar_lightning train") == 1 and "--then-evaluate infer.num_steps=[4] --and" in log
    assert slots.free == 2  # every slot given back
    if how == "merged":
        assert result["status"] == "trained"
        assert "evaluated in the training process with 2 thread(s)" in log  # the last job: both cores
        assert "ran sar_lightning evaluate" not in log
    elif how == "several devices":
        assert result["status"] == "trained"
        assert log.count("ran sar_lightning evaluate") == 1
    else:
        assert result["status"] == "stopped" and "no slot given" in log
        assert "ran sar_lightning evaluate" not in log
        assert "the sweep was interrupted by SIGTERM" in log


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_a_stop_terms_the_whole_group_then_kills_what_ignores_it(tmp_path):
    # The child ignores SIGTERM and has a child of its own (same group): both must be gone after the grace.
    script = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print(p.pid, flush=True); time.sleep(60)")
    children = Children(grace=0.5)
    proc = children.start([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    grandchild = int(proc.stdout.readline())
    codes = []
    waiter = threading.Thread(target=lambda: codes.append(children.wait(proc)))
    waiter.start()
    start = time.time()
    children.request_stop(signal.SIGINT)
    assert children.start([sys.executable, "-c", "pass"]) is None  # nothing starts once stopping
    while waiter.is_alive() and time.time() - start < 10:
        children.enforce()
        waiter.join(0.1)
    assert codes == [-signal.SIGKILL] and time.time() - start < 5
    deadline = time.time() + 5
    while time.time() < deadline and _alive(grandchild):
        time.sleep(0.05)
    assert not _alive(grandchild), "the child's own child outlived the stop"
    assert not children.live
    proc.stdout.close()


SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
TEST = "test_a_signalled_sweep_leaves_no_process_and_no_torn_checkpoint"


@pytest.fixture(scope="module")
def sweeps(request, tmp_path_factory):
    """One sweep subprocess per signal the session will test, all started at once: each spends most of its
    time importing torch and Lightning, which overlap, so the three tests take about the time of one.
    ``{signal: (Popen, root, folder)}``; whatever is left is killed at the end."""
    wanted = [s for s in SIGNALS if any(getattr(item, "originalname", None) == TEST
                                        and item.callspec.params.get("sig") == s for item in request.session.items)]
    started = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for sig in wanted or SIGNALS:
        folder = tmp_path_factory.mktemp(sig.name)
        root = folder / "runs"
        # sweep.jobs=2 for one run: each job gets cpu_count // jobs = 1 thread on a 2-core machine (the threads=1
        # override alone does not reach the subprocesses: run_job passes threads= after it).
        cmd = [sys.executable, "-m", "sar_lightning", "sweep", str(_grid(folder)), "sweep.profile=smoke",
               "sweep.jobs=2", f"root={root}", "threads=1"]
        with open(folder / "out.txt", "w") as out, open(folder / "err.txt", "w") as err:
            started[sig] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err,
                                             start_new_session=True), root, folder)
    yield started
    for proc, root, _ in started.values():  # a failed test's leftovers
        for pid in [proc.pid, *_pids_mentioning(str(root))]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait()


def _training_run(proc: subprocess.Popen, root: Path, timeout: float = 240) -> Path | None:
    """The run folder once its progress.json says training is under way (None if it never is)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for progress in root.glob("*/progress.json"):
            state = json.loads(progress.read_text() or "{}")
            if state.get("state") == "training" and state.get("done", 0) >= 2:
                return progress.parent
        time.sleep(0.1)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="/proc and the parent-death signal are Linux's")
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signalled_sweep_leaves_no_process_and_no_torn_checkpoint(sweeps, sig):
    proc, root, folder = sweeps[sig]
    run_dir = _training_run(proc, root)
    assert run_dir is not None, (folder / "err.txt").read_text()[-2000:]
    assert _pids_mentioning(str(run_dir))  # the training subprocess runs
    os.kill(proc.pid, sig)  # the sweep alone: its jobs run in their own sessions
    start = time.time()
    while time.time() - start < 20 and (proc.poll() is None or _pids_mentioning(str(run_dir))):
        time.sleep(0.1)
    assert not _pids_mentioning(str(run_dir)), f"a job outlived its sweep by {time.time() - start:.0f} s"
    code = proc.wait(timeout=1)
    err = (folder / "err.txt").read_text()
    manifest = json.loads((root / "sweeps" / "long-smoke.json").read_text())
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        # killed outright: the manifest written as the sweep began still says what it was doing
        assert [r["status"] for r in manifest["runs"]] == ["pending"] and manifest["finished"] is None
        assert manifest["started"] and manifest["sweeps"][0]["started"] == manifest["started"]
    else:
        assert code == 128 + sig, err[-2000:]
        assert (f"[sweep] interrupted by {sig.name}: stopped 1 running job(s); "
                "re-run the same command to resume") in err
        assert [r["status"] for r in manifest["runs"]] == ["stopped"] and manifest["finished"]
        assert f"the sweep was interrupted by {sig.name}" in (run_dir / "sweep.log").read_text()
    ckpt_dir = run_dir / "checkpoints"
    ckpts = sorted(p.name for p in ckpt_dir.iterdir()) if ckpt_dir.exists() else []
    assert len([n for n in ckpts if n.startswith("last")]) <= 1, ckpts  # no last-v1.ckpt from a second trainer
    assert all(n.endswith(".ckpt") and not n.startswith(".") for n in ckpts), ckpts  # no temporary files
    assert not (run_dir / "done.json").exists()


def test_a_second_signal_kills_at_once():
    children = Children(grace=60)
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    proc = children.start([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # SIGTERM is ignored from here on
    children.request_stop(signal.SIGTERM)
    children.enforce()  # SIGTERM: ignored, and the grace is a minute
    children.request_stop(signal.SIGTERM)  # ... but a second signal does not wait for it
    children.enforce()
    assert children.wait(proc) == -signal.SIGKILL
    proc.stdout.close()
