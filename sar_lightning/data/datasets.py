"""Image data sets for training the tokenizer/model and for evaluation: plain tensors, no Lightning.

``load_images(name, split)`` returns ``(images FloatTensor[N, C, H, W] in [0, 1], labels LongTensor[N])``.
Data sets live in a registry filled by ``@register_dataset``, so a config names one by string.
"""

from __future__ import annotations

import gzip
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sar_lightning.files import atomic_write, default_cache_root

SPLITS = ("train", "val")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package `dataset-fashion-mnist`
FASHION_MNIST_APT = "dataset-fashion-mnist"

Loader = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class DatasetEntry:
    loader: Loader  # loader(split, *, seed, root, download) -> (images, labels)
    channels: int
    height: int
    width: int
    class_names: tuple[str, ...]


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, channels: int, height: int, width: int, class_names):
    def wrap(fn: Loader) -> Loader:
        DATASETS[name] = DatasetEntry(fn, channels, height, width, tuple(class_names))
        return fn

    return wrap


def _entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; valid names: {sorted(DATASETS)}")
    return DATASETS[name]


def dataset_info(name: str) -> dict:
    """``dict(channels, height, width, num_classes, class_names)`` of a registered data set."""
    e = _entry(name)
    return dict(
        channels=e.channels,
        height=e.height,
        width=e.width,
        num_classes=len(e.class_names),
        class_names=list(e.class_names),
    )


def load_images(
    name: str, split: str, *, seed: int = 0, root: str | os.PathLike | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split of a registered data set.

    Args:
        name: registry name (``digits``, ``fashion_mnist``, ...).
        split: ``"train"`` or ``"val"``.
        seed: seeds the train/val split of data sets that have no official one (digits).
        root: folder holding the files, instead of the default location.
        download: allow a network download (torchvision) when the files are missing.

    Returns:
        images ``FloatTensor[N, C, H, W]`` in [0, 1], labels ``LongTensor[N]``.
    """
    entry = _entry(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    images, labels = entry.loader(split, seed=seed, root=root, download=download)
    assert images.shape[1:] == (entry.channels, entry.height, entry.width), images.shape
    return images.float().contiguous(), labels.long().contiguous()


# --------------------------------------------------------------------------------------------- digits


DIGITS_COUNT = 1797


def _digits_split(seed: int) -> dict[str, np.ndarray]:
    """scikit-learn's 8x8 digits (shipped with the package: always offline), split 80/20 stratified by
    class, a function of ``seed`` only: ``{split}_images`` (uint8 0..16, ``[M, 8, 8]``), ``{split}_labels``."""
    from sklearn.datasets import load_digits  # here: scikit-learn takes ~0.5 s to import, for this data set only
    from sklearn.model_selection import train_test_split  # (the same)

    data = load_digits()
    index = np.arange(len(data.target))
    train_idx, val_idx = train_test_split(index, test_size=0.2, stratify=data.target, random_state=seed)
    out = {}
    for split, idx in (("train", np.sort(train_idx)), ("val", np.sort(val_idx))):
        out[f"{split}_images"] = data.images[idx].astype(np.uint8)
        out[f"{split}_labels"] = data.target[idx].astype(np.int64)
    return out


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary's name
        np.savez(f, **arrays)


def _read_digits_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("train_images", "train_labels", "val_images", "val_labels")}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # missing, truncated or foreign: rebuilt from scikit-learn
    ok = len(arrays["train_labels"]) + len(arrays["val_labels"]) == DIGITS_COUNT and all(
        arrays[f"{s}_images"].shape == (len(arrays[f"{s}_labels"]), 8, 8) for s in SPLITS)
    return arrays if ok else None


@register_dataset("digits", channels=1, height=8, width=8, class_names=[str(i) for i in range(10)])
def _digits(split, *, seed=0, root=None, download=False):
    # Each seed's split is kept as .npz (read without pickle) in `root` or the cache (`$SAR_CACHE`): importing
    # scikit-learn's loaders costs ~1.3 s in every training and evaluation process, the file a few ms.
    path = (Path(root) if root is not None else default_cache_root() / "datasets") / f"digits_split_seed{seed}.npz"
    arrays = _read_digits_cache(path)
    if arrays is None:
        arrays = _digits_split(seed)
        atomic_write(path, lambda tmp: _savez(tmp, arrays))
    images = torch.from_numpy(arrays[f"{split}_images"]).float().div(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    return images, torch.from_numpy(arrays[f"{split}_labels"]).long()


# -------------------------------------------------------------------------------------- fashion_mnist

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
FASHION_CLASSES += ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one (optionally gzipped) idx file, the MNIST container format, into a uint8 array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:  # magic: 0, 0, dtype (0x08 = ubyte), ndim
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fashion_dirs(root) -> list[Path]:
    if root is None:
        return [FASHION_MNIST_DIR]
    # A plain folder of idx files, or torchvision's FashionMNIST(root) layout.
    return [Path(root), Path(root) / "FashionMNIST" / "raw"]


def _missing_fashion(dirs: list[Path]) -> FileNotFoundError:
    return FileNotFoundError(
        f"Fashion-MNIST idx files not found in {[str(d) for d in dirs]}. Get them with "
        f"`apt-get install -y {FASHION_MNIST_APT}` (installs them in {FASHION_MNIST_DIR}), or pass "
        "root= a folder holding train-images-idx3-ubyte[.gz] etc., or pass download=True to fetch them "
        "with torchvision's FashionMNIST(root, download=True)."
    )


@register_dataset("fashion_mnist", channels=1, height=28, width=28, class_names=FASHION_CLASSES)
def _fashion_mnist(split, *, seed=0, root=None, download=False):
    # The official split: "train" = the 60k training file, "val" = the 10k test file; `seed` is unused.
    dirs = _fashion_dirs(root)
    image_stem, label_stem = _IDX_FILES[split]
    for folder in dirs:
        image_path, label_path = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
        if image_path is not None and label_path is not None:
            break
    else:
        if not download:
            raise _missing_fashion(dirs)
        from torchvision.datasets import FashionMNIST  # here: torchvision takes ~1 s to import, for a download

        target = Path(root) if root is not None else Path.home() / ".cache" / "sar-lightning" / "datasets"
        FashionMNIST(str(target), train=split == "train", download=True)
        return _fashion_mnist(split, seed=seed, root=target, download=False)
    images = torch.from_numpy(read_idx(image_path).copy()).float().div(255.0).unsqueeze(1)  # (N, 1, 28, 28)
    labels = torch.from_numpy(read_idx(label_path).astype(np.int64))
    return images, labels
