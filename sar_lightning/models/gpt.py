"""Decoder-only LlamaGen-style GPT baseline: raster next-token prediction with the FMT's blocks.

Input ``[cls, x_0, ..., x_{N-2}]`` under a causal mask; position t predicts cell t. Each token
carries the position embedding of its own cell, as in the FMT. Depth = the FMT's encoder + decoder
layers, so ``gpt-small`` matches ``small`` in width and depth. Any order other than raster with
all-ones intervals raises.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sar_lightning.core.attention import SetMask
from sar_lightning.core.layers import EncoderBlock, KVSlot, ffn_hidden
from sar_lightning.models.base import ModelConfig, SARModel


class GPT(SARModel):
    kind = "gpt"
    required_training = {"train.order": "raster", "train.schedule": "ar"}

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        if cfg.decoder_attn != "block_causal":
            raise ValueError("the GPT baseline is causal; decoder_attn must stay 'block_causal'")
        hidden = ffn_hidden(cfg.dim, cfg.ffn_multiple)
        self.blocks = nn.ModuleList(EncoderBlock(cfg.dim, cfg.heads, hidden, cfg.dropout)
                                    for _ in range(cfg.enc_layers + cfg.dec_layers))
        self._init()

    @classmethod
    def training_refusal(cls, order: str, schedule: str) -> str | None:
        if order != "raster" or schedule != "ar":
            return "the GPT baseline is raster next-token: it needs train.order=raster and train.schedule=ar"
        return None

    @classmethod
    def refusal(cls, order, intervals: Sequence[int], attn: str, decoder_attn: str = "block_causal") -> str | None:
        if attn != "causal":
            return "the GPT baseline has no 'full' inference attention (attn must be 'causal')"
        raster = order == "raster" if isinstance(order, str) else \
            bool((order == torch.arange(order.shape[1], device=order.device)).all())
        if not raster or any(int(n) != 1 for n in intervals):
            return ("the GPT baseline does raster next-token prediction only: "
                    "order must be 'raster' and intervals all ones (K = N)")
        return None

    def logits_through(self, tokens, labels, order, intervals: Sequence[int], k: int):
        """Logits of cells 0..k-1 ``[B, k, V]`` from ``[cls, x_0, ..., x_{k-2}]``."""
        self.check_request(order, intervals, "causal")
        cells = order[:, : k - 1]
        x = torch.cat([self.class_tokens(labels), self.embed_tokens(tokens[:, : k - 1], cells)], 1)
        pos = torch.arange(k, device=x.device)
        causal = SetMask(pos, pos, "le")  # plain causal: attention runs without a mask tensor
        for blk in self.blocks:
            x = blk(x, mask=causal)
        return self.head(self.norm(x))

    def new_cache(self, batch: int, intervals: Sequence[int], dtype=torch.float32, device=None) -> dict:
        hd = self.config.dim // self.config.heads
        return {"blocks": [KVSlot(batch, self.config.heads, self.num_tokens, hd, dtype, device)
                           for _ in self.blocks]}

    def step(self, cache: dict, labels, new_tokens, new_cells, target_cells):
        """Feed the previous token (cls first); return the next cell's logits ``[B, 1, V]``."""
        if target_cells.shape[1] != 1:
            raise ValueError("the GPT baseline predicts one token per step (intervals all ones)")
        x = self.class_tokens(labels) if new_tokens is None else self.embed_tokens(new_tokens, new_cells)
        for blk, slot in zip(self.blocks, cache["blocks"]):
            x = blk(x, cache=slot)  # one new row: causal = everything cached
        return self.head(self.norm(x))
