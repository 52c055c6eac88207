"""Token data for training: image data sets through a tokenizer, or pre-tokenized ``codes`` folders.

A ``codes`` folder (written by ``python -m sar_lightning.tokenize``) holds ``manifest.json`` and, per
split, ``<split>_codes.npy [num_images, N]`` and ``<split>_labels.npy [num_images]``. Small arrays
are loaded into memory; large ones stay memory-mapped, so loading never blocks a GPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from .tokenizers import PixelQuantizer

CODES_FORMAT = "sar-codes/1"
IN_MEMORY_BYTES = 256 * 2**20  # arrays up to this size are read into RAM


def known_data() -> list[str]:
    from .datasets import DATASETS

    return [*sorted(DATASETS), "codes"]


def read_manifest(path: str | Path) -> dict:
    file = Path(path) / "manifest.json"
    if not file.exists():
        raise FileNotFoundError(f"{file} not found: data.path must be a codes folder written by "
                                "`python -m sar_lightning.tokenize` (manifest.json + <split>_codes.npy)")
    manifest = json.loads(file.read_text())
    if manifest.get("format") != CODES_FORMAT:
        raise ValueError(f"{file}: format {manifest.get('format')!r} is not {CODES_FORMAT!r}")
    return manifest


def build_tokenizer(cfg, info_only: bool = False):
    """The tokenizer of an image data set (``cfg``: DataConfig)."""
    from .datasets import dataset_info

    if cfg.tokenizer == "pixel":
        meta = dataset_info(cfg.name)
        return PixelQuantizer(cfg.levels, meta["height"], meta["width"], meta["channels"])
    from .tokenizers.vqvae import load_vqvae

    return load_vqvae(cfg.tokenizer_path)


def tokenizer_from_manifest(manifest: dict):
    """The tokenizer that decodes a codes folder, or None when its weights are not on this machine."""
    tok = manifest.get("tokenizer", {})
    kind, path = tok.get("name"), tok.get("path")
    if kind == "pixel":
        return PixelQuantizer(tok["levels"], manifest["height"], manifest["width"], tok.get("channels", 1))
    if path is None or not Path(path).exists():
        return None
    if kind == "llamagen_vq16":
        from .tokenizers.llamagen import load_llamagen_vq16

        return load_llamagen_vq16(path)
    from .tokenizers.vqvae import load_vqvae

    return load_vqvae(path)


def data_info(cfg) -> dict:
    """Grid, vocabulary and classes of the configured data: ``height, width, vocab_size, num_classes``."""
    if cfg.name == "codes":
        if not cfg.path:
            raise ValueError("data.name=codes needs data.path (a codes folder)")
        m = read_manifest(cfg.path)
        return {k: m[k] for k in ("height", "width", "vocab_size", "num_classes")}
    from .datasets import dataset_info

    meta = dataset_info(cfg.name)
    if cfg.tokenizer == "pixel":
        return {"height": meta["height"], "width": meta["width"], "vocab_size": cfg.levels,
                "num_classes": meta["num_classes"]}
    tok = build_tokenizer(cfg)
    return {"height": tok.grid[0], "width": tok.grid[1], "vocab_size": tok.vocab_size,
            "num_classes": meta["num_classes"]}


class CodesDataset(Dataset):
    """Rows of a memory-mapped ``[num_images, N]`` code array with their labels."""

    def __init__(self, codes: np.ndarray, labels: np.ndarray):
        self.codes, self.labels = codes, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.from_numpy(np.asarray(self.codes[i], dtype=np.int64)), int(self.labels[i])


def load_codes_split(path: str | Path, split: str) -> Dataset:
    path = Path(path)
    codes_file, labels_file = path / f"{split}_codes.npy", path / f"{split}_labels.npy"
    if not codes_file.exists():
        raise FileNotFoundError(f"{codes_file} not found (split {split!r} of codes folder {path})")
    # Errors name the folder: a sweep's log must say which data set is broken.
    try:
        codes, labels = np.load(codes_file, mmap_mode="r"), np.load(labels_file, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read codes split {split!r} from {path}: {err}") from None
    if codes.nbytes <= IN_MEMORY_BYTES:
        return TensorDataset(torch.from_numpy(np.asarray(codes, dtype=np.int64)),
                             torch.from_numpy(np.asarray(labels, dtype=np.int64)))
    return CodesDataset(codes, labels)


@torch.no_grad()
def encode_images(tokenizer, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``images [M, C, H, W]`` in [0, 1] -> codes ``LongTensor[M, N]``, batched."""
    return torch.cat([tokenizer.encode(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def load_token_split(cfg, split: str) -> Dataset:
    """Token data set of one split (``train`` or ``val``) for a DataConfig."""
    if cfg.name == "codes":
        return load_codes_split(cfg.path, split)
    from .datasets import load_images

    images, labels = load_images(cfg.name, split, seed=cfg.split_seed)
    return TensorDataset(encode_images(build_tokenizer(cfg), images), labels)


def decoder_for(cfg):
    """Tokenizer that turns sampled codes back into images (None when it is not available here)."""
    if cfg.name == "codes":
        return tokenizer_from_manifest(read_manifest(cfg.path))
    return build_tokenizer(cfg)


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


def write_codes(folder: str | Path, splits: dict, *, height: int, width: int, vocab_size: int,
                num_classes: int, tokenizer: dict, source: str, dataset: str | None = None) -> Path:
    """Write a codes folder: ``splits = {"train": (codes [M, N], labels [M]), ...}`` + manifest.

    ``tokenizer``: how to decode, e.g. ``{"name": "vqvae", "path": ...}``; ``dataset``: the registered
    image data set the codes come from (evaluation then uses its classifier and real images).
    Written into a temporary sibling folder and renamed into place, so a crash never leaves a
    half-written data set under ``folder``.
    """
    import shutil
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp"))
    dtype = np.int16 if vocab_size <= 2**15 else np.int32
    counts = {}
    for split, (codes, labels) in splits.items():
        codes, labels = np.asarray(codes), np.asarray(labels)
        if codes.shape[1:] != (height * width,) or len(codes) != len(labels):
            raise ValueError(f"split {split}: codes {codes.shape} / labels {labels.shape} do not fit "
                             f"N={height * width}")
        np.save(tmp / f"{split}_codes.npy", codes.astype(dtype))
        np.save(tmp / f"{split}_labels.npy", labels.astype(np.int64))
        counts[split] = len(labels)
    manifest = {"format": CODES_FORMAT, "height": height, "width": width, "vocab_size": vocab_size,
                "num_classes": num_classes, "tokenizer": tokenizer, "source": source, "dataset": dataset,
                "splits": counts}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def image_dataset(cfg) -> str | None:
    """The registered image data set behind ``cfg`` (DataConfig; a codes folder records its source in
    the manifest's ``dataset``), or None for other images (an ImageNet folder)."""
    from .datasets import DATASETS

    name = read_manifest(cfg.path).get("dataset") if cfg.name == "codes" else cfg.name
    return name if name in DATASETS else None


def extractor_name(cfg) -> str:
    """One feature extractor per data set: its own classifier (``<data>_cnn``), else ``inception``."""
    name = image_dataset(cfg)
    return f"{name}_cnn" if name else "inception"


def missing_decoder(cfg) -> str:
    """Why a codes folder's samples cannot be turned into images here (its tokenizer file is missing)."""
    tok = read_manifest(cfg.path).get("tokenizer", {})
    return (f"the tokenizer of {cfg.path} ({tok.get('name')}) is not at {tok.get('path')!r}; put its "
            f"weights there or correct tokenizer.path in {Path(cfg.path) / 'manifest.json'}")
