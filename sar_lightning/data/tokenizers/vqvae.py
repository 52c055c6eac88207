"""A small VQ-VAE tokenizer: conv encoder -> nearest codebook entry -> conv decoder.

Images ``[B, C, H, W]`` in [0, 1] become codes ``[B, h * w]`` with ``h = H / 2**num_down``. The
codebook is trained either by its loss (``codebook_update="loss"``: ``|sg[z] - e|^2``) or by an
exponential moving average of the encoder outputs assigned to each code (``"ema"``); both add the
commitment loss ``beta * |z - sg[e]|^2`` and pass gradients to the encoder straight through the
quantizer. With ``l2_norm`` (default) encoder outputs and codes are compared on the unit sphere,
as in LlamaGen/ViT-VQGAN: the nearest code is the most cosine-similar one, which keeps code norms
from drifting apart and leaves fewer codes dead. Codes unused over ``restart_window`` training
forwards are re-initialised from the current batch's encoder outputs (dead-code restarts).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sar_lightning.data.tokenizers.base import Tokenizer
from sar_lightning.files import FileError, atomic_write, atomic_write_text, safe_load

CODEBOOK_UPDATES = ("loss", "ema")


@dataclass
class VQVAEConfig:
    channels: int = 1  # image channels
    image_size: tuple[int, int] = (8, 8)
    num_down: int = 1  # stride-2 downsamplings: 8x8 -> 4x4; 28x28 -> 7x7 with 2
    hidden: int = 32  # conv channels
    num_res_blocks: int = 1  # at the lowest resolution (plus one per up/downsampling)
    codebook_size: int = 32
    code_dim: int = 8
    l2_norm: bool = True
    beta: float = 0.25  # commitment weight
    codebook_update: str = "loss"  # loss | ema
    ema_decay: float = 0.99
    restart_window: int = 50  # training forwards between dead-code checks; 0 disables restarts
    restart_threshold: int = 1  # a code used fewer times than this over the window is dead

    def __post_init__(self):
        self.image_size = tuple(int(s) for s in self.image_size)
        if len(self.image_size) != 2:
            raise ValueError(f"vqvae image_size must be (H, W), got {self.image_size}")
        for name in ("channels", "hidden", "code_dim", "num_res_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"vqvae {name} must be >= 1, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ValueError(f"vqvae codebook_size must be >= 2, got {self.codebook_size}")
        if self.num_down < 0:
            raise ValueError(f"vqvae num_down must be >= 0, got {self.num_down}")
        f = 2**self.num_down
        if any(s < f or s % f for s in self.image_size):
            raise ValueError(f"vqvae image_size {self.image_size} must be divisible by 2**num_down = {f}")
        if self.codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(f"vqvae codebook_update {self.codebook_update!r} is not one of {CODEBOOK_UPDATES}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"vqvae ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.beta < 0:
            raise ValueError(f"vqvae beta must be >= 0, got {self.beta}")
        if self.restart_window < 0 or self.restart_threshold < 1:
            raise ValueError("vqvae restart_window must be >= 0 and restart_threshold >= 1")

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(s // 2**self.num_down for s in self.image_size)

    @classmethod
    def from_dict(cls, d: dict) -> VQVAEConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown vqvae config keys {sorted(unknown)}; valid: {[f.name for f in fields(cls)]}")
        return cls(**d)


def codebook_usage(codes: torch.Tensor, vocab_size: int) -> float:
    """Fraction of the ``vocab_size`` codes that occur in ``codes`` (any shape)."""
    return torch.bincount(codes.flatten(), minlength=vocab_size).gt(0).float().mean().item()


def perplexity(codes: torch.Tensor, vocab_size: int) -> float:
    """``exp(entropy)`` of the code histogram of ``codes``: 1 = one code, ``vocab_size`` = uniform."""
    p = torch.bincount(codes.flatten(), minlength=vocab_size).float()
    p = p / p.sum().clamp_min(1)
    return math.exp(-(p * p.clamp_min(1e-12).log()).sum().item())


class QuantOut(NamedTuple):
    z_q: torch.Tensor  # (B, D, h, w), straight-through: gradients flow to z
    codes: torch.Tensor  # (B, h*w)
    loss: torch.Tensor  # codebook (loss mode) + beta * commitment
    commit: torch.Tensor  # |z - sg[e]|^2, unweighted, for logging


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with straight-through gradients, EMA option and dead-code restarts."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.size, self.dim = cfg.codebook_size, cfg.code_dim
        self.ema = cfg.codebook_update == "ema"
        self.embedding = nn.Embedding(self.size, self.dim)
        nn.init.normal_(self.embedding.weight)
        if self.ema:  # the codebook is a running mean of assigned encoder outputs, not trained by SGD
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_count", torch.ones(self.size))
            self.register_buffer("ema_sum", self.embedding.weight.detach().clone())
        # usage over the current restart window; not checkpointed (a fresh window after loading)
        self.register_buffer("window_counts", torch.zeros(self.size, dtype=torch.long), persistent=False)
        self.register_buffer("window_steps", torch.zeros((), dtype=torch.long), persistent=False)

    def codebook(self) -> torch.Tensor:  # (K, D), on the unit sphere when l2_norm
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.cfg.l2_norm else w

    def _flat(self, z):  # (B, D, h, w) -> (B*h*w, D), raster order per image
        z = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        return F.normalize(z, dim=-1) if self.cfg.l2_norm else z

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:  # (M, D) -> (M,)
        e = self.codebook()
        d = z_flat.pow(2).sum(1, keepdim=True) - 2 * z_flat @ e.t() + e.pow(2).sum(1)  # (M, K)
        return d.argmin(1)

    def embed(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``codes [B, h*w]`` -> code vectors ``[B, D, h, w]``."""
        h, w = grid
        return self.codebook()[codes].view(-1, h, w, self.dim).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> QuantOut:  # z: (B, D, h, w)
        B, _, h, w = z.shape
        z_flat = self._flat(z)  # (M, D)
        if self.training and self.cfg.restart_window and self.window_steps >= self.cfg.restart_window:
            # before the lookup: editing the codebook after it would break this step's backward
            self.restart_dead_codes(z_flat.detach())
        codes = self.nearest(z_flat.detach())
        e = self.codebook()[codes]  # (M, D)
        commit = F.mse_loss(z_flat, e.detach())
        loss = self.cfg.beta * commit
        if self.training:
            if self.ema:
                self._ema_update(z_flat.detach(), codes)
            else:
                loss = loss + F.mse_loss(e, z_flat.detach())
            self._track(codes)
        z_q = z_flat + (e - z_flat).detach()  # straight-through estimator
        return QuantOut(z_q.view(B, h, w, self.dim).permute(0, 3, 1, 2), codes.view(B, h * w), loss, commit)

    @torch.no_grad()
    def _ema_update(self, z_flat, codes):
        # Not all-reduced across processes: single-process training (this project's VQ runs are small).
        d = self.cfg.ema_decay
        self.ema_count.mul_(d).add_(torch.bincount(codes, minlength=self.size).float(), alpha=1 - d)
        self.ema_sum.mul_(d).index_add_(0, codes, z_flat.to(self.ema_sum.dtype), alpha=1 - d)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + self.size * 1e-5) * n  # Laplace smoothing: no divide by 0
        self.embedding.weight.copy_(self.ema_sum / count[:, None])

    @torch.no_grad()
    def _track(self, codes):
        self.window_counts += torch.bincount(codes, minlength=self.size)
        self.window_steps += 1

    def window_usage(self) -> float:
        """Fraction of codes used since the last restart check (training forwards only)."""
        return self.window_counts.gt(0).float().mean().item()

    @torch.no_grad()
    def restart_dead_codes(self, z_flat: torch.Tensor) -> int:
        """Re-initialise codes used fewer than ``restart_threshold`` times in the window from
        randomly drawn rows of ``z_flat [M, D]`` (recent encoder outputs), plus a little noise so
        that codes restarted from the same row part ways. Resets the window; returns the count."""
        dead = (self.window_counts < self.cfg.restart_threshold).nonzero().squeeze(1)
        self.window_counts.zero_()
        self.window_steps.zero_()
        if dead.numel() == 0:
            return 0
        pick = torch.randint(0, z_flat.shape[0], (dead.numel(),), device=z_flat.device)
        new = z_flat[pick] + 0.01 * z_flat.std() * torch.randn_like(z_flat[pick])
        self.embedding.weight[dead] = new.to(self.embedding.weight.dtype)
        if self.ema:
            self.ema_count[dead] = 1.0
            self.ema_sum[dead] = new.to(self.ema_sum.dtype)
        return dead.numel()


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def _encoder(cfg: VQVAEConfig) -> nn.Sequential:
    layers = [nn.Conv2d(cfg.channels, cfg.hidden, 3, padding=1)]
    for _ in range(cfg.num_down):  # kernel 4, stride 2, pad 1: exactly halves even sizes (28->14->7)
        layers += [ResBlock(cfg.hidden), nn.Conv2d(cfg.hidden, cfg.hidden, 4, stride=2, padding=1)]
    layers += [ResBlock(cfg.hidden) for _ in range(cfg.num_res_blocks)]
    layers += [nn.SiLU(), nn.Conv2d(cfg.hidden, cfg.code_dim, 1)]
    return nn.Sequential(*layers)


