"""Tokenizers: images <-> discrete code grids (pixel quantizer; VQ-VAE; LlamaGen VQ-16 loader).

Training the VQ-VAE (Lightning) lives in ``sar_lightning.tokenizers.vq_module``, imported on demand.
"""

from .base import PixelQuantizer, Tokenizer
from .llamagen import LlamaGenVQ, LlamaGenVQConfig, load_llamagen_vq16
from .vqvae import VQVAE, VQVAEConfig, codebook_usage, load_vqvae, perplexity, save_vqvae

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
