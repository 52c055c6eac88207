"""The command line: ``python -m sar_lightning <command> [POSITIONAL] [key=value ...]`` (or ``sar-lightning``).

One entry for every command (``python -m sar_lightning`` lists them), one argument style: the command's
positional argument where it has one (train: a config file; evaluate, sample: a run folder; sweep: a grid
file), then ``key=value`` pairs parsed against the command's typed schema (``sar_lightning.options``), under
the config's own names (``infer.num_steps=4``). ``<command> --help`` lists the keys, generated from the schema.

The error policy lives here too (``run_cli``): bad input is one line on stderr and exit code 2, a stopped run
exit code 1. So does chaining a local sweep's two steps in one process (``train ... --then-evaluate``): the
command modules know nothing of the command line.
"""

from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sar_lightning.config import Config, ConfigError, load_config
from sar_lightning.files import FileError
from sar_lightning.options import AND, THEN_EVALUATE, describe, pairs, parse, split_groups
from sar_lightning.runs import RunBusy, RunStopped

PROG = "python -m sar_lightning"

_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENOSPC}


def run_cli(command: str, work, errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's ``work()``; bad input (a config, a file, a busy or unwritable run folder, or one of the
    command's own ``errors``) ends in one line on stderr naming the key or file and what to do, and exit code 2
    (nothing half-written: every file is written atomically). The exit code is ``work()``'s when it returns
    one, else 0."""
    try:
        code = work()
    except (ConfigError, FileError, FileNotFoundError, RunBusy, *errors) as err:
        print(f"{command} error: {' '.join(str(err).split())}", file=sys.stderr)
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
    return code if isinstance(code, int) else 0


# ---- the commands --------------------------------------------------------------------------------------------


def _module(name: str):
    """A command's module, imported when the command runs (the overview imports no torch)."""
    return importlib.import_module(f"sar_lightning.{name}")


def _positional(argv: list[str], command: str, what: str) -> tuple[str, list[str]]:
    """The command's positional argument (``what``) and the ``key=value`` pairs after it."""
    if not argv or argv[0].startswith("-") or ("=" in argv[0] and not Path(argv[0]).exists()):
        raise ConfigError(f"give {what} first: {PROG} {command} {COMMANDS[command].usage}")
    return argv[0], argv[1:]


def train_command(argv: list[str]) -> int:
    """``train CONFIG [key=value ...] [--then-evaluate <evaluate key=value ...>]``."""
    then_evaluate = None
    if THEN_EVALUATE in argv:  # the rest are the evaluation's overrides
        cut = argv.index(THEN_EVALUATE)
        argv, then_evaluate = argv[:cut], argv[cut + 1 :]
    trained = []

    def work():
        path, overrides = _positional(argv, "train", "a config file")
        cfg = load_config(path, pairs(Config, overrides, "train"))
        trained.append(_module("training.train").train_run(cfg))

    code = run_cli("train", work)
    if code or then_evaluate is None:
        return code
    from lightning.fabric.utilities.rank_zero import _get_rank

    run_path, world = trained[0]
    if world > 1 or _get_rank() not in (None, 0):  # several processes trained: the sweep starts an evaluation
        return 0
    return _evaluate_when_told(run_path, then_evaluate)


def _evaluate_when_told(run_path: Path, args: list[str]) -> int:
    """A local sweep's job, trained: wait for the thread count of its evaluation slot on stdin, then
    evaluate the run in this process (torch, Lightning and torchmetrics are imported already). stdin
    closed without one (the sweep stopped, or is gone): exit; the next sweep evaluates the run."""
    print(f"[train] {run_path.name}: trained; evaluating once the sweep gives a slot", flush=True)
    line = sys.stdin.readline().strip()
    if not line:
        print(f"[train] {run_path.name}: no slot given; the run is trained, not yet evaluated", flush=True)
        return 0
    return evaluate_command([str(run_path), f"threads={int(line)}", *args])


def evaluate_command(argv: list[str]) -> int:
    """``evaluate RUN [key=value ...] [--and key=value ...]``: one evaluation per group, in one process."""

    def work():
        run, rest = _positional(argv, "evaluate", "a run folder")
        groups = [pairs(Config, group, "evaluate") for group in split_groups(rest, AND)]  # every key checked first
        module = _module("evaluation.evaluate")
        for group in groups:
            module.evaluate(run, group)

    return run_cli("evaluate", work)


def sample_command(argv: list[str]) -> int:
    """``sample RUN [infer.key=value ...] [sample.key=value ...]``."""
    module = _module("evaluation.sample")

    def work():
        run, rest = _positional(argv, "sample", "a run folder")
        module.sample(run, parse(module.SampleArgs, rest, "sample"))

    return run_cli("sample", work, errors=(module.SampleError,))


def sweep_command(argv: list[str]) -> int:
    """``sweep GRID [sweep.key=value ...] [key=value ...]``: the ``sweep.`` keys steer the sweep, the others are
    config overrides of every run. Exit code 130 or 143 when interrupted, 1 when a run failed."""
    module = _module("sweeps.sweep")
    results = []

    def work():
        grid, rest = _positional(argv, "sweep", "a grid file")
        own = parse(module.SweepArgs, [a for a in rest if a.startswith("sweep.")], "sweep").sweep
        extra = pairs(Config, [a for a in rest if not a.startswith("sweep.")], "sweep")
        results.extend(module.sweep(grid, own.profile, own.jobs, None, own.launcher, extra, own.data, own.seeds,
                                    own.only or None, own.extra_evals))

    try:
        code = run_cli("sweep", work)  # bad input: one line, exit 2
    except module.SweepInterrupted as stop:  # already reported
        return stop.exit_code
    return code or (1 if any(r["status"] == "failed" for r in results) else 0)


def _flat(command: str, module: str, schema: str, function: str, errors: tuple[type[BaseException], ...] = ()):
    """A command of ``key=value`` pairs only: ``function(schema instance)`` of ``sar_lightning.<module>``."""

    def run(argv: list[str]) -> int:
        mod = _module(module)
        return run_cli(command, lambda: getattr(mod, function)(parse(getattr(mod, schema), argv, command)), errors)

    return run


@dataclass(frozen=True)
class Command:
    summary: str  # one line: the overview
    usage: str  # what follows `python -m sar_lightning <command>`
    about: str  # the positional argument and the separators, for --help
    schema: str  # "module:Class" under sar_lightning: the keys --help lists
    run: Callable[[list[str]], int]
    also: str = ""  # "module:Class" of more keys (sweep: every run's config keys)
    skip: tuple[str, ...] = ()  # keys of ``schema`` that --help leaves to ``also``


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train one run into <root>/<run_id> (skips a finished run, resumes an interrupted one)",
        "CONFIG [key=value ...] [--then-evaluate <evaluate key=value ...>]",
        "CONFIG is an experiments/*.yaml file (or a run's config.yaml, to reproduce it); the keys override it.\n"
        f"{THEN_EVALUATE} <evaluate key=value ...> (a local sweep's job): once trained, read a thread count on "
        "stdin,\nthen evaluate the run in this process with those overrides (stdin closed without one: exit).",
        "config:Config", train_command),
    "evaluate": Command(
        "sample and score a run's sampler settings into its results.jsonl (skips settings already there)",
        f"RUN [key=value ...] [{AND} key=value ...]",
        "RUN is a run folder, runs/<run_id>; the keys override its config.yaml (infer.* chooses the settings:\n"
        f"the product of infer.orders x num_steps x cfg_scale x kv_cache). Each {AND} starts another evaluation\n"
        "of the same run with its own overrides, in the same process.",
        "config:Config", evaluate_command),
    "sample": Command(
        "draw one sampler setting of a trained run into a PNG grid (inpainting, step-by-step progress)",
        "RUN [infer.key=value ...] [sample.key=value ...]",
        "RUN is a run folder, runs/<run_id>. infer.* are the run config's sampler keys, one value each (a list\n"
        "key takes one value); sample.* choose the grid. Image i has its own seed: the same keys give the same PNG.",
        "evaluation.sample:SampleArgs", sample_command),
    "sweep": Command(
        "run a grid of runs (train, then evaluate each; skip, resume, jobs in parallel, clean stop)",
        "GRID [sweep.key=value ...] [key=value ...]",
        "GRID is an experiments/grids/*.yaml file. sweep.* steer the sweep; every other key is a config\n"
        "override applied to every run (root=runs train.max_steps=50). Exit code 1 when a run failed, 130 or\n"
        "143 when interrupted (re-run the same command to resume).",
        "sweeps.sweep:SweepArgs", sweep_command, also="config:Config"),
    "tokenize": Command(
        "extract a codes data set (pixel, VQ-VAE or LlamaGen tokenizer; resumable)",
        "data=D tokenizer=T out=FOLDER [key=value ...]",
        "data: digits | fashion_mnist | an image folder; tokenizer: pixel | vqvae:<vqvae.pt> | llamagen:<file>.",
        "data.tokenize:TokenizeArgs",
        _flat("tokenize", "data.tokenize", "TokenizeArgs", "tokenize_command", (ValueError, FileExistsError))),
    "train-vq": Command(
        "train a VQ-VAE tokenizer on a registered data set into <out>/vqvae.pt",
        "out=FOLDER [key=value ...]", "",
        "data.tokenizers.train_vq:TrainVQArgs",
        _flat("train-vq", "data.tokenizers.train_vq", "TrainVQArgs", "train_vq_command", (ValueError,))),
    "bench": Command(
        "sampling speed on CPU (KV cache vs recomputation vs one forward), or training throughput",
        "[key=value ...]", "", "speed.bench:BenchArgs", _flat("bench", "speed.bench", "BenchArgs", "bench_command")),
    "gpu-check": Command(
        "CUDA only, a few minutes: training tokens/s, cached == uncached, sampling s/image, DDP",
        "[key=value ...]", "Exit code 1 when a correctness check fails; without CUDA it says so and exits 0.",
        "speed.gpu_check:GPUCheckArgs",
        _flat("gpu-check", "speed.gpu_check", "GPUCheckArgs", "gpu_check_command")),
    "archive": Command(
        "copy every evaluated run's results and the sweep manifests into the committed results archive",
        "[key=value ...]", "Merged by key, never overwritten.", "sweeps.archive:ArchiveArgs",
        _flat("archive", "sweeps.archive", "ArchiveArgs", "archive_command", (ValueError,))),
    "collect": Command(
        "gather every run's results.jsonl into one table (<out>.parquet/.csv and <out>_seeds.*)",
        "[key=value ...]", "", "analysis.table:CollectArgs",
        _flat("collect", "analysis.table", "CollectArgs", "collect_command")),
    "plots": Command(
        "draw the trade-off figures (PNG + PDF + summary.md) from the results table",
        "[key=value ...]", "", "analysis.plots:PlotArgs",
        _flat("plots", "analysis.plots", "PlotArgs", "plots_command")),
    "report": Command(
        "write the findings report (FINDINGS.md, findings.csv) from the results under root",
        "[key=value ...]", "", "analysis.report:ReportArgs",
        _flat("report", "analysis.report", "ReportArgs", "report_command")),
}


def _schema(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(_module(module), name)


def overview() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [POSITIONAL] [key=value ...]   (or: sar-lightning <command> ...)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
    lines += ["", f"{PROG} <command> --help lists the command's keys, their types and defaults."]
    return "\n".join(lines)


def command_help(name: str) -> str:
    """``<command> --help``: the usage, the positional argument and separators, then every key of its schema."""
    c = COMMANDS[name]
    lines = [f"usage: {PROG} {name} {c.usage}", "", f"{c.summary[0].upper()}{c.summary[1:]}."]
    if c.about:
        lines += ["", c.about]
    lines += ["", "keys (key  type  default  help):", describe(_schema(c.schema), c.skip)]
    if c.also:
        lines += ["", "any other key overrides every run's config:", describe(_schema(c.also))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m sar_lightning <command> ...``: dispatch to the command (its exit code)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sar-lightning error: unknown command {name!r}; the commands: {', '.join(COMMANDS)} "
              f"(see {PROG} --help)", file=sys.stderr)
        return 2
    if "-h" in rest or "--help" in rest:
        print(command_help(name))
        return 0
    return COMMANDS[name].run(rest)
