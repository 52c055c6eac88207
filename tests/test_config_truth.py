"""One source of config truth: every experiment file and every grid x profile x data overlay resolves,
and no two of them define the same run (the same ``{order}-{K}-{schedule}_{model}_{data}_s{seed}``) with
different settings; the schema's defaults are written nowhere else."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sar_lightning.config import Config, load_config, run_id, run_identity
from sar_lightning.data.codes import write_codes
from sar_lightning.sweeps.sweep import PROFILES, expand

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
GRIDS = sorted(p for p in (EXPERIMENTS / "grids").glob("*.yaml") if p.name != "profiles.yaml")
OVERLAYS = [None, *sorted(p.stem for p in (EXPERIMENTS / "grids" / "data").glob("*.yaml"))]
RUN_FILES = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if "grids" not in p.parts and p.parent.name in
                   ("experiments", "imagenet") and p.name != "base.yaml")


def _codes(folder: Path, side: int, vocab: int, classes: int, dataset: str | None) -> None:
    g = np.random.default_rng(0)
    splits = {s: (g.integers(0, vocab, (4, side * side)), g.integers(0, classes, 4)) for s in ("train", "val")}
    write_codes(folder, splits, height=side, width=side, vocab_size=vocab, num_classes=classes,
                tokenizer={"name": "vqvae", "path": str(folder / "absent.pt")}, source="test", dataset=dataset)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder with the data folders the paper profile and the Fashion overlay name."""
    root = tmp_path_factory.mktemp("truth")
    _codes(root / "data" / "imagenet_vq16", 16, 16384, 1000, None)
    _codes(root / "data" / "fashion_mnist_vq7", 7, 256, 10, "fashion_mnist")
    return root


def _grid_runs(workdir: Path) -> dict[tuple, list[tuple[str, str, dict]]]:
    """(profile, overlay) -> [(where, run id, resolved config)] for every grid x profile x data overlay."""
    out: dict[tuple, list] = {}
    for grid, profile, data in itertools.product(GRIDS, PROFILES, OVERLAYS):
        _, jobs = expand(grid, profile, root=str(workdir / "runs"), data=data)
        out.setdefault((profile, data), []).extend(
            (f"{grid.stem} x {profile} x {data}: {job.label}", job.run_id,
             load_config(Path(job.run_dir) / "config.yaml")) for job in jobs)
    return out


def _clashes(pairs) -> list[str]:
    """Pairs that name one run (the id without its hash) with one model section, but differ."""
    return [f"{a[0]} ({a[1]}) vs {b[0]} ({b[1]})" for a, b in pairs
            if a[1].rsplit("_", 1)[0] == b[1].rsplit("_", 1)[0] and a[2].model == b[2].model
            and run_identity(a[2]) != run_identity(b[2])]


@pytest.mark.slow
def test_no_two_files_define_one_run_differently(workdir, monkeypatch):
    """Within one profile and data overlay, two grids' runs with one name and one model section are one run;
    every ImageNet run file is the run its grid defines under the paper profile."""
    monkeypatch.chdir(workdir)
    runs = _grid_runs(workdir)
    assert sum(map(len, runs.values())) >= len(GRIDS) * len(PROFILES) * len(OVERLAYS) * 4
    clashes = [c for defs in runs.values() for c in _clashes(itertools.combinations(defs, 2))]
    files = [(str(p.relative_to(EXPERIMENTS)), run_id(c), c) for p in RUN_FILES if p.parent.name == "imagenet"
             for c in [load_config(p)] if not p.name == "paper.yaml"]
    clashes += _clashes(itertools.product(files, runs[("paper", None)]))
    assert not clashes, "the same run defined differently:\n" + "\n".join(clashes)


@pytest.mark.slow
def test_the_paper_setting_lives_once(workdir, monkeypatch):
    """The paper profile takes its values from experiments/imagenet/paper.yaml: FMT-B at the AR end from a
    grid under the paper profile is the same run as experiments/imagenet/fmt_B_ar.yaml."""
    monkeypatch.chdir(workdir)
    _, jobs = expand(EXPERIMENTS / "grids" / "spectrum.yaml", "paper", root=str(workdir / "runs"))
    ar = next(j for j in jobs if j.label.startswith("AR"))
    assert ar.run_id == run_id(load_config(EXPERIMENTS / "imagenet" / "fmt_B_ar.yaml"))
    paper = OmegaConf.load(EXPERIMENTS / "imagenet" / "paper.yaml")
    cfg = load_config(Path(ar.run_dir) / "config.yaml")
    assert (cfg.train.max_steps, cfg.train.val_every, cfg.train.ckpt_every) == \
        (paper.train.max_steps, paper.train.val_every, paper.train.ckpt_every)


def test_the_schema_defaults_live_once():
    """base.yaml, the root of every defaults list, sets nothing: the typed schema holds every default."""
    tree = OmegaConf.to_container(OmegaConf.load(EXPERIMENTS / "base.yaml"))
    assert tree == {}
    assert not (EXPERIMENTS / "infer" / "default.yaml").exists()
    assert load_config(EXPERIMENTS / "base.yaml") == Config()
