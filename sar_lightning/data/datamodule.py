"""The Lightning side of the data: the training loader whose batch is a function of (seed, global step),
and the LightningDataModule over the token splits of ``sar_lightning.data.codes``. Kept apart from ``data`` so that
reading configs and results (sweeps, analysis) never imports Lightning."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler

from sar_lightning.data.codes import load_token_split


class StepSampler(DistributedSampler):
    """The training indices of one rank: the batch of global step ``s`` is a function of (seed, s) alone.

    Epoch ``e = s // steps_per_epoch`` shuffles the data set with a permutation seeded by (seed, e), the
    same on every rank; its first ``steps_per_epoch * batch_size * world_size`` entries are split between
    the ranks as DistributedSampler does (rank ``r`` takes every ``world_size``-th from ``r``) and cut into
    batches of ``batch_size``; the rest of the epoch is dropped. Iterating starts at step ``start_step()``
    (the trainer's global step: the restored one on resume, as Lightning restores a checkpoint before it
    asks for the loader) and runs to the end of that epoch, so a resumed run reads the batches the
    uninterrupted one read. One batch per step: no gradient accumulation.

    ``len`` is a whole epoch, which Lightning expects (it counts a restored epoch's finished batches).
    A DistributedSampler, so that Lightning leaves it in place under DDP; ``set_epoch`` is ignored, since
    the step says which epoch it is.
    """

    SALT = 0xDA7A  # keeps the data order apart from other streams drawn from the same seed

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_step: Callable[[], int] = lambda: 0):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size, self.start_step = batch_size, start_step
        self.steps_per_epoch = len(dataset) // (batch_size * world_size)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(dataset)} training examples do not fill one batch of {batch_size} per device "
                             f"on {world_size} device(s); lower data.batch_size")

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices of ``epoch``, ``[steps_per_epoch * batch_size]`` in step order."""
        seed = np.random.SeedSequence([self.seed % 2**64, self.SALT, epoch]).generate_state(1, np.uint64)[0]
        perm = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(int(seed)))
        return perm[: self.steps_per_epoch * self.batch_size * self.num_replicas][self.rank :: self.num_replicas]

    def batch(self, step: int) -> list[int]:
        """The indices this rank trains on at global step ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        return self.epoch_indices(epoch)[i * self.batch_size : (i + 1) * self.batch_size].tolist()

    def __iter__(self):
        epoch, i = divmod(self.start_step(), self.steps_per_epoch)
        return iter(self.epoch_indices(epoch)[i * self.batch_size :].tolist())

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        pass

    def order_key(self) -> dict:
        """What the step -> batch map depends on (besides the data)."""
        return {"seed": self.seed, "batch_size": self.batch_size, "world_size": self.num_replicas,
                "num_examples": len(self.dataset)}


class StepDataLoader(DataLoader):
    """The training loader over a ``StepSampler``. Lightning puts its ``state_dict`` (the order's key and
    the step) into each checkpoint and calls ``load_state_dict`` on resume, which warns when the order
    changed (another seed, batch size, device count or data set): the run then continues, not exactly."""

    def state_dict(self) -> dict:
        return {**self.sampler.order_key(), "step": self.sampler.start_step()}

    def load_state_dict(self, state: dict) -> None:
        now = self.sampler.order_key()
        changed = {k: (state[k], now[k]) for k in now if k in state and state[k] != now[k]}
        if changed:
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
            rank_zero_warn(f"the training data order differs from the checkpoint's ({what}): the resumed run "
                           "does not read the batches the interrupted run would have read")


class SARDataModule(L.LightningDataModule):
    """Train and val loaders. The training order is a function of (seed, global step), see ``StepSampler``;
    ``seed`` defaults to the LightningModule's ``cfg.train.seed``. Validation reads the val split in order."""

    def __init__(self, cfg, seed: int | None = None):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.train_set = self.val_set = None

    def setup(self, stage=None):
        if self.train_set is None:
            self.train_set = load_token_split(self.cfg, "train")
            self.val_set = load_token_split(self.cfg, "val")

    def _loader(self, dataset, cls=DataLoader, **kw):
        workers = self.cfg.num_workers
        return cls(dataset, batch_size=self.cfg.batch_size, num_workers=workers, persistent_workers=workers > 0,
                   pin_memory=torch.cuda.is_available(), **kw)

    def _train_seed(self) -> int:
        if self.seed is not None:
            return self.seed
        module_cfg = getattr(self.trainer.lightning_module, "cfg", None) if self.trainer else None
        return module_cfg.train.seed if module_cfg is not None else 0

    def train_sampler(self) -> StepSampler:
        trainer = self.trainer
        if trainer is None:
            return StepSampler(self.train_set, self.cfg.batch_size, self._train_seed())
        return StepSampler(self.train_set, self.cfg.batch_size, self._train_seed(), rank=trainer.global_rank,
                           world_size=trainer.world_size, start_step=lambda: trainer.global_step)

    def train_dataloader(self):
        return self._loader(self.train_set, StepDataLoader, sampler=self.train_sampler(), drop_last=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False, drop_last=False)
