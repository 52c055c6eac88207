"""Train one run: ``python -m sar_lightning train experiments/<file>.yaml [key=value ...]``.

It trains into the run folder ``<root>/<run_id>`` (layout: ``sar_lightning.runs``). Running the same
command again skips a finished run and resumes an interrupted one from ``last.ckpt``, appending to the
same TensorBoard curves; training from the run's ``config.yaml`` reproduces it. The command line
(``sar_lightning.cli``) parses the arguments and chains a local sweep's evaluation after ``train_run``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from sar_lightning.config import Config, run_id, to_dict, to_yaml
from sar_lightning.data.codes import data_info, decoder_for, extractor_name, missing_decoder
from sar_lightning.data.datamodule import SARDataModule
from sar_lightning.files import atomic_write_text
from sar_lightning.runs import RunDir, RunStopped, fd_tag
from sar_lightning.training.callbacks import (
    EMA,
    FinalCheckpoint,
    HParamsDeclaration,
    ProgressFile,
    SampleGrids,
    flat_hparams,
)
from sar_lightning.training.module import SARLightningModule


def metric_keys(cfg: Config) -> list[str]:
    """Scalars shown as metrics in the HParams tab: training curves and each evaluated step count."""
    keys = ["train/loss", "val/loss", "val/acc"]
    return keys + [fd_tag(extractor_name(cfg.data), k) for k in cfg.infer.num_steps]


def train(cfg: Config) -> Path:
    """Train (or resume, or skip) the run of ``cfg``; return its folder. The run's lock is held throughout
    (by rank 0 under DDP), so a second process on the same run stops with ``RunBusy``."""
    return train_run(cfg)[0]


def train_run(cfg: Config) -> tuple[Path, int]:
    """``train``, and how many processes trained (1 for a run skipped as finished)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    info = data_info(cfg.data)
    rid = run_id(cfg)
    run = RunDir(Path(cfg.root) / rid)
    with run.lock("trained") if _get_rank() in (None, 0) else nullcontext():
        status = run.status()
        if status == "done":
            print(f"[train] {rid}: already finished ({run.done}); skipping")
            return run.path, 1
        if status == "partial":
            run.check_checkpoint(run.last)  # a truncated last.ckpt: say so, and offer an intact snapshot
        elif run.done.exists():
            print(f"[train] {rid}: {run.done} exists but {run.last} does not: training the run again")
            run.done.unlink()
        print(f"[train] {rid}: {'resuming from ' + str(run.last) if status == 'partial' else 'new run'} "
              f"in {run.path}")
        atomic_write_text(run.config, to_yaml(cfg))
        world = _fit(cfg, run, info, resume=status == "partial")
    return run.path, world


def _fit(cfg: Config, run: RunDir, info: dict, resume: bool) -> int:
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    t, tr = cfg.train, cfg.trainer
    module = SARLightningModule(to_dict(cfg), info)
    decoder = decoder_for(cfg.data)
    if decoder is None:
        print(f"[train] no sample grids: {missing_decoder(cfg.data)}")
    callbacks = [SampleGrids(decoder, run.samples, t.sample_steps, t.order, cfg.infer.schedule),
                 HParamsDeclaration(flat_hparams(to_dict(cfg)), metric_keys(cfg)),
                 LearningRateMonitor(logging_interval="step"), ProgressFile(run, t.log_every)]
    if t.ema_decay > 0:
        callbacks.append(EMA(t.ema_decay, t.ema_start_step))
    callbacks += [FinalCheckpoint(run.checkpoints, t.max_steps, t.ckpt_every),
                  ModelCheckpoint(dirpath=run.checkpoints, filename="step{step:06d}", auto_insert_metric_name=False,
                                  every_n_train_steps=t.ckpt_every, save_top_k=-1, save_last=True)]
    trainer = L.Trainer(
        max_steps=t.max_steps, max_epochs=-1, accelerator=tr.accelerator, devices=tr.devices,
        strategy=tr.strategy, num_nodes=tr.num_nodes, precision=t.precision, gradient_clip_val=t.grad_clip,
        logger=TensorBoardLogger(save_dir=str(run.path), name="", version=run.tb.name, default_hp_metric=False),
        callbacks=callbacks, val_check_interval=min(t.val_every, t.max_steps), check_val_every_n_epoch=None,
        limit_val_batches=t.val_batches, log_every_n_steps=t.log_every, num_sanity_val_steps=0,
        enable_progress_bar=tr.enable_progress_bar, enable_model_summary=False, default_root_dir=str(run.path))
    start = time.time()
    trainer.fit(module, datamodule=SARDataModule(cfg.data, seed=t.seed), ckpt_path=str(run.last) if resume else None,
                weights_only=True)  # a checkpoint never runs code when loaded
    if trainer.global_step < t.max_steps:  # Lightning ends fit cleanly on SIGTERM / a keyboard interrupt
        raise RunStopped(f"run {run.name} stopped at step {trainer.global_step} of {t.max_steps}; run the same "
                         "command again to resume from its last checkpoint")
    if trainer.is_global_zero:
        run.write_done({"run_id": run.name, "global_step": trainer.global_step,
                        "seconds_this_session": time.time() - start, "params": module.model.num_params(),
                        "val_loss": float(trainer.callback_metrics.get("val/loss", float("nan")))})
        print(f"[train] {run.name}: finished at step {trainer.global_step}")
    return trainer.world_size

