"""Tokenizers: images <-> discrete code grids (pixel quantizer; VQ-VAE; LlamaGen VQ-16 loader).

Training the VQ-VAE (Lightning) lives in ``sar_lightning.data.tokenizers.vq_module``, imported on demand.
"""

from sar_lightning.data.tokenizers.base import PixelQuantizer, Tokenizer
from sar_lightning.data.tokenizers.llamagen import LlamaGenVQ, LlamaGenVQConfig, load_llamagen_vq16
from sar_lightning.data.tokenizers.vqvae import (
    VQVAE,
    VQVAEConfig,
    codebook_usage,
    load_vqvae,
    perplexity,
    save_vqvae,
)

__all__ = [
    "LlamaGenVQ",
    "LlamaGenVQConfig",
    "PixelQuantizer",
    "Tokenizer",
    "VQVAE",
    "VQVAEConfig",
    "codebook_usage",
    "load_llamagen_vq16",
    "load_vqvae",
    "perplexity",
    "save_vqvae",
]
