"""The Fully Masked Transformer (FMT, docs/method.md section 4).

The encoder reads ``[cls, x_order[0], ...]`` (the last set dropped) under a block-causal mask; the
decoder's queries are a shared learned embedding plus the target cell's position embedding. The
decoder runs in generation order (queries gathered by ``order``), so the masks depend only on the
batch's intervals and broadcast over the batch; logits are scattered back to raster layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sar_lightning.core.intervals import validate_intervals
from sar_lightning.core.layers import DecoderBlock, EncoderBlock, KVSlot, ffn_hidden
from sar_lightning.core.masks import (
    cached_self_mask,
    decoder_cross_mask,
    decoder_self_mask,
    encoder_mask,
    set_ids,
    set_masks,
)
from sar_lightning.models.base import ModelConfig, SARModel


class FullyMaskedTransformer(SARModel):
    kind = "fmt"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        hidden = ffn_hidden(cfg.dim, cfg.ffn_multiple)
        self.query = nn.Parameter(torch.zeros(cfg.dim))
        self.encoder = nn.ModuleList(EncoderBlock(cfg.dim, cfg.heads, hidden, cfg.dropout)
                                     for _ in range(cfg.enc_layers))
        self.enc_norm = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.decoder = nn.ModuleList(DecoderBlock(cfg.dim, cfg.heads, hidden, cfg.dropout)
                                     for _ in range(cfg.dec_layers))
        self._init()
        nn.init.normal_(self.query, std=0.02)

    def logits_through(self, tokens, labels, order, intervals: Sequence[int], k: int):
        """Logits of sets 1..k in generation order, ``[B, c_k, V]``, recomputed from scratch.

        The encoder sees cls + sets < k; the decoder runs the queries of sets <= k. With k = K this is
        the training forward pass; the sampler without a KV cache calls it once per step.
        """
        sizes = list(intervals[:k])
        n_ctx, n_q = sum(sizes[:-1]), sum(sizes)
        # m_e [1 + n_ctx, 1 + n_ctx], m_ds [n_q, n_q], m_dc [n_q, 1 + n_ctx]: cls + sets < k as context
        masks = set_masks(sizes, self.decoder_attn, tokens.device)
        return self._encode_decode(tokens, labels, order[:, :n_ctx], order[:, :n_q], *masks)

    def _encode_decode(self, tokens, labels, ctx_cells, query_cells, m_e, m_ds, m_dc):
        """Logits ``[B, Q, V]`` of the queries of ``query_cells [B, Q]``: the encoder reads cls + the tokens of
        ``ctx_cells [B, S]`` under ``m_e [1 + S, 1 + S]``, the decoder attends itself under ``m_ds [Q, Q]`` and
        the encoder's output under ``m_dc [Q, 1 + S]`` (``SetMask`` rules or boolean tensors)."""
        x = torch.cat([self.class_tokens(labels), self.embed_tokens(tokens.gather(1, ctx_cells), ctx_cells)], 1)
        for blk in self.encoder:
            x = blk(x, mask=m_e)  # (B, 1 + S, C)
        memory = self.enc_norm(x)
        q = self.query + self.pos_emb[query_cells]  # (B, Q, C)
        for blk in self.decoder:
            q = blk(q, blk.cross_attn.keys_values(memory), self_mask=m_ds, cross_mask=m_dc)
        return self.head(self.norm(q))

    def loss_from_set_ids(self, tokens, labels, order, s):
        """``loss`` with the intervals given as set ids ``s [N]`` (a tensor): every shape is fixed, so a
        compiled copy never recompiles when the intervals change. The encoder also reads the last set,
        which no query can see (cross-attention needs ``e < s``), so the logits are those of ``loss``."""
        e = torch.cat([s.new_zeros(1), s])  # (1 + N,) cls has set id 0
        m_e, m_dc = encoder_mask(e), decoder_cross_mask(s, e)  # the rules of masks.py, as tensors
        m_ds = decoder_self_mask(s, self.decoder_attn)
        logits = self._encode_decode(tokens, labels, order, order, m_e, m_ds, m_dc)  # (B, N, V)
        targets = tokens.gather(1, order)
        k = s.max()
        keep = (s == k) if self.decoder_attn == "full" else \
            (s >= 2) | (k < 2) if not self.config.first_set_loss else torch.ones_like(s, dtype=torch.bool)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view_as(targets)
        weight = keep.to(ce.dtype).expand_as(ce)
        acc = ((logits.argmax(-1) == targets).float() * weight).sum() / weight.sum()
        return (ce * weight).sum() / weight.sum(), acc

    def compiled_loss(self, **compile_kwargs):
        step = torch.compile(self.loss_from_set_ids, **compile_kwargs)

        def loss(tokens, labels, order, intervals):
            intervals = validate_intervals(intervals, self.num_tokens)
            return step(tokens, labels, order, set_ids(intervals, tokens.device))

        return loss

    # --- KV-cached sampling: one call per set, never recomputing a finished set ---

    def new_cache(self, batch: int, intervals: Sequence[int], dtype=torch.float32, device=None) -> dict:
        cfg, hd = self.config, self.config.dim // self.config.heads
        ctx = 1 + self.num_tokens - int(intervals[-1])  # cls + every set but the last
        slot = lambda cap: KVSlot(batch, cfg.heads, cap, hd, dtype, device)
        return {"enc": [slot(ctx) for _ in self.encoder], "mem": [slot(ctx) for _ in self.decoder],
                "dec": [slot(self.num_tokens) for _ in self.decoder]}

    def step(self, cache: dict, labels, new_tokens, new_cells, target_cells):
        """Append set k-1 (cls when ``new_tokens`` is None) to the caches, then decode set k's queries.

        ``new_tokens, new_cells [B, m]``, ``target_cells [B, n]`` -> logits ``[B, n, V]``. Block-causal
        masks make the new rows see everything cached plus their own set, so no mask is needed.
        """
        x = self.class_tokens(labels) if new_tokens is None else self.embed_tokens(new_tokens, new_cells)
        for blk, slot in zip(self.encoder, cache["enc"]):
            x = blk(x, cache=slot)
        memory = self.enc_norm(x)
        for blk, slot in zip(self.decoder, cache["mem"]):
            slot.append(*blk.cross_attn.keys_values(memory))
        q, n = self.query + self.pos_emb[target_cells], target_cells.shape[1]
        for blk, mem, slot in zip(self.decoder, cache["mem"], cache["dec"]):
            self_mask = cached_self_mask(self.decoder_attn, slot.length, n, q.device)
            memory_kv = (mem.k[:, :, : mem.length], mem.v[:, :, : mem.length])
            q = blk(q, memory_kv, self_mask=self_mask, cache=slot)
        return self.head(self.norm(q))
