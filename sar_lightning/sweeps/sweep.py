"""Run a grid of runs: ``python -m sar_lightning sweep experiments/grids/<grid>.yaml [sweep.profile=P] [sweep.jobs=N]``.

A grid file names the question, the config files every run starts from, one entry per run (a label
and ``key: value`` overrides) and the evaluations of every run (override sets for the evaluate
command). Profiles (``experiments/grids/profiles.yaml``, then the grid's own ``profiles:``) scale it:
``smoke`` for tests, ``default`` for the embedded digits data, ``paper`` for ImageNet codes on GPUs.
``sweep.data=NAME`` then merges the data overlay ``experiments/grids/data/NAME.yaml`` (the same layout,
per profile ``train:``/``eval:``), which moves any grid onto another data set (``fashion_mnist``).
The string ``N`` in a step-count list means the data's number of tokens.

Training seeds (``sweep.seeds=[0,1,2]``, else a profile's or the grid's ``seeds:``) replicate every run of the
grid: replica ``s`` trains with ``train.seed=s`` (part of the run id) and samples with ``infer.seed=s``,
so each replica has its own training draws and its own samples. Replicas share their grid label.
``sweep.only=[raster,random]`` runs just the grid's runs of those labels (the same run ids as in the whole grid).
``sweep.extra_evals=true`` adds the grid's ``extra_evals:`` blocks, settings too dear for the main job's time
(``make sweep-all`` passes it); a finished run then samples only those.

Finished runs are skipped, interrupted ones resume from their last checkpoint, evaluation only
samples the settings missing from each run's results. Jobs run as subprocesses or through submitit
(``sweep.launcher=slurm`` on a cluster, ``submitit-local``). A job is two steps: training, then one
evaluation for all of the grid's evaluations; locally both run in one process (``train --then-evaluate``:
the imports are paid once), elsewhere in two (``python -m sar_lightning train|evaluate ...``). Locally at most
``sweep.jobs`` steps run at once
(``Slots``): every run's training is started before any evaluation (the long tasks first, so the sweep
ends with short ones), each training with a fixed share of the cores (``cores // jobs`` threads, so a
run's weights never depend on the sweep's timing); an evaluation takes the cores the others leave
(``CoreShare``: sampling gives the same tokens with any number of threads).
A failed run is reported with its log and does not stop the others.

A sweep dies cleanly: on SIGINT (Ctrl-C) or SIGTERM it starts no new job (queued ones are reported as
cancelled), sends SIGTERM to every running job's process group, SIGKILL to what is left after 10 s (at
once on a second signal), records the runs' statuses so far and exits with 130 or 143; re-running the
same command resumes (the manifest ``<root>/sweeps/<grid>-<tag>.json`` is rewritten whole as the sweep starts and
after each run, so a sweep killed outright still leaves its wall time so far; see ``Manifest``). Each job's
processes form their own process group and, on Linux, get SIGTERM when the sweep dies, even by SIGKILL, so no
orphaned training races a re-run in the same folder.
"""

from __future__ import annotations

import heapq
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import submitit
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sar_lightning.config import ConfigError, load_config, run_id, to_yaml
from sar_lightning.data.codes import data_info
from sar_lightning.evaluation.evaluate import pending_settings
from sar_lightning.files import atomic_write_text
from sar_lightning.models.registry import MODELS, model_class
from sar_lightning.options import AND, THEN_EVALUATE
from sar_lightning.runs import SWEEPS, RunDir, manifest_path, merge_history, superseded, sweep_history, sweep_record
from sar_lightning.sweeps.processes import CHILDREN, Children, SweepInterrupted, install_stop_handlers, restore_handlers
from sar_lightning.sweeps.progress import SweepProgress

PROFILES = ("smoke", "default", "gpu", "paper")


@dataclass
class RunSpec:
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    family: str | None = None  # another model family at the profile's size: gpt = the GPT baseline


@dataclass
class GridSpec:
    name: str
    question: str
    defaults: list[str]
    runs: list[RunSpec]
    evals: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    extra_evals: list[dict[str, Any]] = field(default_factory=list)  # only with sweep.extra_evals (make sweep-all)
    profiles: dict[str, Any] = field(default_factory=dict)  # profile -> {train: {...}, eval: {...}, seeds}
    seeds: list[int] | None = None  # training seeds; a profile's seeds or sweep.seeds win
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    label: str
    run_id: str
    run_dir: str
    evals: list[list[str]]  # one override list per evaluate call
    threads: int
    status: str = "new"
    name: str = ""  # the grid label, shared by a run's seed replicas (``label`` is unique: "raster s1")
    seed: int | None = None
    evaluation_left: bool = False  # a trained run (status done) with settings still to sample

    def __post_init__(self):
        self.name = self.name or self.label


