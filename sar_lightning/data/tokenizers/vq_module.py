"""Training the VQ-VAE: a thin LightningModule, ``train_vqvae`` (Trainer + TensorBoard) and evaluation.

The science lives in ``vqvae.py``; this module only wires it to Lightning, the logger and files.
``out_dir`` receives ``vqvae.pt`` + ``vqvae.json`` (the tokenizer) and ``tb/`` (TensorBoard curves).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset
from torchvision.utils import make_grid

from sar_lightning.data.tokenizers.vqvae import (
    VQVAE,
    VQVAEConfig,
    codebook_usage,
    load_vqvae,
    perplexity,
    save_vqvae,
)

__all__ = ["VQVAEModule", "evaluate_vqvae", "load_vqvae", "train_vqvae"]


def _images(batch):  # TensorDataset yields 1-tuples; labelled loaders yield (images, labels)
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class VQVAEModule(L.LightningModule):
    """Reconstruction MSE + quantizer loss; logs ``vq/*`` while training and ``val/vq/*`` on validation."""

    def __init__(self, config: VQVAEConfig, lr: float = 1e-3, grid_images: int = 16):
        super().__init__()
        self.save_hyperparameters({**asdict(config), "lr": lr})  # -> hparams.yaml beside the curves
        self.vqvae = VQVAE(config)
        self.lr, self.grid_images = lr, grid_images
        self._val_counts = None

    def training_step(self, batch, batch_idx):
        x = _images(batch)
        out = self.vqvae(x)
        recon = F.mse_loss(out.recon, x)
        loss = recon + out.vq_loss
        K = self.vqvae.vocab_size
        self.log_dict({"vq/recon_loss": recon, "vq/commit_loss": out.commit_loss, "train/loss": loss,
                       "vq/usage": codebook_usage(out.codes, K), "vq/perplexity": perplexity(out.codes, K)})
        return loss

    def on_validation_epoch_start(self):
        self._val_counts = torch.zeros(self.vqvae.vocab_size, dtype=torch.long, device=self.device)

    def validation_step(self, batch, batch_idx):
        x = _images(batch)
        codes = self.vqvae.encode(x)
        recon = self.vqvae.decode(codes)
        self._val_counts += torch.bincount(codes.flatten(), minlength=self.vqvae.vocab_size)
        self.log("val/vq/recon_loss", F.mse_loss(recon, x), batch_size=x.shape[0])
        if batch_idx == 0:
            self._log_grid(x[: self.grid_images], recon[: self.grid_images])

    def on_validation_epoch_end(self):
        # usage over the whole validation set: one batch can miss codes the set uses
        c = self._val_counts
        p = c.float() / c.sum().clamp_min(1)
        self.log_dict({"val/vq/usage": c.gt(0).float().mean(),
                       "val/vq/perplexity": (-(p * p.clamp_min(1e-12).log()).sum()).exp()})

    def _log_grid(self, originals, recons):
        if not isinstance(self.logger, TensorBoardLogger):
            return
        grid = make_grid(torch.cat([originals, recons]).cpu(), nrow=originals.shape[0], pad_value=0.5)
        self.logger.experiment.add_image("vq/reconstructions", grid, self.global_step)  # originals on top

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


@torch.no_grad()
def evaluate_vqvae(tokenizer: VQVAE, images: torch.Tensor, batch_size: int = 256) -> dict:
    """Round-trip metrics on ``images [N, C, H, W]``: ``recon_mse`` (of ``decode(encode(x))``),
    ``usage`` (fraction of codes used over all N images) and ``perplexity``."""
    sq, codes = 0.0, []
    for x in images.split(batch_size):
        c = tokenizer.encode(x)
        sq += F.mse_loss(tokenizer.decode(c), x, reduction="sum").item()
        codes.append(c)
    codes = torch.cat(codes)
    K = tokenizer.vocab_size
    return {"recon_mse": sq / images.numel(), "usage": codebook_usage(codes, K), "perplexity": perplexity(codes, K)}


def train_vqvae(
    images_train: torch.Tensor,
    images_val: torch.Tensor,
    config: VQVAEConfig,
    out_dir: str | Path,
    max_steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    val_every: int | None = None,
    seed: int = 0,
    accelerator: str = "cpu",
    progress: bool = False,
) -> tuple[VQVAE, dict]:
    """Train a VQ-VAE on ``images_train [N, C, H, W]`` in [0, 1] for ``max_steps`` optimizer steps.

    Validates on ``images_val`` every ``val_every`` steps (default: 4 times per run), saves the
    tokenizer to ``out_dir/vqvae.pt`` (+ ``vqvae.json``) and returns ``(tokenizer, metrics)`` with
    ``val_recon_mse``, ``val_usage``, ``val_perplexity`` after training, ``val_recon_mse_init`` before
    it, ``train_window_usage`` (codes used over the last restart window) and ``steps``.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    out_dir = Path(out_dir)
    L.seed_everything(seed, verbose=False)
    module = VQVAEModule(config, lr=lr)
    init_mse = evaluate_vqvae(module.vqvae, images_val)["recon_mse"]  # no dropout/BN: mode irrelevant
    gen = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(TensorDataset(images_train), batch_size=min(batch_size, len(images_train)),
                          shuffle=True, drop_last=True, generator=gen)
    val_dl = DataLoader(TensorDataset(images_val), batch_size=256)
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_steps=max_steps, max_epochs=-1,
        logger=TensorBoardLogger(out_dir, name="tb", version=""),
        val_check_interval=val_every or max(1, max_steps // 4), check_val_every_n_epoch=None,
        num_sanity_val_steps=0, log_every_n_steps=max(1, min(50, max_steps // 10, len(train_dl))),
        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
    )
    trainer.fit(module, train_dl, val_dl)
    tokenizer = module.vqvae.cpu().eval()
    save_vqvae(tokenizer, out_dir / "vqvae.pt")
    final = evaluate_vqvae(tokenizer, images_val)
    metrics = {f"val_{k}": v for k, v in final.items()}
    metrics.update(val_recon_mse_init=init_mse, train_window_usage=tokenizer.quantizer.window_usage(),
                   steps=trainer.global_step)
    return tokenizer, metrics
