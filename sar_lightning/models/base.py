"""The model contract: ``ModelConfig`` (every model knob) and ``SARModel``, what every model family shares.

``SARModel`` holds the embeddings, the head, label dropout, the raster scatter and the loss; a family (the FMT
in ``fmt.py``, the GPT baseline in ``gpt.py``) adds its forward, its KV-cached step and its refusal rules.
The registry (``registry.py``) knows the families and sizes; no family imports another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sar_lightning.core.intervals import validate_intervals
from sar_lightning.core.layers import init_weights
from sar_lightning.core.masks import DECODER_MODES, loss_positions
from sar_lightning.core.sampling import ATTN_MODES


@dataclass
class ModelConfig:
    kind: str = "fmt"  # a family of models.registry KINDS (fmt | gpt)
    dim: int = 64
    heads: int = 4
    enc_layers: int = 2  # the GPT baseline has enc_layers + dec_layers blocks
    dec_layers: int = 2
    ffn_multiple: int = 64
    vocab_size: int = 17
    num_classes: int = 10
    height: int = 8
    width: int = 8
    decoder_attn: str = "block_causal"
    first_set_loss: bool = True
    class_dropout: float = 0.1  # labels -> null class, for classifier-free guidance
    dropout: float = 0.0

    def __post_init__(self):
        if self.decoder_attn not in DECODER_MODES:
            raise ValueError(f"decoder_attn {self.decoder_attn!r} is not one of {', '.join(DECODER_MODES)}")
        for name in ("dim", "heads", "ffn_multiple", "vocab_size", "num_classes", "height", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"model {name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"model dim {self.dim} must be divisible by heads {self.heads}")
        if not 0.0 <= self.class_dropout < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("class_dropout and dropout must lie in [0, 1)")


def sar_loss(logits, targets, intervals: Sequence[int], first_set_loss=True, last_set_only=False):
    """Mean cross-entropy and token accuracy over the sets that carry loss.

    ``logits [B, T, V]`` and ``targets [B, T]`` in generation order (T = N, or a prefix of whole sets).
    """
    keep = loss_positions(intervals, first_set_loss, last_set_only, device=logits.device)[: logits.shape[1]]
    lg, tg = logits[:, keep], targets[:, keep]
    loss = F.cross_entropy(lg.flatten(0, 1).float(), tg.flatten())
    acc = (lg.argmax(-1) == tg).float().mean()
    return loss, acc


class SARModel(nn.Module):
    """What the FMT and the GPT baseline share: embeddings, head, label dropout, raster scatter, loss.

    The sampler's contract (``sampling.generate`` uses nothing else): a model offers its grid
    (``height``, ``width``, ``num_tokens``), ``null_class`` (the unconditional label for guidance) and
    ``decoder_attn``; ``refusal`` (which requests it cannot serve, and why); ``logits_through`` (the
    uncached forward over sets 1..k); ``new_cache`` and ``step`` (the cached forward, one set per call).
    A model family adds its own ``refusal`` and ``training_refusal`` rules, nowhere else.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.height, self.width = cfg.height, cfg.width
        self.num_tokens = cfg.height * cfg.width
        self.null_class = cfg.num_classes  # the extra class-embedding row
        self.decoder_attn = cfg.decoder_attn
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.cls_emb = nn.Embedding(cfg.num_classes + 1, cfg.dim)
        self.pos_emb = nn.Parameter(torch.zeros(self.num_tokens, cfg.dim))  # one per grid cell
        self.norm = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def _init(self):
        init_weights(self)
        nn.init.normal_(self.pos_emb, std=0.02)

    def class_tokens(self, labels):  # (B,) -> (B, 1, C); a pure lookup (label dropout: ``drop_labels``)
        return self.cls_emb(labels)[:, None]

    def drop_labels(self, labels, generator: torch.Generator):
        """Training's label dropout: each label becomes ``null_class`` with probability ``class_dropout``.

        The mask is drawn on the CPU from ``generator`` (the trainer seeds it by run seed, rank and step, so
        a resumed run drops the labels the uninterrupted one dropped); the global RNG is never touched.
        """
        if self.config.class_dropout <= 0:
            return labels
        drop = torch.rand(labels.shape, generator=generator) < self.config.class_dropout
        return torch.where(drop.to(labels.device), torch.full_like(labels, self.null_class), labels)

    def embed_tokens(self, tokens, cells):  # tokens, cells (B, m) -> (B, m, C)
        return self.tok_emb(tokens) + self.pos_emb[cells]

    def forward(self, tokens, labels, order, intervals: Sequence[int]):
        """Teacher-forced logits in raster layout: ``tokens [B, N], labels [B], order [B, N] -> [B, N, V]``."""
        intervals = validate_intervals(intervals, self.num_tokens)
        gen = self.logits_through(tokens, labels, order, intervals, len(intervals))  # (B, N, V)
        return torch.empty_like(gen).scatter_(1, order[..., None].expand_as(gen), gen)

    def loss(self, tokens, labels, order, intervals: Sequence[int]):
        """Training loss and token accuracy, honouring ``first_set_loss`` (and ``full`` decoder mode)."""
        intervals = validate_intervals(intervals, self.num_tokens)
        gen = self.logits_through(tokens, labels, order, intervals, len(intervals))
        return sar_loss(gen, tokens.gather(1, order), intervals, self.config.first_set_loss,
                        last_set_only=self.decoder_attn == "full")

    def compiled_loss(self, **compile_kwargs):
        """``loss`` compiled with ``torch.compile``, with inputs of fixed shape: batch to batch only tensor
        values change, so nothing recompiles when the intervals do (the GPT's intervals never change)."""
        return torch.compile(self.loss, **compile_kwargs)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    required_training: dict = {}  # config keys a family fixes (the sweep applies them to its runs)

    @classmethod
    def training_refusal(cls, order: str, schedule: str) -> str | None:
        """Why this family cannot be trained with ``order`` and interval ``schedule``, or None."""
        return None

    @classmethod
    def refusal(cls, order, intervals: Sequence[int], attn: str, decoder_attn: str = "block_causal") -> str | None:
        """Why a model of this family, trained with ``decoder_attn``, cannot sample in ``order`` (a name
        or ``LongTensor[B, N]``) with set sizes ``intervals`` and inference attention ``attn``; or None."""
        if attn not in ATTN_MODES:
            return f"unknown attn {attn!r}; valid: {', '.join(ATTN_MODES)}"
        if attn == "causal" and decoder_attn == "full":
            return "a model trained with full decoder self-attention samples with attn='full'"
        return None

    def check_request(self, order, intervals: Sequence[int], attn: str) -> None:
        """Raise ValueError when this model refuses the request (see ``refusal``)."""
        reason = self.refusal(order, intervals, attn, self.decoder_attn)
        if reason:
            raise ValueError(reason)