LAUNCHERS = ("local", "submitit-local", "slurm")


@dataclass
class SweepSection:
    """How the grid is run (every other key=value is a config override of every run)."""

    profile: str = "default"  # smoke | default | gpu | paper (experiments/grids/profiles.yaml)
    jobs: int | None = None  # steps at once (default: the number of cores)
    launcher: str = "local"  # local | submitit-local | slurm
    data: str | None = None  # a data overlay of experiments/grids/data/ (e.g. fashion_mnist)
    # training seeds, e.g. [0,1,2]: every run replicated per seed (default: the profile's or the grid's seeds:,
    # else the configs' train.seed)
    seeds: list[int] | None = None
    only: list[str] = field(default_factory=list)  # run labels of the grid: run just those (e.g. [raster,random])
    extra_evals: bool = False  # also sample the grid's extra_evals: blocks (make sweep-all sets it)


@dataclass
class SweepArgs:
    """``python -m sar_lightning sweep GRID`` keys of the sweep itself."""

    sweep: SweepSection = field(default_factory=SweepSection)


def step_command(step: str) -> list[str]:
    """The command line of a job's step (``train`` or ``evaluate``), before its positional argument."""
    return [sys.executable, "-m", "sar_lightning", step]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as ``nproc`` counts them), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def load_grid(path: str | Path) -> GridSpec:
    try:
        grid = OmegaConf.merge(OmegaConf.structured(GridSpec), OmegaConf.load(path))
        return OmegaConf.to_object(grid)
    except Exception as err:  # OmegaConf's errors name the key
        raise ConfigError(f"grid {path}: {err}") from None


def _dotlist(overrides: dict, num_tokens: int | None = None) -> list[str]:
    out = []
    for key, value in overrides.items():
        if isinstance(value, list) and num_tokens is not None:
            value = [num_tokens if v == "N" else v for v in value]
        out.append(f"{key}={json.dumps(value)}")
    return out


def experiments_root(grid_path: Path) -> Path:
    """The ``experiments/`` folder a grid's ``defaults`` refer to: the nearest one holding base.yaml
    above the grid file, else the one shipped beside the package."""
    for parent in grid_path.resolve().parents:
        if (parent / "base.yaml").exists():
            return parent
    return Path(__file__).resolve().parents[2] / "experiments"


def _profile(grid: GridSpec, profile: str, experiments: Path, data: str | None = None) -> tuple[list, dict, dict, list]:
    """Experiment files, run overrides, eval overrides and training seeds (None: the configs') of a profile:
    grids/profiles.yaml first, then the grid's own, then the data overlay ``grids/data/<data>.yaml``. The files
    (``defaults:``, names under ``experiments/``) merge after the grid's own defaults, the overrides after both."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    shared_file = experiments / "grids" / "profiles.yaml"
    shared = OmegaConf.load(shared_file) if shared_file.exists() else {}
    overlay = {}
    if data is not None:
        overlay_file = experiments / "grids" / "data" / f"{data}.yaml"
        if not overlay_file.exists():
            valid = sorted(f.stem for f in overlay_file.parent.glob("*.yaml"))
            raise ConfigError(f"no data overlay {overlay_file}; valid sweep.data names: {', '.join(valid) or 'none'}")
        overlay = OmegaConf.load(overlay_file)
    merged = OmegaConf.merge(shared.get(profile, {}), grid.profiles.get(profile, {}), overlay.get(profile, {}))
    tree = OmegaConf.to_container(merged)
    unknown = set(tree) - {"defaults", "train", "eval", "seeds"}
    if unknown:
        raise ConfigError(f"profile {profile!r}: unknown keys {sorted(unknown)}; valid: defaults, train, eval, seeds")
    return tree.get("defaults") or [], tree.get("train") or {}, tree.get("eval") or {}, tree.get("seeds")


def parse_seeds(text: str | list | None) -> list[int] | None:
    """``"0,1,2"`` or ``[0, 1, 2]`` -> ``[0, 1, 2]``: distinct non-negative integers, or None."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        seeds = [int(str(x).strip()) for x in items if str(x).strip()]
    except ValueError:
        raise ConfigError(f"seeds: expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: give distinct integers >= 0 such as 0,1,2, got {text!r}")
    return seeds


