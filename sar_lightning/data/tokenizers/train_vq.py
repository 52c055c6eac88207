"""Train a VQ-VAE tokenizer on a registered data set: ``python -m sar_lightning train-vq out=FOLDER [key=value ...]``.

    python -m sar_lightning train-vq data=fashion_mnist out=data/tokenizers/fashion_mnist_vq7

Trains on the data set's train split, validates on its val split, prints the reconstruction MSE and
the codebook usage, and writes ``<out>/vqvae.pt`` (+ ``vqvae.json``, ``metrics.json``, ``tb/``). An
existing ``vqvae.pt`` is reported and kept (delete it to retrain). ``grid`` picks the code grid:
28x28 images -> 7x7 (two downsamplings) or 14x14 (one).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING

from sar_lightning.data.datasets import DATASETS, dataset_info, load_images
from sar_lightning.data.tokenizers.vq_module import evaluate_vqvae, train_vqvae
from sar_lightning.data.tokenizers.vqvae import VQVAEConfig, load_vqvae


def vq_config(data: str, grid: int, codebook_size: int, hidden: int, code_dim: int) -> VQVAEConfig:
    """The VQ-VAE of ``data``'s image shape whose code grid is ``grid x grid``."""
    info = dataset_info(data)
    size = info["height"]
    if info["width"] != size or size % grid or (size // grid) & (size // grid - 1):
        raise ValueError(f"grid={grid}: {data} images are {size}x{info['width']}; the grid must be the "
                         "image size divided by a power of two")
    num_down = (size // grid).bit_length() - 1
    return VQVAEConfig(channels=info["channels"], image_size=(size, size), num_down=num_down, hidden=hidden,
                       codebook_size=codebook_size, code_dim=code_dim)


def train_vq(data: str, out: str | Path, *, grid: int = 7, codebook_size: int = 256, hidden: int = 32,
             code_dim: int = 16, max_steps: int = 1000, batch_size: int = 128, lr: float = 1e-3,
             limit: int | None = None, seed: int = 0, accelerator: str = "cpu", progress: bool = False) -> dict:
    """Train (or find) ``<out>/vqvae.pt``; returns the metrics (``val_recon_mse``, ``val_usage``, ...)."""
    out = Path(out)
    val_x = load_images(data, "val")[0][:limit]  # [:None] keeps all
    if (out / "vqvae.pt").exists():
        tok = load_vqvae(out)
        metrics = {f"val_{k}": v for k, v in evaluate_vqvae(tok, val_x).items()}
        print(f"[train_vq] {out / 'vqvae.pt'} exists; skipping training (delete it to retrain)")
        return metrics
    train_x = load_images(data, "train")[0][:limit]
    cfg = vq_config(data, grid, codebook_size, hidden, code_dim)
    start = time.time()
    _, metrics = train_vqvae(train_x, val_x, cfg, out, max_steps, batch_size=batch_size, lr=lr, seed=seed,
                             accelerator=accelerator, progress=progress)
    metrics["seconds"] = round(time.time() - start, 1)
    (out / "metrics.json").write_text(json.dumps({"data": data, "num_train": len(train_x), **metrics}, indent=1))
    return metrics


@dataclass
class TrainVQArgs:
    """``python -m sar_lightning train-vq`` keys."""

    data: str = "fashion_mnist"  # a registered data set
    out: str = MISSING  # folder for vqvae.pt, vqvae.json, metrics.json and tb/
    grid: int = 7  # code grid side (28x28 images: 7 or 14)
    codebook_size: int = 256
    hidden: int = 32  # conv channels
    code_dim: int = 16
    max_steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    limit: int | None = None  # train on the first N images only (tests)
    seed: int = 0
    accelerator: str = "cpu"
    threads: int = 0  # torch.set_num_threads when > 0
    progress: bool = False  # show Lightning's progress bar


def train_vq_command(a: TrainVQArgs) -> int:
    """``train_vq`` with the command's keys; prints the validation metrics."""
    if a.data not in DATASETS:
        raise ValueError(f"data={a.data!r} is not a registered data set; choose one of: {', '.join(sorted(DATASETS))}")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    m = train_vq(a.data, a.out, grid=a.grid, codebook_size=a.codebook_size, hidden=a.hidden, code_dim=a.code_dim,
                 max_steps=a.max_steps, batch_size=a.batch_size, lr=a.lr, limit=a.limit, seed=a.seed,
                 accelerator=a.accelerator, progress=a.progress)
    print(f"[train_vq] {a.data} val: recon MSE {m['val_recon_mse']:.5f}, codebook usage {m['val_usage']:.1%} "
          f"of {a.codebook_size}, perplexity {m['val_perplexity']:.1f}"
          + (f"; {m['seconds']:.0f} s" if "seconds" in m else ""))
    return 0
