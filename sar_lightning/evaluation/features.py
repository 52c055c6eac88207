"""Feature extractors for the evaluation metrics, all with one interface.

``extractor(images FloatTensor[B, C, H, W] in [0, 1]) -> features FloatTensor[B, D]``; each has a ``name``
(metric keys read ``fd_<name>``) and ``num_features``; classifiers also have ``logits(images) -> [B, K]``.

- Offline data sets: a small CNN trained (with Lightning, here at the edge) on the data set's train
  split, checked on its val split and cached on disk keyed by (data set, seed).
- ImageNet: torch-fidelity's ``inception-v3-compat`` pool features (2048-d) and ADM's reference
  ``mu``/``sigma``. Neither can be downloaded here, so a missing file is an error saying where to put it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from sar_lightning.data.datasets import dataset_info, load_images
from sar_lightning.files import atomic_write, default_cache_root, safe_load

CLASSIFIER_VERSION = 2  # bump when the architecture or the recipe changes: old cache files are ignored
# Per data set (architecture + training): ~3 s for digits (99% val), ~1 min for Fashion-MNIST (91% val)
# on one CPU thread. The recipe is stored in the cache record and rebuilds the network on load.
TRAIN_RECIPES = {
    "digits": dict(conv_width=32, feature_dim=128, epochs=15, batch_size=64, lr=3e-3),
    "fashion_mnist": dict(conv_width=16, feature_dim=128, epochs=3, batch_size=128, lr=3e-3),
}
DEFAULT_RECIPE = dict(conv_width=32, feature_dim=128, epochs=10, batch_size=128, lr=3e-3)

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_CONFIG_KEY = "infer.inception_weights"
REFERENCE_CONFIG_KEY = "infer.reference_stats"


# ------------------------------------------------------------------------------ classifier extractor


class ClassifierExtractor(nn.Module):
    """Two conv stages (conv-BN-ReLU-maxpool) and a ReLU layer of ``feature_dim`` (the features), then a
    linear head. Input ``[B, C, H, W]`` with H, W divisible by 4 (8x8 digits, 28x28 Fashion-MNIST)."""

    def __init__(self, name, channels, height, width, num_classes, *, conv_width=32, feature_dim=128):
        super().__init__()
        self.name = name
        self.num_features = feature_dim  # torchmetrics reads this instead of probing with a dummy image
        c1, c2 = conv_width, 2 * conv_width
        self.body = nn.Sequential(
            nn.Conv2d(channels, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (height // 4) * (width // 4), feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.2)  # only between features and head: features stay deterministic
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in [0, 1] -> penultimate features ``[B, feature_dim]``."""
        return self.body(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in [0, 1] -> class logits ``[B, num_classes]``."""
        return self.head(self.dropout(self.body(images)))


def _build_classifier(dataset: str, recipe: dict) -> ClassifierExtractor:
    info = dataset_info(dataset)
    return ClassifierExtractor(
        f"{dataset}_cnn", info["channels"], info["height"], info["width"], info["num_classes"],
        conv_width=recipe["conv_width"], feature_dim=recipe["feature_dim"],
    )  # fmt: skip


@torch.no_grad()
def classifier_accuracy(extractor, images: torch.Tensor, labels: torch.Tensor, batch_size=1000) -> float:
    """Fraction of ``images [N, C, H, W]`` whose arg-max logit is ``labels [N]``."""
    was_training = extractor.training
    extractor.eval()
    correct = sum(
        (extractor.logits(x).argmax(-1) == y).sum().item()
        for x, y in zip(images.split(batch_size), labels.split(batch_size))
    )
    extractor.train(was_training)
    return correct / len(labels)


class _ClassifierTask(L.LightningModule):
    """Thin Lightning wrapper: cross-entropy on the logits, Adam with a one-cycle schedule."""

    def __init__(self, net: ClassifierExtractor, lr: float):
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self.net.logits(images), labels)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        steps = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def train_classifier(dataset: str, seed: int = 0, **recipe) -> tuple[ClassifierExtractor, dict]:
    """Train the classifier extractor on ``dataset``'s train split with a CPU Lightning Trainer.

    ``recipe`` overrides keys of ``TRAIN_RECIPES[dataset]`` (``conv_width, feature_dim, epochs, batch_size,
    lr``).
    Returns the extractor (eval mode, frozen) and a record with the val-split ("held-out") accuracy.
    """
    recipe = {**TRAIN_RECIPES.get(dataset, DEFAULT_RECIPE), **recipe}
    train_x, train_y = load_images(dataset, "train", seed=seed)
    val_x, val_y = load_images(dataset, "val", seed=seed)
    start = time.perf_counter()
    quiet = logging.getLogger("lightning.pytorch")
    level, threads = quiet.level, torch.get_num_threads()
    # fork_rng: seeded init, shuffling and dropout without touching the caller's global RNG state.
    with torch.random.fork_rng(), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        quiet.setLevel(logging.WARNING)  # no "GPU available: False" banners
        # One thread: a net this small gains nothing from intra-op threads, and on a shared CPU their
        # barriers made training ~10x slower.
        torch.set_num_threads(1)
        try:
            net = _build_classifier(dataset, recipe)
            loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(train_x, train_y),
                batch_size=recipe["batch_size"],
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
            )
            trainer = L.Trainer(
                accelerator="cpu", devices=1, max_epochs=recipe["epochs"], logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            )  # fmt: skip
            trainer.fit(_ClassifierTask(net, recipe["lr"]), loader)
        finally:
            quiet.setLevel(level)
            torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    net.eval().requires_grad_(False)
    record = dict(
        name=net.name, dataset=dataset, seed=seed, version=CLASSIFIER_VERSION,
        val_accuracy=classifier_accuracy(net, val_x, val_y),
        train_accuracy=classifier_accuracy(net, train_x, train_y),
        num_train=len(train_y), num_val=len(val_y),
        train_seconds=round(seconds, 2), **recipe,
    )  # fmt: skip
    return net, record


def classifier_cache_paths(dataset: str, seed: int = 0, cache_root=None) -> tuple[Path, Path]:
    """``(state-dict .pt, record .json)`` paths of the cached classifier for (dataset, seed)."""
    stem = default_cache_root(cache_root) / "classifiers" / f"{dataset}_cnn_v{CLASSIFIER_VERSION}_seed{seed}"
    return stem.with_suffix(".pt"), stem.with_suffix(".json")



def get_classifier_extractor(dataset: str, seed: int = 0, cache_root=None) -> ClassifierExtractor:
    """The cached classifier extractor for (dataset, seed); trained and cached on the first call.

    The record (held-out accuracy, epochs, seed, feature dim, ...) is attached as ``extractor.record``.
    A file lock beside the cache makes concurrent first calls (a sweep's parallel evaluations, parallel
    tests) train it once: the others wait, then load it.
    """
    weights, record_path = classifier_cache_paths(dataset, seed, cache_root)
    if not (weights.is_file() and record_path.is_file()):  # the record is written last: both = complete
        weights.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(weights.with_suffix(".lock"))):
            if not (weights.is_file() and record_path.is_file()):  # another process may have trained it
                net, record = train_classifier(dataset, seed)
                atomic_write(weights, lambda p: torch.save(net.state_dict(), p))
                atomic_write(record_path, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
                net.record = record
                return net
    record = json.loads(record_path.read_text())
    net = _build_classifier(dataset, record)
    net.load_state_dict(safe_load(weights, "cached classifier", f"delete {weights.parent} to train it again"))
    net.eval().requires_grad_(False)
    net.record = record
    return net


# ------------------------------------------------------------------------------- Inception (ImageNet)


class InceptionExtractor(nn.Module):
    """Images in [0, 1] -> uint8 RGB -> ``net`` (torch-fidelity's ``inception-v3-compat``, which resizes to
    299 itself) -> 2048-d pool features. ``net`` maps uint8 ``[B, 3, H, W]`` to a tuple whose first
    element is ``[B, 2048]``."""

    def __init__(self, net: nn.Module, name: str = "inception", num_features: int = 2048):
        super().__init__()
        self.net, self.name, self.num_features = net, name, num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in [0, 1], C in {1, 3} -> ``[B, 2048]``."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grayscale -> RGB
        # Round like a PNG writer would (torchvision's save_image): the ADM reference stats come from PNGs.
        x = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.net(x)[0]


def get_inception_extractor(weights_path: str | os.PathLike | None) -> InceptionExtractor:
    """The standard FID feature extractor from a local copy of torch-fidelity's Inception weights."""
    if weights_path is None or not Path(weights_path).is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {weights_path!r}. The standard FID needs torch-fidelity's "
            f"`inception-v3-compat` weights, the file {INCEPTION_WEIGHTS_FILE} (published by torch-fidelity "
            f"as {INCEPTION_WEIGHTS_URL}); nothing is downloaded here: put the file at that path, or set "
            f"the config key `{INCEPTION_CONFIG_KEY}` to where it is."
        )
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights_path)
    )
    return InceptionExtractor(net)


def load_reference_stats(npz_path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu [D], sigma [D, D])`` float64 from an ``.npz`` with ``mu`` and ``sigma`` arrays (the layout of
    ADM's ``VIRTUAL_imagenet256_labeled.npz``, whose image array ``arr_0`` is never read)."""
    path = Path(npz_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Reference statistics not found at {str(path)!r}: put ADM's VIRTUAL_imagenet256_labeled.npz "
            f"(openai/guided-diffusion, evaluations/) there, or set the config key `{REFERENCE_CONFIG_KEY}`."
        )
    with np.load(path) as data:
        if "mu" not in data or "sigma" not in data:
            raise KeyError(f"{path} has no 'mu'/'sigma' arrays (found {sorted(data.files)})")
        mu, sigma = torch.from_numpy(data["mu"]).double(), torch.from_numpy(data["sigma"]).double()
    if mu.dim() != 1 or sigma.shape != (len(mu), len(mu)):
        shapes = f"{tuple(mu.shape)}, {tuple(sigma.shape)}"
        raise ValueError(f"{path}: expected mu [D] and sigma [D, D], got {shapes}")
    return mu, sigma
