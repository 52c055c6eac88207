"""Callbacks: sample grids per inference step count, the HParams declaration, the final checkpoint, EMA."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.tensorboard.summary import hparams as hparams_summary

from sar_lightning.core.sampling import Sampler
from sar_lightning.images import image_grid, save_png


def sample_grid(model, tokenizer, sampler: Sampler, num_classes: int, per_class: int = 4,
                device=None) -> torch.Tensor:
    """Images ``[C, H', W']`` of a grid: one column per class (at most 10), ``per_class`` rows, fixed seeds."""
    n = min(num_classes, 10)
    index = torch.arange(n * per_class, device=device)  # image i has class i % n: a class per column
    codes = sampler.sample(model, index, n, device)
    return image_grid(tokenizer.decode(codes.cpu()).float().clamp(0, 1), nrow=n)


class SampleGrids(L.Callback):
    """After each validation (EMA weights swapped in), sample fixed classes and seeds at several step
    counts; log the grids to TensorBoard (``samples/steps_XXX``) and save them as PNG in the run."""

    def __init__(self, tokenizer, out: Path, num_steps: list[int], order: str, schedule: str):
        self.tokenizer, self.out = tokenizer, Path(out)
        self.num_steps, self.order, self.schedule = num_steps, order, schedule

    def samplers(self, model) -> list[Sampler]:
        """One per step count the model accepts (K = N, which every model accepts, if none)."""
        samplers = [Sampler(self.order, self.schedule, k) for k in self.num_steps]
        return [s for s in samplers if not s.refusal(model)] or [Sampler(self.order, num_steps=model.num_tokens)]

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or self.tokenizer is None:
            return
        model, was_training = pl_module.model, pl_module.model.training
        model.eval()
        self.out.mkdir(parents=True, exist_ok=True)
        for sampler in self.samplers(model):
            k = sampler.num_steps
            grid = sample_grid(model, self.tokenizer, sampler, model.config.num_classes, device=pl_module.device)
            if trainer.logger is not None and hasattr(trainer.logger.experiment, "add_image"):
                trainer.logger.experiment.add_image(f"samples/steps_{k:03d}", grid, trainer.global_step)
            save_png(grid, self.out / f"step{trainer.global_step:06d}_steps{k:03d}.png")
        model.train(was_training)


def flat_hparams(tree: dict, prefix: str = "") -> dict:
    """Nested config -> ``{"train/lr": 0.001, ...}`` with TensorBoard-friendly scalar values."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{name}/"))
        elif value is None or isinstance(value, (list, tuple)):
            out[name] = str(value)
        else:
            out[name] = value
    return out


class HParamsDeclaration(L.Callback):
    """Writes the run's hyperparameters to TensorBoard's HParams tab with its metric keys declared
    (their values are the scalars logged under those tags; no placeholder ``hp_metric``)."""

    def __init__(self, hparams: dict, metric_keys: list[str]):
        self.hparams, self.metric_keys = hparams, metric_keys

    def on_fit_start(self, trainer, pl_module):
        if trainer.is_global_zero and trainer.logger is not None:
            write_hparams(trainer.logger.experiment, self.hparams, self.metric_keys)


def write_hparams(writer, hparams: dict, metric_keys: list[str]) -> None:
    exp, ssi, sei = hparams_summary(hparams, {k: 0.0 for k in metric_keys})
    for summary in (exp, ssi, sei):
        writer.file_writer.add_summary(summary)
    writer.flush()


class ProgressFile(L.Callback):
    """Writes the step to the run's ``progress.json`` every ``every`` steps (the sweep displays it)."""

    def __init__(self, run, every: int):
        self.run, self.every = run, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if trainer.is_global_zero and (step % self.every == 0 or step == trainer.max_steps):
            self.run.write_progress("training", step, trainer.max_steps)


class FinalCheckpoint(L.Callback):
    """Saves ``last.ckpt`` and a step snapshot at the last step (ModelCheckpoint only saves on its
    cadence), while the EMA callback still holds raw and averaged weights apart."""

    def __init__(self, ckpt_dir: Path, max_steps: int, every: int):
        self.dir, self.max_steps, self.every = Path(ckpt_dir), max_steps, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.max_steps and self.max_steps % self.every:
            for name in (f"step{trainer.global_step:06d}.ckpt", "last.ckpt"):  # the full state, as ModelCheckpoint
                trainer.save_checkpoint(self.dir / name, weights_only=False)  # saves it (said, not defaulted)


class EMA(WeightAveraging):
    """Lightning's weight averaging with an exponential moving average, from step ``start_step`` on.

    Lightning's ``EMAWeightAveraging`` hands ``AveragedModel`` a per-tensor ``avg_fn``: one multiply-add
    per parameter per step. ``multi_avg_fn`` updates all of them in one foreach lerp, the same average
    (to float rounding) in a third of the time (~1.7 -> ~0.6 ms a step for FMT-tiny on a CPU core;
    docs/results/speed.md). Everything else (swapping the averaged weights in for validation, keeping
    both in checkpoints, restoring them on resume) is Lightning's."""

    def __init__(self, decay: float, start_step: int = 0):
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay, self.start_step = decay, start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step
