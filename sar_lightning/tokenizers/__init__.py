"""Tokenizers: images <-> discrete code grids (pixel quantizer; VQ-VAE; LlamaGen VQ-16 loader)."""

from .base import PixelQuantizer, Tokenizer

__all__ = ["PixelQuantizer", "Tokenizer"]
