"""Safe to share and to interrupt: no code runs from a loaded file, one writer per run folder, clear errors
(exit 2, one line naming the file or key, nothing written), readable files. The killed sweep is in
test_reliability_sweep.py, exact resume in test_exact_resume.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SMOKE

from sar_lightning.cli import main as cli
from sar_lightning.config import ConfigError, load_config, run_id
from sar_lightning.files import UMASK, FileError
from sar_lightning.runs import RunDir, read_results
from sar_lightning.sweeps.sweep import expand
from sar_lightning.training.checkpoints import load_model

FAST = ["train.max_steps=4", "train.val_every=4", "train.ckpt_every=2", "train.val_batches=1",
        "train.sample_steps=[4]", "trainer.enable_progress_bar=false", "threads=1"]
EVAL = ["infer.num_steps=[4]", "infer.num_samples=20", "infer.batch_size=20", "infer.timing_batch=4",
        "infer.timing_repeats=1", "threads=1"]


class Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_file(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "hyper_parameters": Evil(marker), "config": Evil(marker)}, path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished smoke run with step snapshots (kept pristine: tests copy it)."""
    root = tmp_path_factory.mktemp("runs")
    assert cli(["train", str(SMOKE), f"root={root}", *FAST]) == 0
    return next(p for p in root.iterdir() if (p / "done.json").exists())


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "runs" / trained.name
    shutil.copytree(trained, copy)
    return copy


def _again(run: Path) -> list[str]:
    """Train arguments that rerun the copied run in its new place."""
    return [str(run / "config.yaml"), f"root={run.parent}", *FAST[-2:]]


def _tree(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name not in (".lock", ".owner")}


