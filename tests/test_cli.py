"""The command line: one entry (``python -m sar_lightning <command>``), one argument style (``key=value`` against a
typed schema), help generated from the schema, one error policy."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib import metadata

import pytest
import tomllib
from conftest import REPO, SMOKE

from sar_lightning import cli, options
from sar_lightning.config import Config, ConfigError

FAST = ["train.max_steps=2", "train.val_every=2", "train.ckpt_every=2", "train.val_batches=1",
        "train.sample_steps=[1]", "trainer.enable_progress_bar=false", "threads=1"]


def test_the_overview_lists_every_command_with_its_summary(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in cli.COMMANDS.items():
        assert any(line.split()[:1] == [name] and command.summary in line for line in out.splitlines()), name
    assert cli.main([]) == 2  # no command: the same list, and a usage error
    assert set(cli.COMMANDS) == {"train", "evaluate", "sample", "sweep", "tokenize", "train-vq", "bench", "gpu-check",
                                 "archive", "collect", "plots", "report"}


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_commands_help_lists_its_schemas_keys_with_their_defaults(name, capsys):
    assert cli.main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m sar_lightning {name} ")
    lines = out.splitlines()
    command = cli.COMMANDS[name]
    for spec in filter(None, (command.schema, command.also)):
        for knob in options.knobs(cli._schema(spec)):
            assert any(line.split()[:1] == [knob.key] and f" {knob.default} " in f"{line} " for line in lines), knob


def test_sample_help_shows_its_own_section_and_the_sampler_keys(capsys):
    assert cli.main(["sample", "-h"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert lines["sample.per_class"].split()[1:3] == ["int", "4"] and "(rows) per class" in lines["sample.per_class"]
    steps = lines["infer.num_steps"]
    assert steps.split()[1:3] == ["list[int]", "[]"] and "one token per step" in steps
    assert "infer.ema" in lines and "sample.inpaint" in lines and "infer.num_samples" not in lines


def test_help_takes_field_comments_and_the_comment_lines_above_a_field():
    by_key = {k.key: k for k in options.knobs(Config)}
    assert by_key["train.lr_schedule"].help  # an inline comment
    assert "sets per image" in by_key["train.num_steps"].help  # the comment block above the field
    assert by_key["trainer.devices"].type == "Any" and by_key["infer.orders"].default == "[]"


@pytest.mark.parametrize("argv, needle", [
    (["train", str(SMOKE), "train.lrr=0.1"], "train.lrr"),
    (["train", str(SMOKE), "--steps", "4"], "expected key=value, got '--steps'"),
    (["train"], "give a config file first"),
    (["evaluate", "runs/nothing", "infer.num_steps=[4]", "--and", "infer.nope=1"], "infer.nope"),
    (["sample", "runs/nothing", "sample.per_clas=2"], "sample.per_clas"),
    (["sweep", "experiments/grids/orders.yaml", "sweep.profil=smoke"], "sweep.profil"),
    (["sweep", "experiments/grids/orders.yaml", "sweep.profile=smoke", "train.nope=1"], "train.nope"),
    (["tokenize", "data=digits", "tokenizer=pixel"], "out is required"),
    (["bench", "repeats=many"], "repeats"),
    (["gpu-check", "size=Q"], "size"),
    (["collect", "rooot=x"], "rooot"),
    (["nosuch"], "unknown command 'nosuch'"),
])
def test_bad_input_is_one_line_naming_it_and_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_a_list_key_takes_one_value_or_a_comma_list():
    got = options.pairs(Config, ["infer.orders=raster", "infer.num_steps=4", "infer.cfg_scale=[1,2]",
                                 "train.num_steps_range=null", "train.order=fixed_random:3"], "t")
    assert got == ["infer.orders=[raster]", "infer.num_steps=[4]", "infer.cfg_scale=[1,2]",
                   "train.num_steps_range=null", "train.order=fixed_random:3"]
    sweep = importlib.import_module("sar_lightning.sweeps.sweep")
    args = options.parse(sweep.SweepArgs, ["sweep.seeds=0,1,2", "sweep.only=raster,random", "sweep.jobs=3"], "sweep")
    assert (args.sweep.seeds, args.sweep.only, args.sweep.jobs, args.sweep.profile) == ([0, 1, 2], ["raster", "random"],
                                                                                        3, "default")
    with pytest.raises(ConfigError, match="sweep.seeds"):
        options.parse(sweep.SweepArgs, ["sweep.seeds="], "sweep")


def test_the_analysis_scripts_keep_their_flags():
    from sar_lightning.analysis.plots import PlotArgs

    parser = options.flag_parser(PlotArgs, "plot_tradeoffs.py", "figures")
    got = PlotArgs(**vars(parser.parse_args(["--root", "archive", "--grid", "orders", "--out", "docs/results"])))
    assert got == PlotArgs(root="archive", table=None, grid="orders", out="docs/results")
    assert PlotArgs(**vars(parser.parse_args([]))) == PlotArgs()


@pytest.mark.parametrize("module", ["training.train", "evaluation.evaluate", "evaluation.sample", "sweeps.sweep",
                                    "data.tokenize", "data.tokenizers.train_vq", "speed.bench", "speed.gpu_check",
                                    "sweeps.archive", "analysis.table", "analysis.plots", "analysis.report"])
def test_command_modules_expose_a_function_and_a_schema_not_a_command_line(module):
    mod = importlib.import_module(f"sar_lightning.{module}")
    assert not hasattr(mod, "main") and "argparse" not in vars(mod)


def test_the_console_script_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"sar-lightning": "sar_lightning.cli:main"}
    scripts = [e for e in metadata.entry_points(group="console_scripts") if e.name == "sar-lightning"]
    if scripts:  # installed (make install): it is this function
        assert scripts[0].load() is cli.main


def test_python_dash_m_sar_lightning_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "sar_lightning", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "gpu-check" in done.stdout and "train-vq" in done.stdout


@pytest.mark.slow
def test_train_then_evaluate_in_one_process_as_a_subprocess(tmp_path):
    """``python -m sar_lightning train experiments/smoke.yaml ... --then-evaluate ...``: trains, waits for a thread
    count on stdin, evaluates in the same process; stdin closed without one: trained, not evaluated."""
    evals = ["infer.num_steps=[4]", "infer.num_samples=10", "infer.batch_size=10", "infer.timing_batch=2",
             "infer.timing_repeats=1", "infer.bootstrap=0"]
    cmd = [sys.executable, "-m", "sar_lightning", "train", str(SMOKE), f"root={tmp_path}", *FAST, "--then-evaluate",
           *evals]
    done = subprocess.run(cmd, cwd=REPO, input="1\n", capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = [p for p in tmp_path.iterdir() if (p / "done.json").exists()]
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert [r["num_steps"] for r in rows] == [4] and "evaluating once the sweep gives a slot" in done.stdout
    again = subprocess.run(cmd, cwd=REPO, input="", capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already finished" in again.stdout and "no slot given" in again.stdout
