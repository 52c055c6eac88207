"""The run folder: its layout, its status, the results schema and the model it holds.

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
Every module that reads or writes these files goes through this one.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from .files import UMASK, FileError, atomic_write_text, safe_load

CONFIG, DONE, RESULTS, LOG, PROGRESS = "config.yaml", "done.json", "results.jsonl", "sweep.log", "progress.json"
THREADS = "threads"  # the CPU threads a sweep gives the run's running process (a number; see ``adopt_threads``)
CHECKPOINTS, LAST, TB, SAMPLES, SWEEPS = "checkpoints", "last.ckpt", "tb", "samples", "sweeps"

# What makes two result rows of one run the same sampler setting: evaluate skips a setting whose key
# is already in results.jsonl, and the analysis keeps one row per key.
SETTING_KEYS = ("ckpt_step", "ema", "infer_order", "infer_schedule", "num_steps", "cfg_scale", "cfg_schedule",
                "temperature", "top_k", "top_p", "kv_cache", "attn", "num_samples", "reference", "extractor",
                "seed")
# Result columns renamed since results were first written: old name -> new (read_results migrates).
RENAMED_COLUMNS = {"cfg": "cfg_scale", "train_num_sets": "train_num_steps",
                   "train_num_sets_range": "train_num_steps_range"}


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
        import torch

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


def setting_id(row: dict) -> tuple:
    """The key of a result row's sampler setting (``SETTING_KEYS``)."""
    return tuple(row.get(k) for k in SETTING_KEYS)


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


def fd_tag(extractor: str, num_steps: int) -> str:
    """TensorBoard tag of the Frechet distance at one step count, e.g. ``eval/fd_digits_cnn/steps_016``."""
    return f"eval/fd_{extractor}/steps_{num_steps:03d}"


def load_model(run_dir: str | Path, ckpt: str = "last", ema: bool = True):
    """The run's model in eval mode, with EMA weights (``ema=True``, when the run kept them) or raw ones.

    Returns ``(model, info, global_step, used_ema)``; ``info`` is the data's grid, vocabulary, classes.
    """
    from .module import SARLightningModule

    run = RunDir(run_dir)
    path = run.checkpoint(ckpt)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found; train the run first "
                                f"(python -m sar_lightning.train {run.config})")
    state = run.check_checkpoint(path)
    if not {"hyper_parameters", "state_dict", "global_step"} <= set(state):
        raise FileError(f"{path} is not a checkpoint of this suite (no hyper_parameters / state_dict)")
    module = SARLightningModule(**state["hyper_parameters"])
    has_ema = "current_model_state" in state  # Lightning's EMA callback stores raw weights there
    module.load_state_dict(state["state_dict"] if (ema or not has_ema) else state["current_model_state"])
    return module.model.eval(), state["hyper_parameters"]["info"], state["global_step"], ema and has_ema


_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENOSPC}


def run_cli(command: str, work) -> int:
    """Run a command's ``work()``; bad input (a config, a file, a busy or unwritable run folder) ends in
    one line on stderr naming the key or file and what to do, and exit code 2 (nothing half-written:
    every file is written atomically)."""
    from .config import ConfigError

    try:
        work()
    except (ConfigError, FileError, FileNotFoundError, RunBusy) as err:
        print(f"{command} error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"{command}: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        print(f"{command} error: cannot write {err.filename or 'the run folder'}: {err.strerror}; choose a "
              "writable root=... (the folder that holds the run folders) or fix its permissions", file=sys.stderr)
        return 2
    return 0
