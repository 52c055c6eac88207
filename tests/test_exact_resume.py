"""Exact resume: a run killed after a checkpoint and resumed ends bit-identical to the uninterrupted run.

Everything random in a training step is a function of (seed, rank, global step): the data order
(``datamodule.StepSampler``), the orders and intervals, the label dropout and the model dropout
(``SARLightningModule.train_batch``). A resumed process therefore draws what the uninterrupted one drew.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SMOKE
from torch.utils.data import TensorDataset

from sar_lightning.config import load_config, to_dict
from sar_lightning.data.codes import data_info
from sar_lightning.data.datamodule import SARDataModule, StepSampler
from sar_lightning.training.module import SARLightningModule
from sar_lightning.training.train import train

# Digits has 1437 training images: 22 batches of 64 per epoch. The kill falls mid-epoch (step 12) and the
# resumed run crosses into the second epoch (step 22).
KILL_AT, STEPS = 12, 24
ARGS = ["threads=1", "trainer.enable_progress_bar=false", f"train.max_steps={STEPS}", f"train.ckpt_every={KILL_AT}",
        f"train.val_every={KILL_AT}", "train.val_batches=1", "train.sample_steps=[1]", "train.log_every=6",
        "model.class_dropout=0.1"]

# The first process runs the train command and SIGKILLs itself at the start of step KILL_AT: after
# that step's checkpoint (last.ckpt) and validation, with nothing else saved.
KILLER = """
import os, signal, sys
from sar_lightning.training.module import SARLightningModule

def die(self, batch, batch_idx):
    if self.global_step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)

SARLightningModule.on_train_batch_start = die
from sar_lightning.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


def _tensors(tree, prefix=""):
    """Every tensor of a nested checkpoint tree, by path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {}
    out = {}
    for key, value in items:
        out.update(_tensors(value, f"{prefix}/{key}"))
    return out


def _final(run: Path) -> tuple[dict, float]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == STEPS
    keep = {k: ckpt[k] for k in ("state_dict", "current_model_state", "optimizer_states") if k in ckpt}
    assert "state_dict" in keep and "current_model_state" in keep  # EMA and raw weights
    return _tensors(keep), json.loads((run / "done.json").read_text())["val_loss"]


@pytest.mark.slow
def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILLER.format(kill_at=KILL_AT), str(SMOKE),
                             f"root={tmp_path / 'killed'}", *ARGS], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    (run,) = list((tmp_path / "killed").iterdir())
    assert not (run / "done.json").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == KILL_AT

    resumed = train(load_config(SMOKE, [f"root={tmp_path / 'killed'}", *ARGS]))
    assert resumed == run
    reference = train(load_config(SMOKE, [f"root={tmp_path / 'reference'}", *ARGS]))
    assert reference.name == run.name

    (want, want_loss), (got, got_loss) = _final(reference), _final(run)
    assert want.keys() == got.keys()
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differ, (f"{len(differ)} of {len(want)} tensors differ after resume, e.g. {differ[:3]}; "
                        f"val loss {want_loss} uninterrupted, {got_loss} resumed")
    assert got_loss == want_loss, (want_loss, got_loss)


def test_step_sampler_batches_are_a_function_of_seed_and_step():
    data = TensorDataset(torch.arange(50))  # 6 steps of 8 per epoch, 2 examples dropped each epoch
    position = [0]
    sampler = StepSampler(data, 8, seed=3, start_step=lambda: position[0])
    assert sampler.steps_per_epoch == 6 and len(sampler) == 48
    epochs = []
    for epoch in range(3):  # what an uninterrupted run reads: one iter() per epoch, at its first step
        position[0] = 6 * epoch
        epochs.append(list(sampler))
        assert len(set(epochs[-1])) == 48
    assert epochs[0] != epochs[1] != epochs[2]
    flat = [i for e in epochs for i in e]
    for step in range(18):  # a run restored at any step reads on from the same place
        position[0] = step
        assert list(sampler)[:8] == flat[8 * step : 8 * step + 8] == sampler.batch(step)
        assert len(list(sampler)) == 8 * (6 - step % 6)  # to the end of that epoch
    assert StepSampler(data, 8, seed=4).batch(0) != sampler.batch(0)
    # Two ranks split each global batch of 2 x 4 as DistributedSampler splits the epoch's permutation.
    ranks = [StepSampler(data, 4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for step in (0, 5, 7):
        a, b = (r.batch(step) for r in ranks)
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        assert sorted(a + b) == sorted(sampler.batch(step))


def test_train_loader_keeps_batch_size_and_validation_order(tmp_path):
    cfg = load_config(SMOKE, [f"root={tmp_path}", "data.batch_size=32"])
    dm = SARDataModule(cfg.data, seed=5)
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, StepSampler) and loader.batch_size == 32 and loader.drop_last
    tokens, labels = next(iter(loader))
    assert tokens.shape[0] == 32 and torch.equal(labels, dm.train_set.tensors[1][loader.sampler.batch(0)])
    assert loader.state_dict() == {"seed": 5, "batch_size": 32, "world_size": 1,
                                   "num_examples": len(dm.train_set), "step": 0}
    with pytest.warns(UserWarning, match="world_size 2 -> 1"):  # resumed on fewer devices
        loader.load_state_dict({**loader.state_dict(), "world_size": 2})
    val = [y for _, y in dm.val_dataloader()]
    assert torch.equal(torch.cat(val), dm.val_set.tensors[1])  # in order, every example


@pytest.mark.parametrize("model_dropout", [0.0, 0.2])
def test_label_dropout_is_drawn_from_the_step_generator(model_dropout):
    cfg = load_config(SMOKE, ["model.class_dropout=0.3", f"model.dropout={model_dropout}"])
    module = SARLightningModule(to_dict(cfg), data_info(cfg.data)).train()
    model = module.model
    labels = torch.arange(10).repeat(500)
    dropped = model.drop_labels(labels, torch.Generator().manual_seed(1))
    assert torch.equal(dropped, model.drop_labels(labels, torch.Generator().manual_seed(1)))
    assert 0.25 < (dropped == model.null_class).float().mean() < 0.35
    assert torch.equal(dropped[dropped != model.null_class], labels[dropped != model.null_class])
    # class_tokens is a lookup in training as well; the global RNG plays no part in a training step.
    assert torch.equal(model.class_tokens(labels[:20]), model.class_tokens(labels[:20]))
    g = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, 17, (16, 64), generator=g), torch.randint(0, 10, (16,), generator=g))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = module.train_batch(batch, 7)[0]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)
    assert torch.equal(module.train_batch(batch, 7)[0], first)
    assert not torch.equal(module.train_batch(batch, 8)[0], first)