def _one_line(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ---- no code from files ---------------------------------------------------------------------------------------


def test_every_loader_refuses_a_pickle_that_runs_code(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    _evil_file(run / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(FileError, match="last.ckpt"):  # evaluate / sample
        load_model(run)
    assert cli(["evaluate", str(run), *EVAL]) == 2
    _one_line(capsys, "last.ckpt")
    (run / "done.json").unlink()  # resume: train loads last.ckpt
    assert cli(["train", *_again(run)]) == 2
    _one_line(capsys, "last.ckpt")

    from sar_lightning.data.tokenizers import load_vqvae
    from sar_lightning.data.tokenizers.llamagen import load_llamagen_vq16

    with pytest.raises(FileError, match="VQ-VAE"):
        load_vqvae(_evil_file(tmp_path / "vqvae.pt", marker))
    with pytest.raises(FileError, match="LlamaGen"):
        load_llamagen_vq16(_evil_file(tmp_path / "vq_ds16_c2i.pt", marker))
    assert not marker.exists()


def test_the_classifier_cache_refuses_a_pickle_that_runs_code(tmp_path):
    from sar_lightning.evaluation.features import classifier_cache_paths, get_classifier_extractor

    get_classifier_extractor("digits", seed=0, cache_root=tmp_path)  # trains and caches (a few seconds)
    weights, _ = classifier_cache_paths("digits", 0, tmp_path)
    marker = tmp_path / "pwned"
    _evil_file(weights, marker)
    with pytest.raises(FileError, match="classifier"):
        get_classifier_extractor("digits", seed=0, cache_root=tmp_path)
    assert not marker.exists()


def test_a_wrong_llamagen_file_gets_a_short_message(tmp_path):
    from sar_lightning.data.tokenizers.llamagen import load_llamagen_vq16

    path = tmp_path / "other.pt"
    torch.save({"model": {f"layer{i}.weight": torch.zeros(1) for i in range(500)}}, path)
    with pytest.raises(FileError) as err:
        load_llamagen_vq16(path)
    assert "not LlamaGen's VQ-16" in str(err.value) and len(str(err.value)) < 600
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(FileError, match="other.pt"):
        load_llamagen_vq16(path)


# ---- clear errors: exit 2, one line, nothing written -------------------------------------------------------------


def test_a_truncated_last_ckpt_offers_the_newest_intact_snapshot(run, capsys):
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    before = _tree(run)
    assert cli(["evaluate", str(run), *EVAL]) == 2
    _one_line(capsys, "last.ckpt", "step000004", "infer.ckpt=step000004")
    (run / "done.json").unlink()
    assert cli(["train", *_again(run)]) == 2
    _one_line(capsys, "last.ckpt", "cp ")
    assert {p: t for p, t in _tree(run).items() if p.name != "done.json"} == \
        {p: t for p, t in before.items() if p.name != "done.json"}


@pytest.mark.parametrize("text, needle", [("train: {max_steps: [4\n", "not valid YAML at line"),
                                          ("", "is empty"), ("   \n", "is empty"), ("- 1\n- 2\n", "mapping")])
def test_a_bad_config_file_is_one_line(tmp_path, capsys, text, needle):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert cli(["train", str(bad), f"root={tmp_path / 'runs'}"]) == 2
    _one_line(capsys, "bad.yaml", needle)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, key", [("infer.cfg_scale=[-1.0]", "infer.cfg_scale"),
                                           ("infer.temperature=-0.5", "infer.temperature"),
                                           ("infer.top_p=1.5", "infer.top_p"), ("infer.top_k=0", "infer.top_k"),
                                           ("infer.timing_batch=0", "infer.timing_batch"),
                                           ("infer.num_steps=[]", "infer.num_steps"),
                                           ("infer.ckpt=''", "infer.ckpt"), ("infer.orders=[zigzag]", "infer.orders")])
def test_every_infer_key_is_validated(run, capsys, override, key):
    before = _tree(run)
    assert cli(["evaluate", str(run), *EVAL, override]) == 2
    _one_line(capsys, key)
    assert _tree(run) == before


def test_a_bad_results_line_is_skipped_with_its_number(run, capsys):
    results = run / "results.jsonl"
    results.write_text('{"fd": 1.0, "num_steps": 4}\n{oops\n')
    rows = read_results(results)
    assert len(rows) == 1 and "line 2" in capsys.readouterr().err
    assert cli(["evaluate", str(run), *EVAL]) == 0  # the run stays evaluable; the bad line stays in the file
    assert "{oops" in results.read_text() and len(read_results(results)) == 2


def test_exact_duplicate_rows_count_once(tmp_path):
    results = tmp_path / "results.jsonl"
    line = json.dumps({"fd": 1.0, "num_steps": 4}, sort_keys=True)
    results.write_text(f"{line}\n{line}\n")
    assert len(read_results(results)) == 1


def test_a_runs_root_that_is_a_file_or_unwritable_is_one_line(tmp_path, capsys, monkeypatch):
    root = tmp_path / "runs"
    root.write_text("not a folder")
    assert cli(["train", str(SMOKE), f"root={root}", *FAST]) == 2
    _one_line(capsys, "cannot write", "root=")

    def read_only(self, *args, **kwargs):  # as root, chmod cannot make a folder read-only: simulate it
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    assert cli(["sweep", str(REPO / "experiments" / "grids" / "orders.yaml"), "sweep.profile=smoke",
                f"root={root}"]) == 2
    _one_line(capsys, "cannot write", "root=")

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert cli(["train", str(SMOKE), f"root={tmp_path / 'ro'}", *FAST]) == 2
    _one_line(capsys, "Permission denied", "root=")


def test_a_missing_run_folder_is_not_created(tmp_path, capsys):
    assert cli(["evaluate", str(tmp_path / "runs" / "nope"), *EVAL]) == 2
    _one_line(capsys, "nope", "not a run folder")
    assert not (tmp_path / "runs").exists()


def test_done_json_without_a_checkpoint_is_not_done(run, capsys):
    shutil.rmtree(run / "checkpoints")
    assert RunDir(run).status() == "new"
    assert cli(["train", *_again(run)]) == 0
    assert "training the run again" in capsys.readouterr().out
    assert RunDir(run).status() == "done" and (run / "checkpoints" / "last.ckpt").exists()


def test_a_sweep_validates_every_run_before_writing(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\nquestion: q\ndefaults: [base, data/digits]\nruns:\n"
                    "  - {label: ok, overrides: {train.order: raster, train.schedule: ar, train.num_steps: null}}\n"
                    "  - {label: bad, overrides: {train.order: zigzag}}\n")
    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    (tmp_path / "experiments" / "grids" / "g.yaml").write_text(grid.read_text())
    with pytest.raises(ConfigError, match="zigzag"):
        expand(tmp_path / "experiments" / "grids" / "g.yaml", "smoke", root=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_files_the_suite_writes_are_readable_by_others(run):
    for name in ("config.yaml", "done.json", "results.jsonl"):
        path = run / name
        if name == "results.jsonl":
            assert cli(["evaluate", str(run), *EVAL]) == 0
        assert path.stat().st_mode & 0o777 == 0o666 & ~UMASK
    if UMASK == 0o022:
        assert (run / "results.jsonl").stat().st_mode & 0o777 == 0o644


# ---- one writer per run -------------------------------------------------------------------------------------------


def _cli(command: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "sar_lightning", command, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_trainings_of_one_run_at_once(tmp_path):
    args = [str(SMOKE), f"root={tmp_path}", *FAST, "train.max_steps=40", "train.ckpt_every=10", "train.val_every=40"]
    first, second = _cli("train", *args), _cli("train", *args)
    (_, err1), (_, err2) = first.communicate(timeout=600), second.communicate(timeout=600)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (err1[-1500:], err2[-1500:])
    busy = err1 if first.returncode == 2 else err2
    assert "is being trained by process" in busy and len(busy.strip().splitlines()) == 1
    run = tmp_path / run_id(load_config(SMOKE, [f"root={tmp_path}", *FAST, "train.max_steps=40",
                                                "train.ckpt_every=10", "train.val_every=40"]))
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and not [c for c in ckpts if "-v" in c], ckpts
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_two_evaluations_of_one_run_at_once(run):
    (run / "results.jsonl").unlink(missing_ok=True)
    args = [str(run), *EVAL, "infer.num_steps=[1,2,4]"]
    first, second = _cli("evaluate", *args), _cli("evaluate", *args)
    (_, err1), (_, err2) = first.communicate(timeout=600), second.communicate(timeout=600)
    assert sorted([first.returncode, second.returncode]) == [0, 2], (err1[-1500:], err2[-1500:])
    assert "is being evaluated by process" in (err1 + err2)
    rows = read_results(run / "results.jsonl")
    assert sorted(r["num_steps"] for r in rows) == [1, 2, 4]
    assert len((run / "results.jsonl").read_text().splitlines()) == 3  # no duplicate rows in the file