def _decoder(cfg: VQVAEConfig) -> nn.Sequential:
    layers = [nn.Conv2d(cfg.code_dim, cfg.hidden, 3, padding=1)]
    layers += [ResBlock(cfg.hidden) for _ in range(cfg.num_res_blocks)]
    for _ in range(cfg.num_down):  # nearest upsampling + conv avoids transposed-conv checkerboards
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cfg.hidden, cfg.hidden, 3, padding=1),
                   ResBlock(cfg.hidden)]
    layers += [nn.SiLU(), nn.Conv2d(cfg.hidden, cfg.channels, 3, padding=1)]
    return nn.Sequential(*layers)


class VQVAEOutput(NamedTuple):
    recon: torch.Tensor  # (B, C, H, W), unclamped, in [0, 1] units
    codes: torch.Tensor  # (B, h*w)
    vq_loss: torch.Tensor  # quantizer loss to add to the reconstruction loss
    commit_loss: torch.Tensor  # unweighted commitment term, for logging


class VQVAE(Tokenizer):
    """The VQ-VAE as a ``Tokenizer``: ``encode [B,C,H,W] -> [B,h*w]``, ``decode`` back, ``forward`` to train."""

    name = "vqvae"

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.config = cfg
        self.vocab_size, self.channels = cfg.codebook_size, cfg.channels
        self.image_size, self.grid = cfg.image_size, cfg.grid
        self.encoder, self.decoder = _encoder(cfg), _decoder(cfg)
        self.quantizer = VectorQuantizer(cfg)

    def _check(self, images):
        if tuple(images.shape[1:]) != (self.channels, *self.image_size):
            raise ValueError(f"vqvae expects images [B, {self.channels}, {self.image_size[0]}, "
                             f"{self.image_size[1]}], got {list(images.shape)}")

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, D, h, w)
        self._check(images)
        return self.encoder(images * 2 - 1)  # centred input

    def decode_latent(self, z_q: torch.Tensor) -> torch.Tensor:  # (B, D, h, w) -> (B, C, H, W)
        return (self.decoder(z_q) + 1) / 2

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        q = self.quantizer(self.encode_latent(images))
        return VQVAEOutput(self.decode_latent(q.z_q), q.codes, q.loss, q.commit)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, h*w)
        z = self.encode_latent(images)
        return self.quantizer.nearest(self.quantizer._flat(z)).view(z.shape[0], -1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, h*w) -> (B, C, H, W)
        return self.decode_latent(self.quantizer.embed(codes, self.grid)).clamp(0, 1)


