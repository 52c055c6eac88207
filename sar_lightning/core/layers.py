"""Transformer pieces shared by the FMT and the GPT baseline: pre-norm RMSNorm, SwiGLU, attention.

Blocks take an optional pre-allocated key/value cache slot so the sampler can append a set's keys
and values in place (no ``torch.cat`` growth) and attend to everything cached so far.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sar_lightning.core.attention import attend


def ffn_hidden(dim: int, multiple_of: int) -> int:
    """SwiGLU width: 8d/3 rounded up to ``multiple_of`` (LlamaGen's rule; 256 for the paper sizes)."""
    return multiple_of * math.ceil(int(8 * dim / 3) / multiple_of)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KVSlot:
    """One layer's pre-allocated keys and values ``[B, H, capacity, hd]`` and how many are filled."""

    def __init__(self, batch: int, heads: int, capacity: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v [B, H, m, hd]`` after the filled part; return all filled keys and values."""
        end = self.length + k.shape[2]
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        assert dim % heads == 0, f"width {dim} is not divisible by {heads} heads"
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.resid_drop = nn.Dropout(dropout)

    def _split(self, x):  # (B, T, C) -> (B, H, T, hd)
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def keys_values(self, ctx):
        return self._split(self.wk(ctx)), self._split(self.wv(ctx))

    def attend(self, x, k, v, mask=None):
        """Queries from ``x [B, T, C]`` against ``k, v [B, H, S, hd]``; ``mask``: a ``SetMask``, a boolean
        ``[T, S]`` (True = attend) or None (see ``attention.attend``, which picks the kernel)."""
        q = self._split(self.wq(x))
        p = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, dropout_p=p)  # (B, H, T, hd)
        return self.resid_drop(self.wo(y.transpose(1, 2).flatten(2)))

    def forward(self, x, ctx=None, mask=None, cache: KVSlot | None = None):
        k, v = self.keys_values(x if ctx is None else ctx)
        if cache is not None:
            k, v = cache.append(k, v)
        return self.attend(x, k, v, mask)


def _norm(dim):
    return nn.RMSNorm(dim, eps=1e-6)


class EncoderBlock(nn.Module):
    """Pre-norm self-attention + SwiGLU. Also the GPT block."""

    def __init__(self, dim, heads, hidden, dropout=0.0):
        super().__init__()
        self.norm1, self.attn = _norm(dim), Attention(dim, heads, dropout)
        self.norm2, self.ffn = _norm(dim), SwiGLU(dim, hidden, dropout)

    def forward(self, x, mask=None, cache: KVSlot | None = None):
        x = x + self.attn(self.norm1(x), mask=mask, cache=cache)
        return x + self.ffn(self.norm2(x))


class DecoderBlock(nn.Module):
    """Pre-norm self-attention among queries, cross-attention to the encoder output, SwiGLU."""

    def __init__(self, dim, heads, hidden, dropout=0.0):
        super().__init__()
        self.norm1, self.self_attn = _norm(dim), Attention(dim, heads, dropout)
        self.norm2, self.cross_attn = _norm(dim), Attention(dim, heads, dropout)
        self.norm3, self.ffn = _norm(dim), SwiGLU(dim, hidden, dropout)

    def forward(self, x, memory_kv, self_mask=None, cross_mask=None, cache: KVSlot | None = None):
        """``memory_kv``: this layer's cross-attention keys and values of the encoder output."""
        x = x + self.self_attn(self.norm1(x), mask=self_mask, cache=cache)
        x = x + self.cross_attn.attend(self.norm2(x), *memory_kv, mask=cross_mask)
        return x + self.ffn(self.norm3(x))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) for every linear and embedding weight (docs/method.md section 4: std-0.02 init, no biases)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
