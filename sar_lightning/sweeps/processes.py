"""The sweep's child processes: started so that they never outlive the sweep, and stopped cleanly.

Each job step (train, evaluate) runs in its own process group (so a child's own children go with it)
and, on Linux, with a parent-death signal, so that even a sweep killed by SIGKILL takes its children
with it. On SIGINT / SIGTERM the sweep stops starting jobs, sends SIGTERM to every running group and
SIGKILL after ``STOP_GRACE`` seconds, then raises ``SweepInterrupted`` (exit 130 / 143).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
STOP_GRACE = 10.0  # seconds between a stopped sweep's SIGTERM to its jobs and its SIGKILL


class SweepInterrupted(Exception):
    """``sweep`` was stopped by SIGINT or SIGTERM; its jobs are stopped, its message printed."""

    def __init__(self, signum: int, results: list[dict]):
        super().__init__(f"sweep interrupted by {signal.Signals(signum).name}")
        self.signum, self.results = signum, results
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports it


@functools.cache
def _prctl():
    """libc's ``prctl`` (Linux), or None where there is none: the parent-death signal is then skipped."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent():
    """A ``preexec_fn`` that asks the kernel to send the child SIGTERM when its parent dies (even by
    SIGKILL), or None without prctl. prctl is resolved here, in the parent: the child, between fork and
    exec, only makes the call. The signal comes when the *thread* that forked the child exits, not the
    process: children are started from the pool threads of ``launch``, and each such thread waits on
    its child (``Children.wait``), so it lives exactly as long as the child does."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent, term = os.getpid(), int(signal.SIGTERM)

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(term)) == 0 and os.getppid() != parent:
            os._exit(128 + term)  # the sweep died before the request took hold: do not start

    return preexec


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group of ``proc`` (the child and every process it started)."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)  # start_new_session: the child leads its own group, pgid == pid
        else:
            proc.send_signal(sig)
    except OSError:  # the group is gone already
        pass


class Children:
    """The live child processes of a sweep's jobs, shared by the pool threads (which start and wait on
    them) and the main thread (whose signal handler asks for a stop, and whose wait loop in ``launch``
    carries it out). The handler only sets attributes, never takes the lock, so it cannot deadlock."""

    def __init__(self, grace: float = STOP_GRACE):
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen] = set()
        self.grace = grace
        self.signum: int | None = None  # the signal that stops the sweep; None while it runs
        self.hurry = False  # a second signal: SIGKILL without waiting for the grace period
        self.deadline: float | None = None  # when the SIGTERMed children get SIGKILL

    @property
    def stopping(self) -> bool:
        return self.signum is not None

    def request_stop(self, signum: int, frame=None) -> None:
        """The signal handler (main thread): stop starting jobs; ``enforce`` signals the running ones."""
        if self.signum is None:
            self.signum = signum
        else:
            self.hurry = True

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen | None:
        """Start ``cmd`` in its own session (its children go with it), with the parent-death signal
        on Linux; None, and nothing started, once the sweep is stopping."""
        with self.lock:  # a child is either refused here or in ``live`` when ``enforce`` signals
            if self.stopping:
                return None
            proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent(), **kwargs)
            self.live.add(proc)
            return proc

    def wait(self, proc: subprocess.Popen) -> int:
        """Wait for a child started by ``start`` (keeping this thread, its parent-death anchor, alive)."""
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.live.discard(proc)
            if self.stopping:  # what the stopped child left in its group (its group id is still held
                _signal_group(proc, signal.SIGKILL)  # while any member lives, so it is no one else's)

    def enforce(self) -> None:
        """From the main thread's wait loop: once a stop is asked, SIGTERM every live child's group, then
        SIGKILL those left after ``grace`` seconds (at once after a second signal)."""
        if not self.stopping:
            return
        with self.lock:
            if self.deadline is None:
                self.deadline, sig = time.monotonic() + self.grace, signal.SIGTERM
            elif self.hurry or time.monotonic() >= self.deadline:
                sig = signal.SIGKILL
            else:
                return
            for proc in self.live:
                _signal_group(proc, sig)


CHILDREN = Children()  # run_job's registry when none is given (a submitit job: it is never stopped)


def install_stop_handlers(children: Children) -> dict:
    """Route SIGINT and SIGTERM to ``children.request_stop``; the previous handlers, to restore. Signal
    handlers can only be set in the main thread: elsewhere nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, children.request_stop)
    return previous


def restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        if handler is not None:  # None: set from outside Python, cannot be restored from here
            signal.signal(sig, handler)