def expand(grid_path: str | Path, profile: str = "default", root: str | None = None, jobs: int = 1,
           extra: list[str] | tuple = (), data: str | None = None, seeds: list[int] | None = None,
           only: list[str] | None = None, extra_evals: bool = False) -> tuple[GridSpec, list[Job]]:
    """Grid file -> validated jobs (one per run and training seed; ``only``: the runs with these labels;
    ``extra_evals``: the grid's ``extra_evals:`` blocks after its ``evals:``). Every run config is checked
    before any work starts."""
    grid_path = Path(grid_path)
    grid = load_grid(grid_path)
    if only:
        labels = [spec.label for spec in grid.runs]
        unknown = [label for label in only if label not in labels]
        if unknown:
            raise ConfigError(f"sweep.only: grid {grid.name} has no run labelled {', '.join(map(repr, unknown))}; "
                              f"valid labels: {', '.join(labels)}")
        grid.runs = [spec for spec in grid.runs if spec.label in only]
    experiments = experiments_root(grid_path)
    files, run_over, eval_over, profile_seeds = _profile(grid, profile, experiments, data)
    seeds = parse_seeds(seeds if seeds is not None else profile_seeds if profile_seeds is not None else grid.seeds)
    defaults = [*grid.defaults, *files]
    threads = max(1, available_cores() // max(1, jobs))
    out, seen, configs = [], {}, []
    for spec, seed in [(spec, seed) for spec in grid.runs for seed in (seeds or [None])]:
        # 1) the base files, 2) the profile + data overlay, 3) the run, 4) the seed, 5) the command line,
        # 6) the main evaluation.
        replica = [] if seed is None else [f"train.seed={seed}", f"infer.seed={seed}"]
        overrides = [*_dotlist(run_over), *_dotlist(spec.overrides), *replica, *extra]
        label = spec.label if seeds is None or len(seeds) == 1 else f"{spec.label} s{seed}"
        if root is not None:
            overrides.append(f"root={root}")
        cfg = load_config(None, overrides, defaults=defaults, experiments=experiments)
        if spec.family:
            name = f"{spec.family}-{cfg.model.name}"
            if name not in MODELS:
                raise ConfigError(f"grid {grid.name}, run {spec.label!r}: no model {name!r} for family "
                                  f"{spec.family!r}; valid models: {', '.join(MODELS)}")
            overrides += [f"model.name={name}", *_dotlist(model_class(name).required_training)]
            cfg = load_config(None, overrides, defaults=defaults, experiments=experiments)
        info = data_info(cfg.data)
        n_tok = info["height"] * info["width"]
        blocks = [*(grid.evals or [{}]), *(grid.extra_evals if extra_evals else [])]
        evals = [_dotlist({**eval_over, **e}, n_tok) for e in blocks]
        cfg = load_config(None, [*overrides, *evals[0]], defaults=defaults, experiments=experiments)
        rid = run_id(cfg)
        if rid in seen:
            raise ConfigError(f"grid {grid.name}: runs {seen[rid]!r} and {label!r} are the same run ({rid})")
        seen[rid] = label
        configs.append((RunDir(Path(cfg.root) / rid), to_yaml(cfg)))
        out.append(Job(label, rid, str(configs[-1][0].path), evals, threads, configs[-1][0].status(),
                       name=spec.label, seed=cfg.train.seed))
    for job, (run, text) in zip(out, configs):  # only once every run is valid: evaluation settings may have changed
        done = job.status == "done"
        atomic_write_text(run.config, _as_trained(run, text) if done else text)
        job.evaluation_left = done and _evaluation_left(run, job.evals)
    return grid, out


TRAINED_WITH = ("trainer", "threads")  # how a run was trained (its threads fix its float rounding)


def _as_trained(run: RunDir, text: str) -> str:
    """A finished run's new config ``text`` with the ``TRAINED_WITH`` keys of its own config: a later sweep
    updates what evaluation reads, never the record of how the run was trained (training writes them)."""
    if not run.config.exists():
        return text
    try:
        old = OmegaConf.load(run.config)
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as e:  # a torn config is replaced, never a reason to stop
        print(f"[sweep] warning: replacing unreadable {run.config}: {e}", file=sys.stderr)
        return text
    new = OmegaConf.create(text)
    for key in TRAINED_WITH:
        if key in old:
            new[key] = old[key]
    return OmegaConf.to_yaml(new)


class Slots:
    """At most ``n`` commands of a local sweep at once. A free slot goes to the waiting command with the
    lowest key: ``(0, job)`` for a training, ``(1, job)`` for an evaluation, so every training starts
    before any evaluation, each kind in grid order. No slot is given before the ``jobs`` expected have
    each said ``hello`` (their threads start in any order)."""

    def __init__(self, n: int, jobs: int = 0):
        self.free, self.waiting, self.cond = max(1, n), [], threading.Condition()
        self.expected = jobs

    def hello(self) -> None:
        """A job has begun (whether or not it will ask for a slot)."""
        with self.cond:
            self.expected -= 1
            self.cond.notify_all()

    def acquire(self, key: tuple, stopping) -> bool:
        """Wait for a slot; False, and no slot taken, once ``stopping()`` is true."""
        with self.cond:
            heapq.heappush(self.waiting, key)
            while not (self.free and self.expected <= 0 and self.waiting[0] == key):
                if stopping():
                    self.waiting.remove(key)
                    heapq.heapify(self.waiting)
                    self.cond.notify_all()
                    return False
                self.cond.wait(0.25)
            heapq.heappop(self.waiting)
            self.free -= 1
            self.cond.notify_all()
            return True

    def release(self) -> None:
        with self.cond:
            self.free += 1
            self.cond.notify_all()


class CoreShare:
    """The CPU threads of a local sweep's evaluations: the cores split evenly over the jobs not yet finished
    (up to the number of slots). When a job ends, the evaluations still running are given the cores it
    leaves (``RunDir.give_threads``; evaluate takes them up at its next setting), so the last evaluations
    of a sweep do not leave cores idle. Sampling gives the same tokens with any number of threads; training
    keeps its fixed share (``Job.threads``), since its floating-point sums depend on the thread count."""

    def __init__(self, cores: int, slots: int, jobs: int):
        self.cores, self.slots, self.unfinished = cores, max(1, slots), jobs
        self.given: dict[Path, int] = {}  # evaluating job's run folder -> threads given
        self.lock = threading.Lock()

    def _share(self) -> int:
        return max(1, self.cores // max(1, min(self.slots, self.unfinished)))

    def begin(self, run: RunDir) -> int:
        """An evaluation of ``run`` starts: the threads it starts with."""
        with self.lock:
            self.given[run.path] = self._share()
            run.give_threads(self.given[run.path])
            return self.given[run.path]

    def end(self, run: RunDir) -> None:
        """The job of ``run`` ended (done, failed or stopped): share its cores out."""
        with self.lock:
            if self.given.pop(run.path, None) is not None:
                run.threads.unlink(missing_ok=True)
            self.unfinished -= 1
            share = self._share()
            for path, given in self.given.items():
                if given < share:
                    self.given[path] = share
                    RunDir(path).give_threads(share)


def _outcome(job: Job, status: str, log: Path, start: float, was: str) -> dict:
    return {"run_id": job.run_id, "label": job.label, "status": status, "log": str(log),
            "seconds": time.time() - start, "was": was}


def run_job(job: Job, progress: SweepProgress | None = None, children: Children | None = None,
            cores: CoreShare | None = None, slots: Slots | None = None, index: int = 0) -> dict:
    """Train (or resume, or skip) one run, then evaluate it; each step a subprocess with its own log.
    ``progress`` (local launcher only) hears of each step. ``children`` (default ``CHILDREN``) holds the
    live subprocesses; once it is stopping, a job not begun is ``cancelled``, a running one ``stopped``.
    Locally, ``slots`` orders the job's processes among the others (``index``: its place in the grid) and
    ``cores`` sets its evaluation's threads."""
    if slots is not None:
        slots.hello()
    run = RunDir(job.run_dir)
    try:
        return _run_job(job, run, progress, children or CHILDREN, cores, slots, index)
    finally:
        if cores is not None:
            cores.end(run)


def _run_job(job: Job, run: RunDir, progress, children: Children, cores: CoreShare | None, slots: Slots | None,
             index: int) -> dict:
    log = run.log
    tell = progress.set if progress is not None else lambda label, state: None
    start = time.time()
    if children.stopping:
        tell(job.label, "cancelled")
        return _outcome(job, "cancelled", log, start, job.status)
    status = run.status()
    # (module, run, arguments): the thread count goes in when the process starts
    steps = [] if status == "done" else [("train", run.config, ["trainer.enable_progress_bar=false"])]
    evals = [e for e in job.evals if status != "done" or pending_settings(run.path, e) != 0]
    if evals:  # one process for all of them: "a=1 --and b=2"
        steps.append(("evaluate", run.path, [arg for i, e in enumerate(evals) for arg in ([AND] if i else []) + e]))
    with open(log, "a") as f:
        first = 0
        # A local sweep's run to train and evaluate: one process (a done.json without a checkpoint: two)
        if slots is not None and len(steps) == 2 and not run.done.exists():
            state = _train_then_evaluate(job, run, f, tell, children, cores, slots, index, *steps, evals)
            if state is not None:
                tell(job.label, state)
                return _outcome(job, _DONE[status] if state == "done" else state, log, start, status)
            # trained, not evaluated (it trained on several devices): the evaluation gets a process of its own
            steps, first = steps[1:], 1
        for i, (module, target, args) in enumerate(steps, first):
            training = module == "train"
            if i:
                tell(job.label, "waiting")  # trained; its evaluation waits for a slot
            if slots is not None and not slots.acquire((0 if training else 1, index), lambda: children.stopping):
                proc = code = None
            else:
                try:
                    threads = job.threads if training or cores is None else cores.begin(run)
                    cmd = [*step_command(module), str(target), f"threads={threads}", *args]
                    tell(job.label, "training" if training else "evaluating")
                    proc = _start(f, children, cmd, threads)
                    code = None if proc is None else children.wait(proc)
                finally:
                    if slots is not None:
                        slots.release()
            if children.stopping and (code != 0 or i < len(steps) - 1 + first):  # cut short, not failed
                state = "cancelled" if i == 0 and proc is None else "stopped"
                _log_interrupted(f, children, proc, code)
                tell(job.label, state)
                return _outcome(job, state, log, start, status)
            if code != 0:
                tell(job.label, "failed")
                return _outcome(job, "failed", log, start, status)
    tell(job.label, "done")
    return _outcome(job, _DONE[status], log, start, status)


_DONE = {"done": "skipped (done)", "partial": "resumed", "new": "trained"}


def _start(f, children: Children, cmd: list[str], threads: int, **kwargs) -> subprocess.Popen | None:
    """Write ``cmd`` into the job's log ``f`` and start it there with ``threads`` CPU threads."""
    f.write(f"\n$ {' '.join(cmd)}\n")
    f.flush()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return children.start(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, **kwargs)


def _log_interrupted(f, children: Children, proc, code) -> None:
    f.write(f"[sweep] {'not started' if proc is None else f'stopped (exit code {code})'}: the sweep "
            f"was interrupted by {signal.Signals(children.signum).name}\n")
    f.flush()


def _evaluation_left(run: RunDir, evals: list[list[str]]) -> bool:
    return any(pending_settings(run.path, e) != 0 for e in evals)


def _train_then_evaluate(job: Job, run: RunDir, f, tell, children: Children, cores: CoreShare | None, slots: Slots,
                         index: int, train: tuple, evaluate: tuple, evals: list[list[str]]) -> str | None:
    """Train a run and evaluate it in one process (``train ... --then-evaluate <evaluate arguments>``), so the
    run pays the ~7 s of imports (torch, Lightning, torchmetrics) once instead of twice. Scheduling is as for
    two processes: the training holds a training slot; once trained, the process waits holding none until
    the job is given an evaluation slot, and then reads its evaluation's thread count from stdin (closed
    without one: it exits, the run stays trained and unevaluated, and the next sweep evaluates it).

    Returns the job's state when it ends here (``done``, ``failed``, ``stopped``, ``cancelled``), or None
    when the process trained and exited without evaluating and settings are still to evaluate (a training
    on several devices does)."""
    (_, config, train_args), (_, _, eval_args) = train, evaluate
    stopping = lambda: children.stopping  # noqa: E731
    if not slots.acquire((0, index), stopping):
        _log_interrupted(f, children, None, None)
        return "cancelled"
    try:
        cmd = [*step_command("train"), str(config), f"threads={job.threads}", *train_args, THEN_EVALUATE, *eval_args]
        tell(job.label, "training")
        proc = _start(f, children, cmd, job.threads, stdin=subprocess.PIPE)
        while proc is not None and proc.poll() is None and not run.done.exists():
            time.sleep(0.2)  # done.json is written when training ends; then the process waits for its slot
    finally:
        slots.release()
    if proc is not None and proc.poll() is None:
        tell(job.label, "waiting")
        given = slots.acquire((1, index), stopping)
        try:
            threads = None
            if given and not children.stopping:  # as children.start: nothing begins once the sweep stops
                threads = cores.begin(run) if cores is not None else job.threads
                tell(job.label, "evaluating")
                f.write(f"[sweep] evaluating in the training process with {threads} thread(s)\n")
                f.flush()
            try:
                if threads is not None:
                    proc.stdin.write(f"{threads}\n".encode())
                proc.stdin.close()  # no thread count: it leaves the evaluation to the next sweep
            except BrokenPipeError:
                pass  # it has already ended (a stop)
            code = children.wait(proc)
        finally:
            if given:
                slots.release()
    else:
        code = None if proc is None else children.wait(proc)
    left = code != 0 or _evaluation_left(run, evals)
    if children.stopping and left:
        _log_interrupted(f, children, proc, code)
        return "cancelled" if proc is None else "stopped"
    if code != 0:
        return "failed"
    return None if left else "done"


def launch(jobs: list[Job], n_parallel: int, launcher: str, folder: Path, slurm: dict, title: str = "",
           children: Children | None = None, on_result=None) -> list[dict]:
    """Run the jobs locally in parallel subprocesses (with a progress display), or submit them through submitit.
    Locally, once ``children`` (default ``CHILDREN``) is asked to stop, queued jobs are cancelled and the
    running ones signalled (``Children.enforce``); the results then say which were stopped or cancelled.
    ``on_result(index, result)`` is called (from the calling thread) as each job ends."""
    on_result = on_result or (lambda index, result: None)
    if launcher == "local":
        children = children or CHILDREN
        cores, slots = CoreShare(available_cores(), n_parallel, len(jobs)), Slots(n_parallel, len(jobs))
        # one thread per job, each waiting for a slot per process (``Slots`` says which goes first)
        with SweepProgress(jobs, title) as progress, ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
            futures = [pool.submit(run_job, job, progress, children, cores, slots, i) for i, job in enumerate(jobs)]
            pending = set(futures)
            index = {future: i for i, future in enumerate(futures)}
            while pending:  # the main thread polls, so a stop asked by its signal handler is carried out
                finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                for future in finished:
                    if not future.cancelled() and future.exception() is None:
                        on_result(index[future], future.result())
                if children.stopping:
                    for future in pending:
                        future.cancel()  # queued jobs never start; running ones return when their child ends
                    children.enforce()
            results = []
            for job, future in zip(jobs, futures):
                if future.cancelled():
                    progress.set(job.label, "cancelled")
                    results.append(_outcome(job, "cancelled", RunDir(job.run_dir).log, time.time(), job.status))
                else:
                    results.append(future.result())
            return results
    if launcher == "slurm":
        executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    elif launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=str(folder))
    else:
        raise ConfigError(f"unknown launcher {launcher!r}; valid: local, submitit-local, slurm")
    executor.update_parameters(**({"timeout_min": 60 * 24} | slurm) if launcher == "slurm" else {"timeout_min": 600})
    submitted = [executor.submit(run_job, job) for job in jobs]
    results = []
    for i, (job, sub) in enumerate(zip(jobs, submitted)):
        try:
            results.append(sub.result())
        except Exception as err:  # a crashed job is reported, the others go on
            results.append({"run_id": job.run_id, "label": job.label, "status": "failed",
                            "log": str(sub.paths.stderr), "error": str(err)[-500:], "seconds": 0.0})
        on_result(i, results[-1])
    return results


class Manifest:
    """The sweep's manifest ``<root>/sweeps/<grid>-<tag>.json``, rewritten whole (one rename) when the sweep
    starts, after each run and at the end, so a sweep killed outright still leaves its wall time so far and
    its runs' statuses (``pending`` for those it had not finished). Its ``sweeps`` history carries the
    records of the earlier sweeps of this file (a killed sweep and the one that resumed it add up), unless
    this sweep trained every run of the earlier manifest again from scratch."""

    def __init__(self, path: Path, jobs: list[Job], start: float, head: dict):
        self.path, self.jobs, self.start = path, jobs, start
        # to the microsecond: the history tells sweeps apart by it (two may start within one second)
        self.head = head | {"started": datetime.fromtimestamp(start).astimezone().isoformat(timespec="microseconds")}
        self.done: dict[int, dict] = {}
        self.earlier = self._earlier()

    def _earlier(self) -> dict | None:
        try:
            return json.loads(self.path.read_text()) if self.path.exists() else None
        except (OSError, json.JSONDecodeError) as e:  # a torn file is replaced, never a reason to stop
            print(f"[sweep] warning: replacing unreadable manifest {self.path}: {e}", file=sys.stderr)
            return None

    def ended(self, index: int, result: dict) -> None:
        """Job ``index`` ended with ``result``: record it."""
        self.done[index] = result
        self.write()

    def write(self, results: list[dict] | None = None, finished: bool = False) -> None:
        done = dict(enumerate(results)) if results is not None else self.done
        runs = [{"run_id": job.run_id, "label": job.name, "seed": job.seed,
                 "status": done[i]["status"] if i in done else "pending",
                 "seconds": round(done[i].get("seconds", 0.0), 1) if i in done else 0.0}
                for i, job in enumerate(self.jobs)]
        manifest = self.head | {"seconds": round(time.time() - self.start, 1),
                                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z") if finished else None,
                                "runs": runs}
        again = {r["run_id"] for r in runs if r["status"] == "trained"}
        earlier = [] if superseded(self.earlier, again) else sweep_history(self.earlier)
        manifest["sweeps"] = merge_history(earlier, [sweep_record(manifest)])
        atomic_write_text(self.path, json.dumps(manifest, indent=1))  # whole or not


def sweep(grid_path, profile="default", jobs=None, root=None, launcher="local", extra=(), data=None,
          seeds=None, only=None, extra_evals=False) -> list[dict]:
    """Run a grid (see the module doc); the results, one per run. With the local launcher, SIGINT and SIGTERM
    stop it cleanly (from the main thread): the manifest records the statuses so far and ``SweepInterrupted``
    is raised once the running jobs are stopped and its message printed on stderr."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"sweep.launcher={launcher!r} is not valid; choose one of: {', '.join(LAUNCHERS)}")
    jobs = jobs or available_cores()
    grid, todo = expand(grid_path, profile, root, jobs, extra, data, seeds, only, extra_evals)
    root_dir = Path(todo[0].run_dir).parent if todo else Path(root or "runs")
    tag = f"{profile}-{data}" if data else profile  # one manifest per (grid, profile, data overlay)
    print(f"[sweep] {grid.name} ({tag}): {len(todo)} runs, {jobs} at a time via {launcher}: {grid.question}")
    start = time.time()
    record = Manifest(manifest_path(root_dir, grid.name, tag), todo, start,
                      {"grid": grid.name, "profile": profile, "data": data, "question": grid.question, "jobs": jobs})
    children = Children()
    previous = install_stop_handlers(children) if launcher == "local" else {}
    try:
        record.write()
        results = launch(todo, jobs, launcher, root_dir / SWEEPS / "submitit", grid.slurm, f"{grid.name} ({tag})",
                         children=children, on_result=record.ended)
        record.write(results, finished=True)
    finally:
        restore_handlers(previous)
    names = ["skipped (done)", "resumed", "trained", "failed"]
    names += [s for s in ("stopped", "cancelled") if any(r["status"] == s for r in results)]
    counts = {s: sum(r["status"] == s for r in results) for s in names}
    for r in results:
        if r["status"] == "failed":
            print(f"[sweep] FAILED {r['label']} ({r['run_id']}): see {r['log']}")
    print(f"[sweep] {grid.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f"; {time.time() - start:.0f} s", flush=True)
    if children.stopping:
        print(f"[sweep] interrupted by {signal.Signals(children.signum).name}: stopped "
              f"{counts.get('stopped', 0)} running job(s); re-run the same command to resume",
              file=sys.stderr, flush=True)
        raise SweepInterrupted(children.signum, results)
    return results

