"""Token data for training: image data sets through a tokenizer, or pre-tokenized ``codes`` folders.

A ``codes`` folder (written by ``python -m sar_lightning tokenize``) holds ``manifest.json`` and, per
split, ``<split>_codes.npy [num_images, N]`` and ``<split>_labels.npy [num_images]``. Small arrays
are loaded into memory; large ones stay memory-mapped, so loading never blocks a GPU.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from sar_lightning.data.datasets import DATASETS, dataset_info, load_images
from sar_lightning.data.tokenizers import PixelQuantizer, load_llamagen_vq16, load_vqvae

CODES_FORMAT = "sar-codes/1"
IN_MEMORY_BYTES = 256 * 2**20  # arrays up to this size are read into RAM
TOKENIZERS = ("pixel", "vq")  # data.tokenizer of an image data set (build_tokenizer)


def known_data() -> list[str]:
    return [*sorted(DATASETS), "codes"]


def read_manifest(path: str | Path) -> dict:
    file = Path(path) / "manifest.json"
    if not file.exists():
        raise FileNotFoundError(f"{file} not found: data.path must be a codes folder written by "
                                "`python -m sar_lightning tokenize` (manifest.json + <split>_codes.npy)")
    manifest = json.loads(file.read_text())
    if manifest.get("format") != CODES_FORMAT:
        raise ValueError(f"{file}: format {manifest.get('format')!r} is not {CODES_FORMAT!r}")
    return manifest


def build_tokenizer(cfg):
    """The tokenizer of an image data set (``cfg``: DataConfig; ``cfg.tokenizer`` one of ``TOKENIZERS``)."""
    if cfg.tokenizer == "pixel":
        meta = dataset_info(cfg.name)
        return PixelQuantizer(cfg.levels, meta["height"], meta["width"], meta["channels"])
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
        return load_llamagen_vq16(path)
    return load_vqvae(path)


def data_info(cfg) -> dict:
    """Grid, vocabulary and classes of the configured data: ``height, width, vocab_size, num_classes``."""
    if cfg.name == "codes":
        if not cfg.path:
            raise ValueError("data.name=codes needs data.path (a codes folder)")
        m = read_manifest(cfg.path)
        return {k: m[k] for k in ("height", "width", "vocab_size", "num_classes")}
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
    images, labels = load_images(cfg.name, split, seed=cfg.split_seed)
    return TensorDataset(encode_images(build_tokenizer(cfg), images), labels)


def decoder_for(cfg):
    """Tokenizer that turns sampled codes back into images (None when it is not available here)."""
    if cfg.name == "codes":
        return tokenizer_from_manifest(read_manifest(cfg.path))
    return build_tokenizer(cfg)


def write_codes(folder: str | Path, splits: dict, *, height: int, width: int, vocab_size: int,
                num_classes: int, tokenizer: dict, source: str, dataset: str | None = None) -> Path:
    """Write a codes folder: ``splits = {"train": (codes [M, N], labels [M]), ...}`` + manifest.

    ``tokenizer``: how to decode, e.g. ``{"name": "vqvae", "path": ...}``; ``dataset``: the registered
    image data set the codes come from (evaluation then uses its classifier and real images).
    Written into a temporary sibling folder and renamed into place, so a crash never leaves a
    half-written data set under ``folder``.
    """
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