def save_vqvae(model: VQVAE, path: str | Path) -> Path:
    """Write ``{"config", "state_dict"}`` to ``path`` (a .pt file) and the config as JSON beside it.

    Both are written atomically: an interrupted save never leaves a file that a re-run would skip on."""
    path = Path(path)
    cfg = asdict(model.config)
    cfg["image_size"] = list(cfg["image_size"])
    atomic_write(path, lambda tmp: torch.save({"config": cfg, "state_dict": model.state_dict()}, tmp))
    atomic_write_text(path.with_suffix(".json"), json.dumps(cfg, indent=2) + "\n")
    return path


def load_vqvae(path: str | Path, device: str | torch.device = "cpu") -> VQVAE:
    """A VQ-VAE saved by ``save_vqvae``; ``path`` is the .pt file or a folder holding ``vqvae.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / "vqvae.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a VQ-VAE checkpoint is written by "
                                "sar_lightning.data.tokenizers.vq_module.train_vqvae (out_dir/vqvae.pt)")
    ckpt = safe_load(path, "VQ-VAE checkpoint", "train one with `make vq-fashion` or train_vq", map_location=device)
    if not isinstance(ckpt, dict) or not {"config", "state_dict"} <= set(ckpt):
        raise FileError(f"{path} is not a VQ-VAE checkpoint of this suite (no config / state_dict)")
    model = VQVAE(VQVAEConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()
