"""Configs, the train command, checkpoints, resume, TensorBoard output, codes data, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from conftest import REPO, SMOKE
from lightning.pytorch.callbacks import EMAWeightAveraging
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sar_lightning.cli import main as cli
from sar_lightning.config import ConfigError, load_config, run_id
from sar_lightning.training.callbacks import EMA
from sar_lightning.training.train import train

FAST = ["train.max_steps=8", "train.log_every=2", "train.val_every=4", "train.ckpt_every=4", "train.val_batches=1",
        "train.sample_steps=[1,64]", "trainer.enable_progress_bar=false"]


def _data_overrides(path: Path, tiny_codes) -> list[str]:
    """A tmp codes folder for configs that read one: ImageNet-shaped (16x16, vocabulary 16384, 1000
    classes) under experiments/imagenet/, the toy one (``tiny_codes``' defaults) for files named *codes*."""
    if "imagenet" in path.parts:
        folder = tiny_codes("imagenet_vq16", height=16, width=16, vocab_size=16384, num_classes=1000, n_train=8,
                            n_val=8, labels="cycle", tokenizer={"name": "llamagen_vq16", "path": "missing.pt"},
                            source="random ImageNet-shaped test codes")
        return [f"data.path={folder}"]
    return [f"data.path={tiny_codes()}"] if "codes" in path.name else []


def _yaml_files():
    return sorted(p for p in (REPO / "experiments").rglob("*.yaml") if "grids" not in p.parts)


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_every_experiment_yaml_loads(path, tiny_codes):
    cfg = load_config(path, _data_overrides(path, tiny_codes))
    assert run_id(cfg)


@pytest.mark.parametrize("override, needle", [
    ("train.lrr=0.1", "train.lrr"),  # unknown key
    ("train.max_steps=many", "train.max_steps"),  # bad type
    ("train.order=zigzag", "raster"),  # bad choice lists the valid ones
    ("train.schedule=fancy", "cosine"),
    ("model.name=huge", "tiny"),
    ("model.decoder_attn=sideways", "block_causal"),
    ("train.num_steps=65", "K=65"),  # more sets than the 64 tokens of digits
    ("model.name=gpt-tiny", "train.order=raster"),  # GPT is raster next-token only
    ("infer.num_steps=[0,4]", "infer.num_steps"),
])
def test_bad_config_is_rejected_with_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(SMOKE, [override])


def test_cli_reports_config_errors_before_work(tmp_path, capsys):
    assert cli(["train", str(SMOKE), f"root={tmp_path}", "train.order=zigzag"]) == 2
    assert "valid orders" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_run_id_is_semantic_and_stable():
    a = run_id(load_config(SMOKE))
    assert a.startswith("random-16-random_tiny_digits_s0_")
    assert run_id(load_config(SMOKE, ["root=/elsewhere", "infer.num_samples=7"])) == a  # not identity
    assert run_id(load_config(SMOKE, ["train.lr=0.01"])) != a
    ar = run_id(load_config(SMOKE, ["train.order=raster", "train.schedule=ar"]))
    assert ar.startswith("raster-64-ar_")
    assert run_id(load_config(SMOKE, ["train.order=fixed_random:3"])).startswith("fixed_random3-16-random")


def _scalars(tb_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(tb_dir), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


def test_smoke_fit_writes_config_checkpoints_logs_and_skips_when_done(tmp_path, capsys):
    cfg = load_config(SMOKE, [f"root={tmp_path}", *FAST])
    run = train(cfg)
    assert (run / "config.yaml").exists() and (run / "done.json").exists()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step000004.ckpt", "step000008.ckpt"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 8 and "current_model_state" in ckpt  # EMA and raw weights both kept
    ea = _scalars(run / "tb")
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(ea.Tags()["scalars"])
    # training scalars on every log_every-th step (training_step logs only those: the others were dropped)
    assert [e.step for e in ea.Scalars("train/loss")] == [e.step for e in ea.Scalars("train/acc")] == [1, 3, 5, 7]
    assert "samples/steps_064" in ea.Tags()["images"]
    assert [d.name for d in run.iterdir() if d.name.startswith("version")] == []
    assert list((run / "samples").glob("*.png"))
    # Same command again: reported and skipped, nothing retrained.
    before = (run / "checkpoints" / "last.ckpt").stat().st_mtime
    assert train(cfg) == run
    assert "already finished" in capsys.readouterr().out
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime == before
    # The resolved config reproduces the run identity.
    assert run_id(load_config(run / "config.yaml")) == run.name


def test_codes_dataset_trains(tmp_path, tiny_codes):
    folder = tiny_codes()
    cfg = load_config(SMOKE, [f"root={tmp_path / 'runs'}", "data.name=codes", f"data.path={folder}",
                              "data.batch_size=16", "train.num_steps=4", *FAST, "train.sample_steps=[2,16]",
                              "infer.num_steps=[1,4]"])
    run = train(cfg)
    assert json.loads((run / "done.json").read_text())["global_step"] == 8
    assert run.name.startswith("random-4-random_tiny_toy_codes")


def _train_cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sar_lightning", "train", str(SMOKE), f"root={root}", "threads=1",
            "trainer.enable_progress_bar=false", *extra]


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    extra = ["train.max_steps=400", "train.ckpt_every=10", "train.val_every=200", "train.val_batches=1",
             "train.sample_steps=[4]"]
    proc = subprocess.Popen(_train_cmd(tmp_path, *extra), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run = None
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list(tmp_path.glob("*/checkpoints/step000020.ckpt"))
        if found:
            run = found[0].parents[1]
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run is not None, "no checkpoint appeared before the deadline"
    assert not (run / "done.json").exists()
    killed_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 10 <= killed_at < 400  # last.ckpt may lag the newest snapshot by one save
    done = subprocess.run(_train_cmd(tmp_path, *extra), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stdout
    assert json.loads((run / "done.json").read_text())["global_step"] == 400
    # One TensorBoard folder; the second process's curve starts where the checkpoint left off.
    files = sorted((run / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2 and not list(run.glob("version_*"))
    second = EventAccumulator(str(files[1]), size_guidance={"scalars": 0})
    second.Reload()
    steps = [e.step for e in second.Scalars("train/loss")]
    assert min(steps) >= killed_at and max(steps) >= 390


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    out = subprocess.run(_train_cmd(tmp_path, "trainer.devices=2", "trainer.strategy=ddp", *FAST),
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = list(tmp_path.iterdir())
    assert json.loads((run / "done.json").read_text())["global_step"] == 8
    assert "distributed_backend=gloo" in out.stderr + out.stdout


@pytest.mark.slow
def test_small_model_validation_loss_drops_on_digits(tmp_path):
    from sar_lightning.config import to_dict
    from sar_lightning.data.codes import data_info
    from sar_lightning.data.datamodule import SARDataModule
    from sar_lightning.training.module import SARLightningModule

    cfg = load_config(REPO / "experiments" / "digits_sar_ts.yaml",
                      [f"root={tmp_path}", "train.max_steps=300", "train.val_every=300", "train.ckpt_every=300",
                       "train.sample_steps=[16]", "train.ema_decay=0.0", "trainer.enable_progress_bar=false"])
    dm = SARDataModule(cfg.data)
    dm.setup()
    fresh = SARLightningModule(to_dict(cfg), data_info(cfg.data)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        initial = np.mean([fresh._step(b, torch.Generator().manual_seed(i))[0].item()
                           for i, b in enumerate(dm.val_dataloader())])
    final = json.loads((train(cfg) / "done.json").read_text())["val_loss"]
    assert final < 0.6 * initial, (initial, final)


def test_bf16_mixed_precision_from_config(tmp_path):
    cfg = load_config(SMOKE, [f"root={tmp_path}", *FAST, "train.precision=bf16-mixed", "train.max_steps=4"])
    run = train(cfg)
    assert json.loads((run / "done.json").read_text())["global_step"] == 4
    assert np.isfinite(json.loads((run / "done.json").read_text())["val_loss"])


class _Linear(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)


def test_ema_callback_is_lightnings_average_in_one_foreach_update():
    """``EMA`` (one foreach lerp per step) keeps the average Lightning's per-tensor ``EMAWeightAveraging``
    keeps, from the same start step; before it, the average is not updated."""
    torch.manual_seed(0)
    ours, module = EMA(0.9, start_step=2), _Linear()
    lightnings = EMAWeightAveraging(decay=0.9, update_starting_at_step=2)
    for cb in (ours, lightnings):
        cb.setup(None, module, "fit")
    expected = None
    for step in range(1, 7):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        for cb in (ours, lightnings):
            cb.on_train_batch_end(SimpleNamespace(global_step=step), module, None, None, step - 1)
        if step == 3:  # step index 2: the first update copies the weights
            expected = [p.detach().clone() for p in module.parameters()]
        elif step > 3:
            expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, module.parameters())]
        if step < 3:
            assert int(ours._average_model.n_averaged) == 0
        else:
            for e, a, b in zip(expected, ours._average_model.module.parameters(),
                               lightnings._average_model.module.parameters()):
                torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
