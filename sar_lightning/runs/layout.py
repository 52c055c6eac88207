"""The run folder's layout, its status and its lock.

One folder per trained run, ``<root>/<run_id>`` (the id comes from the config, ``config.run_id``)::

    config.yaml      the resolved config; training from it reproduces the run
    checkpoints/     last.ckpt and step snapshots (stepNNNNNN.ckpt)
    tb/              TensorBoard: training curves, sample grids, eval scalars, HParams
    samples/         PNG grids written during training
    done.json        written once training reached max_steps
    results.jsonl    one row per (checkpoint, sampler setting), appended by evaluate
    sweep.log        the commands a sweep ran for this run and their output
    progress.json    what train or evaluate is doing now (the sweep's progress display reads it)
    .lock, .owner    held by the one process that trains or evaluates the run (and who that is)

and, beside the run folders, ``<root>/sweeps/<grid>-<profile>[-<data>].json``: which runs a sweep made.
Every module that reads or writes these files goes through this package (``sar_lightning.runs``).
"""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from sar_lightning.files import UMASK, FileError, atomic_write_text, safe_load
from sar_lightning.runs.results import append_results, read_results

CONFIG, DONE, RESULTS, LOG, PROGRESS = "config.yaml", "done.json", "results.jsonl", "sweep.log", "progress.json"
THREADS = "threads"  # the CPU threads a sweep gives the run's running process (a number; see ``adopt_threads``)
CHECKPOINTS, LAST, TB, SAMPLES = "checkpoints", "last.ckpt", "tb", "samples"


class RunBusy(RuntimeError):
    """Another process holds the run folder's lock."""


class RunStopped(RuntimeError):
    """Training ended before max_steps (a signal, an interrupt): resumable, not finished."""


@dataclass(frozen=True)
class RunDir:
    """Paths and status of one run folder; ``RunDir(path)`` touches nothing on disk."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    @property
    def name(self) -> str:
        return self.path.name

    config = property(lambda self: self.path / CONFIG)
    done = property(lambda self: self.path / DONE)
    results = property(lambda self: self.path / RESULTS)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    last = property(lambda self: self.path / CHECKPOINTS / LAST)
    tb = property(lambda self: self.path / TB)
    samples = property(lambda self: self.path / SAMPLES)
    log = property(lambda self: self.path / LOG)
    progress = property(lambda self: self.path / PROGRESS)
    threads = property(lambda self: self.path / THREADS)

    def checkpoint(self, name: str = "last") -> Path:
        """``last``, ``step000500`` or a file name under ``checkpoints/``."""
        return self.checkpoints / (name if name.endswith(".ckpt") else f"{name}.ckpt")

    def status(self) -> str:
        """``done`` (finished, with its checkpoint), ``partial`` (has a checkpoint to resume) or ``new``.
        A ``done.json`` whose checkpoint is gone is not done: the run has to be trained again."""
        if not self.last.exists():
            return "new"
        return "done" if self.done.exists() else "partial"

    def step_checkpoints(self) -> list[Path]:
        """The step snapshots, newest first."""
        return sorted(self.checkpoints.glob("step*.ckpt"), reverse=True)

    def check_checkpoint(self, path: Path) -> dict:
        """Load ``path`` safely, or raise ``FileError`` that offers the newest intact step snapshot."""
        try:
            return safe_load(path, "Lightning checkpoint of this suite")
        except FileError as err:
            for other in (p for p in self.step_checkpoints() if p != path):
                try:
                    safe_load(other, "checkpoint")
                except FileError:
                    continue
                raise FileError(f"{err}. The newest intact snapshot is {other}: evaluate it with "
                                f"infer.ckpt={other.stem}, or resume training from it with "
                                f"`cp {other} {self.last}`") from None
            raise FileError(f"{err}. No intact step snapshot is left in {self.checkpoints}: delete the "
                            f"folder {self.path} to train the run again") from None

    @contextmanager
    def lock(self, purpose: str):
        """Hold the run's lock while ``purpose`` (``trained``, ``evaluated``) goes on; ``RunBusy`` if another
        process holds it. Only one process writes a run folder at a time."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path / ".lock", mode=0o666 & ~UMASK)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunBusy(f"run {self.name} is being {_owner(self.path / '.owner')}; wait for it to finish or "
                          "stop that process, then run this command again") from None
        try:
            atomic_write_text(self.path / ".owner", json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                                "purpose": purpose}))
            yield self
        finally:
            # the record goes with the lock, so a later busy caller never reads an earlier holder's
            (self.path / ".owner").unlink(missing_ok=True)
            lock.release()

    def read_done(self) -> dict:
        return json.loads(self.done.read_text())

    def write_done(self, info: dict) -> None:
        atomic_write_text(self.done, json.dumps(info, indent=1))

    def write_progress(self, state: str, done: int, total: int) -> None:
        """Say what this run is doing: ``training`` step done of total, ``evaluating`` setting done of total."""
        atomic_write_text(self.progress, json.dumps({"state": state, "done": done, "total": total}))

    def read_progress(self) -> dict | None:
        try:
            return json.loads(self.progress.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def give_threads(self, n: int) -> None:
        """The sweep's side: the run's evaluation may now use ``n`` CPU threads (taken up at its next setting)."""
        atomic_write_text(self.threads, f"{int(n)}\n")

    def adopt_threads(self) -> int:
        """The evaluation's side: take up the thread count the sweep last gave this run, if any; return the
        count in use. Sampling gives the same tokens with any count (tests/test_evaluate.py), so only the
        speed changes."""
        try:
            n = int(self.threads.read_text())
        except (OSError, ValueError):
            return torch.get_num_threads()
        if n > 0 and n != torch.get_num_threads():
            torch.set_num_threads(n)
        return torch.get_num_threads()

    def read_results(self) -> list[dict]:
        return read_results(self.results)

    def append_result(self, row: dict) -> None:
        append_results(self.results, [row])


def _owner(file: Path, wait: float = 3.0) -> str:
    """Who holds a run's lock, from its ``.owner`` file. The holder writes that file just after taking the
    lock and removes it before releasing it, so a busy caller may read it missing (or left by a killed
    holder): it re-reads for up to ``wait`` seconds until it names a live process (on this host) before
    saying "used by another process"."""
    deadline = time.monotonic() + wait
    while True:
        try:
            who = json.loads(file.read_text())
            if who["host"] != socket.gethostname() or _alive(int(who["pid"])):
                return f"{who['purpose']} by process {who['pid']} on {who['host']}"
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            return "used by another process"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
