"""The sample command: grid PNGs, reproducible seeds, inpainting of real images, progress strips, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sar_lightning.cli import main as cli
from sar_lightning.config import load_config
from sar_lightning.core.sampling import Sampler, generate
from sar_lightning.data.codes import decoder_for
from sar_lightning.data.datasets import load_images
from sar_lightning.evaluation import sample
from sar_lightning.images import image_grid
from sar_lightning.training.callbacks import sample_grid
from sar_lightning.training.checkpoints import load_model

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "experiments" / "smoke.yaml")
FAST = ["trainer.enable_progress_bar=false", "threads=1", "train.sample_steps=[1]", "train.val_batches=1"]
CELL = 64 + 2  # an 8x8 digit upscaled to 64 px, plus the grid's 2 px padding


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny FMT run (random-16-random, 4 steps) and a GPT-baseline run (2 steps), trained once."""
    root = tmp_path_factory.mktemp("runs")
    steps = ["train.max_steps=4", "train.val_every=4", "train.ckpt_every=4"]
    assert cli(["train", SMOKE, f"root={root}", *steps, *FAST]) == 0
    gpt = ["model.name=gpt-tiny", "train.order=raster", "train.schedule=ar", "train.max_steps=2",
           "train.val_every=2", "train.ckpt_every=2"]
    assert cli(["train", SMOKE, f"root={root}", *gpt, *FAST]) == 0
    return {p.name.split("_")[1]: p for p in root.iterdir()}  # {"tiny": ..., "gpt-tiny": ...}


@pytest.fixture(scope="module")
def loaded(runs):
    model, info, _, _ = load_model(runs["tiny"])
    cfg = load_config(runs["tiny"] / "config.yaml")
    return cfg, model, decoder_for(cfg.data)


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_grid_png_has_a_column_per_class_and_is_reproducible(runs, capsys):
    args = ["sample", str(runs["tiny"]), "infer.num_steps=4", "sample.classes=[0,3,7]", "sample.per_class=2"]
    assert cli(args) == 0
    default = runs["tiny"] / "samples" / "sample_random_K4.png"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(default)
    assert png(default).shape[:2] == (2 * CELL + 2, 3 * CELL + 2)  # rows x columns of upscaled cells
    again = default.with_name("again.png")
    assert cli([*args, f"sample.out={again}"]) == 0
    assert again.read_bytes() == default.read_bytes()  # same arguments and seed: the same PNG
    other = default.with_name("other.png")
    assert cli([*args, "infer.seed=1", f"sample.out={other}"]) == 0
    assert not np.array_equal(png(other), png(default))


def test_image_i_has_class_i_mod_classes_like_the_training_grids(loaded):
    cfg, model, tokenizer = loaded
    sampler = Sampler("random", "cosine", 4)
    images = sample.sample_images(model, tokenizer, sampler, list(range(10)), 1, "cpu")
    assert torch.equal(sample_grid(model, tokenizer, sampler, 10, per_class=1), image_grid(images, nrow=10))
    # other classes: image i gets label classes[i % 2] and keeps the seed of index i
    _, kwargs = sampler.request(model, torch.arange(4), 10)
    expected = tokenizer.decode(generate(model, torch.tensor([3, 7, 3, 7]), **kwargs))
    assert torch.equal(sample.sample_images(model, tokenizer, sampler, [3, 7], 2, "cpu"), expected)


def test_region_masks():
    counts = {r: int(sample.region_mask(r, 8, 8).sum()) for r in ("top", "bottom", "left", "right", "center")}
    assert counts == {"top": 32, "bottom": 32, "left": 32, "right": 32, "center": 16}
    assert sample.region_mask("top", 8, 8).view(8, 8)[:4].all()
    assert sample.region_mask("center", 8, 8).view(8, 8)[2:6, 2:6].all()


