"""The LightningModule: draws orders per sample and intervals per batch, optimises the SAR loss."""

from __future__ import annotations

import math
from contextlib import contextmanager

import lightning as L
import torch
from omegaconf import OmegaConf

from sar_lightning.config import MODEL_KNOBS, Config, migrate_tree
from sar_lightning.core.intervals import SELF_SIZED, make_intervals
from sar_lightning.core.orders import anneal_rate, make_order
from sar_lightning.models.registry import build_model

# Per-step random streams: orders and intervals; label dropout; model dropout.
ORDER_STREAM, LABEL_STREAM, DROPOUT_STREAM = 0, 1, 2


def _mix(*xs: int) -> int:
    h = 1469598103934665603
    for x in xs:
        h = ((h ^ (x & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def draw_sets(train_cfg, height: int, width: int, batch_size: int, generator: torch.Generator,
              progress: float | None = None):
    """One training batch's orders ``[B, N]`` (per sample) and intervals (per batch), on the CPU.

    ``progress`` (step / max_steps) sets order ``anneal``'s share of random-order samples; None (validation)
    draws the order the model is sampled in (raster)."""
    n = height * width
    order = make_order(train_cfg.order, height, width, batch_size, generator=generator)
    if train_cfg.order == "anneal" and progress is not None:
        rate = anneal_rate(progress, train_cfg.anneal_start, train_cfg.anneal_end)
        shuffled = make_order("random", height, width, batch_size, generator=generator)
        pick = torch.rand(batch_size, generator=generator) < rate
        order = torch.where(pick[:, None], shuffled, order)
    if train_cfg.schedule in SELF_SIZED:
        k = None
    elif train_cfg.num_steps_range is not None:
        lo, hi = train_cfg.num_steps_range
        k = int(torch.randint(lo, hi + 1, (), generator=generator))
    else:
        k = train_cfg.num_steps
    return order, make_intervals(train_cfg.schedule, n, k, generator=generator)


class SARLightningModule(L.LightningModule):
    """Wraps a FullyMaskedTransformer or the GPT baseline. ``config`` is the resolved Config as a dict;
    ``info`` the data's grid, vocabulary and classes. Both are saved in every checkpoint."""

    def __init__(self, config: dict, info: dict):
        super().__init__()
        self.save_hyperparameters()
        self.cfg: Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), migrate_tree(config)))
        m = self.cfg.model
        self.model = build_model(m.name, vocab_size=info["vocab_size"], num_classes=info["num_classes"],
                                 height=info["height"], width=info["width"], **{k: getattr(m, k) for k in MODEL_KNOBS})
        self.height, self.width = info["height"], info["width"]
        # compiled: fixed-shape inputs, so a new draw of intervals never recompiles (tests/test_compile.py)
        self._loss = self.model.compiled_loss() if self.cfg.train.compile else self.model.loss

    def _generator(self, stream: int, index: int) -> torch.Generator:
        # A fresh seed per (run seed, rank, stream, step): ranks differ, and a resumed run draws
        # exactly what the uninterrupted run would have.
        return torch.Generator().manual_seed(_mix(self.cfg.train.seed, self.global_rank, stream, index))

    def _step(self, batch, generator, label_generator=None, progress=None):
        """Loss, accuracy and K of one batch; ``label_generator`` (training only) draws the label dropout,
        ``progress`` (training only) is the fraction of training done."""
        tokens, labels = batch
        order, intervals = draw_sets(self.cfg.train, self.height, self.width, len(tokens), generator, progress)
        if label_generator is not None:
            labels = self.model.drop_labels(labels, label_generator)
        loss, acc = self._loss(tokens, labels, order.to(self.device), intervals)
        return loss, acc, len(intervals)

    @contextmanager
    def _dropout_rng(self, step: int):
        # Model dropout (nn.Dropout, SDPA's dropout_p) takes no generator: within a training step the global
        # RNG is seeded by (seed, rank, step), and restored afterwards. Backward redraws nothing.
        if self.cfg.model.dropout <= 0:
            yield
            return
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            torch.manual_seed(_mix(self.cfg.train.seed, self.global_rank, DROPOUT_STREAM, step))
            yield

    def train_batch(self, batch, step: int):
        """Loss, accuracy and K of training batch ``batch`` at global step ``step``. Every random draw
        (orders, intervals, label dropout, model dropout) is a function of (seed, rank, step), never of
        the global RNG's state, so a resumed run repeats the uninterrupted one exactly."""
        with self._dropout_rng(step):
            return self._step(batch, self._generator(ORDER_STREAM, step), self._generator(LABEL_STREAM, step),
                              progress=step / self.cfg.train.max_steps)

    def _logged_step(self) -> bool:
        """Whether Lightning writes this step's training scalars (every ``log_every`` steps, or a progress bar
        shows them): a ``self.log`` on any other step is dropped, yet costs ~0.5 ms on a CPU core."""
        t = self.trainer
        return t.progress_bar_callback is not None or t.should_stop or (self.global_step + 1) % t.log_every_n_steps == 0

    def training_step(self, batch, batch_idx):
        loss, acc, k = self.train_batch(batch, self.global_step)
        if not self._logged_step():
            return loss
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", acc)
        self.log("train/num_steps", float(k))
        if self.cfg.train.order == "anneal":
            t = self.cfg.train
            self.log("train/anneal_random_rate", anneal_rate(self.global_step / t.max_steps, t.anneal_start,
                                                             t.anneal_end))
        return loss

    def validation_step(self, batch, batch_idx):
        # The fixed validation setting: the training order and schedule, drawn from fixed seeds.
        g = torch.Generator().manual_seed(_mix(self.cfg.train.seed, 7, batch_idx))
        loss, acc, _ = self._step(batch, g)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/acc", acc, sync_dist=True)

    def configure_optimizers(self):
        t = self.cfg.train
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        # fused: one kernel for all tensors (CPU and CUDA; the per-tensor loop costs 2% of a 2-core CPU step).
        # Not under mixed precision, where Lightning's gradient clipping refuses an optimizer that unscales.
        fused = True if self.device.type in ("cpu", "cuda") and "mixed" not in str(t.precision) else None
        opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), fused=fused)

        def factor(step: int) -> float:
            if step < t.warmup_steps:
                return (step + 1) / t.warmup_steps
            if t.lr_schedule == "constant":
                return 1.0
            done = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
            return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
