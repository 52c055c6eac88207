"""What a sweep shows while it runs: each run's state, how many are done, and the time left.

On a terminal, one table redrawn in place (rich's ``Live``); elsewhere (a log file, CI) a plain line
per event (a run starts training, evaluating, ends) and, every ``LINE_EVERY`` seconds, one line with what
each active run is doing. A run's state comes from the sweep (queued, done, failed) and from the run folder's
``progress.json``, which train and evaluate keep current (training step s of S, setting i of n).
"""

from __future__ import annotations

import sys
import threading
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from sar_lightning.runs import RunDir

LINE_EVERY = 60.0  # seconds between status lines when the output is not a terminal
TRAIN_SHARE = 0.8  # a run's training is about this share of its time; the ETA weighs progress with it


class SweepProgress:
    """Thread-safe display of a sweep's runs: ``set(label, state)`` from the job threads, ``poll`` to refresh."""

    def __init__(self, jobs, title: str, stream=None, interval: float = 1.0, line_every: float = LINE_EVERY):
        self.stream = stream or sys.stdout
        self.title, self.interval, self.start = title, interval, time.time()
        self.runs = {j.label: RunDir(j.run_dir) for j in jobs}
        self.state = {j.label: "done" if j.status == "done" and not getattr(j, "evaluation_left", False) else "queued"
                      for j in jobs}
        self.detail = {j.label: "" for j in jobs}
        self.lock, self.stop_event = threading.Lock(), threading.Event()
        self.live, self.line_every = None, line_every

    def set(self, label: str, state: str) -> None:
        """A job moved on: ``training``, ``evaluating``, ``done`` or ``failed``."""
        with self.lock:
            self.state[label] = state
            self.detail[label] = ""
        if self.live is None:
            self._line(f"{label}: {state}")

    def fraction(self, label: str) -> float:
        """How much of one run is finished, in [0, 1]."""
        state, progress = self.state[label], self.runs[label].read_progress() or {}
        if state in ("done", "failed"):
            return 1.0
        part = progress.get("done", 0) / max(1, progress.get("total", 1))
        if state == "training" and progress.get("state") == "training":
            return TRAIN_SHARE * part
        if state == "waiting":  # trained, its evaluation not begun
            return TRAIN_SHARE
        if state == "evaluating":
            return TRAIN_SHARE + (1 - TRAIN_SHARE) * (part if progress.get("state") == "evaluating" else 0.0)
        return 0.0

    def summary(self) -> str:
        """``k/n runs done, elapsed, ETA``: the ETA extrapolates the elapsed time over the work done."""
        finished = sum(s in ("done", "failed") for s in self.state.values())
        done = sum(self.fraction(label) for label in self.state) / max(1, len(self.state))
        elapsed = time.time() - self.start
        eta = f"about {_clock(elapsed * (1 - done) / done)} left" if 0 < done < 1 else \
            "all finished" if done >= 1 else "ETA when a run has begun"
        return f"{finished}/{len(self.state)} runs done, {_clock(elapsed)} elapsed, {eta}"

    def _describe(self, label: str) -> str:
        state, progress = self.state[label], self.runs[label].read_progress() or {}
        if state == "training" and progress.get("state") == "training":
            return f"training step {progress['done']} of {progress['total']}"
        if state == "evaluating" and progress.get("state") == "evaluating":
            return f"evaluating setting {progress['done'] + 1} of {progress['total']}"
        return state

    def table(self):
        table = Table(title=f"{self.title}  ({self.summary()})", title_justify="left")
        table.add_column("run")
        table.add_column("state")
        for label in self.state:
            table.add_row(label, self._describe(label))
        return table

    def _line(self, text: str) -> None:
        print(f"[sweep] {text}  ({self.summary()})", file=self.stream, flush=True)

    def __enter__(self):
        if self.stream.isatty():
            self.live = Live(self.table(), console=Console(file=self.stream), refresh_per_second=2)
            self.live.__enter__()
        threading.Thread(target=self._refresh, daemon=True).start()
        return self

    def _refresh(self) -> None:
        if self.live is not None:
            while not self.stop_event.wait(self.interval):
                self.live.update(self.table())
        while not self.stop_event.wait(self.line_every):
            active = [f"{label}: {self._describe(label)}" for label, state in self.state.items()
                      if state in ("training", "evaluating")]
            if active:
                self._line("; ".join(active))

    def __exit__(self, *exc):
        self.stop_event.set()
        if self.live is not None:
            self.live.update(self.table())
            self.live.__exit__(*exc)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