def test_inpainting_keeps_the_real_images_known_region(loaded):
    cfg, model, tokenizer = loaded
    real, labels = sample.reference_codes(cfg, [0, 3])
    images, targets = load_images("digits", "val", seed=cfg.data.split_seed)
    first = [int((targets == c).nonzero()[0]) for c in (0, 3)]
    assert labels.tolist() == [0, 3] and torch.equal(real, tokenizer.encode(images[first]))  # the real codes
    known = sample.region_mask("top", 8, 8)
    out = sample.inpaint_images(model, tokenizer, Sampler("random", "cosine", 4), real, labels, known, 2, "cpu")
    assert out.shape == (8, 1, 8, 8)  # rows: real (2), masked (2), completions (2 x 2)
    truth, masked, done = out[:2], out[2:4], out[4:].view(2, 2, 1, 8, 8)
    assert torch.equal(truth, tokenizer.decode(real))
    assert torch.equal(masked[..., :4, :], truth[..., :4, :]) and bool((masked[..., 4:, :] == sample.GREY).all())
    for completion in done:  # each row of completions: one per real image
        assert torch.equal(completion[..., :4, :], truth[..., :4, :])  # the known region, pixel for pixel
    assert not torch.equal(done[0, ..., 4:, :], truth[..., 4:, :])  # the rest was generated


def test_progress_ends_on_the_sample_and_starts_grey(loaded, runs):
    cfg, model, tokenizer = loaded
    sampler = Sampler("random", "cosine", 4)
    steps, filled = sample.progress_images(model, tokenizer, sampler, torch.tensor([0, 3]), "cpu")
    assert steps.shape == (2, 4, 1, 8, 8) and filled.shape == (2, 4, 64)
    assert torch.equal(steps[:, -1], sample.sample_images(model, tokenizer, sampler, [0, 3], 1, "cpu"))
    assert filled[:, -1].all() and not filled[:, 0].all()
    unknown = ~filled[:, 0].view(2, 1, 8, 8)
    assert bool((steps[:, 0][unknown] == sample.GREY).all())
    counts = filled.sum(-1)
    assert bool((counts[:, 1:] > counts[:, :-1]).all())  # every step fills cells
    out = runs["tiny"] / "progress.png"
    assert cli(["sample", str(runs["tiny"]), "infer.num_steps=4", "sample.progress=true", "sample.classes=0,3",
                f"sample.out={out}"]) == 0
    assert png(out).shape[:2] == (2 * CELL + 2, 4 * CELL + 2)  # a row per class, a column per step


@pytest.mark.parametrize("args, needle", [
    (["infer.num_steps=0"], "infer.num_steps=0 must lie in 1..64"),
    (["infer.num_steps=65"], "1..64"),
    (["sample.inpaint=top", "infer.num_steps=40"], "1..32"),
    (["infer.num_steps=[4,8]"], "sample draws one setting"),
    (["infer.orders=zigzag"], "unknown order"),
    (["infer.orders=[raster,random]"], "infer.orders"),
    (["infer.schedule=fancy"], "infer.schedule"),
    (["sample.classes=0,12"], "sample.classes"),
    (["sample.classes=three"], "sample.classes"),
    (["infer.ckpt=step999999"], "no checkpoint"),
    (["sample.inpaint=middle"], "sample.inpaint"),
    (["sample.per_class=0"], "sample.per_class"),
    (["--steps", "4"], "expected key=value"),
    (["infer.num_samples=4"], "unknown key 'infer.num_samples'"),
    ("missing", "no run folder"),
    ("gpt", "refuses"),
])
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, args, needle):
    run = runs["gpt-tiny"] if args == "gpt" else tmp_path / "nothing" if args == "missing" else runs["tiny"]
    args = ["infer.num_steps=4"] if isinstance(args, str) else args
    assert cli(["sample", str(run), *args, f"sample.out={tmp_path / 'x.png'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sample error:") and needle in err[0], err
    assert not (tmp_path / "x.png").exists()
