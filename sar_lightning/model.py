"""The Fully Masked Transformer (FMT, docs/method.md section 4) and the model factory.

The encoder reads ``[cls, x_order[0], ...]`` (the last set dropped) under a block-causal mask; the
decoder's queries are a shared learned embedding plus the target cell's position embedding. The
decoder runs in generation order (queries gathered by ``order``), so the masks depend only on the
batch's intervals and broadcast over the batch; logits are scattered back to raster layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .intervals import validate_intervals
from .layers import DecoderBlock, EncoderBlock, KVSlot, ffn_hidden, init_weights
from .masks import (
    DECODER_MODES,
    cached_self_mask,
    decoder_cross_mask,
    decoder_self_mask,
    encoder_mask,
    loss_positions,
    set_ids,
    set_masks,
)

ATTN_MODES = ("causal", "full")  # attention at inference: set by set (cacheable), or MAR's two-set view


@dataclass
class ModelConfig:
    kind: str = "fmt"  # fmt | gpt
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
        if self.kind not in ("fmt", "gpt"):
            raise ValueError(f"model kind must be 'fmt' or 'gpt', got {self.kind!r}")
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
        m_e, m_ds, m_dc = set_masks(sizes, self.decoder_attn, tokens.device)
        ctx_cells = order[:, :n_ctx]
        x = torch.cat([self.class_tokens(labels), self.embed_tokens(tokens.gather(1, ctx_cells), ctx_cells)], 1)
        for blk in self.encoder:
            x = blk(x, mask=m_e)  # (B, 1 + n_ctx, C)
        memory = self.enc_norm(x)
        q = self.query + self.pos_emb[order[:, :n_q]]  # (B, n_q, C)
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
        x = torch.cat([self.class_tokens(labels), self.embed_tokens(tokens.gather(1, order), order)], 1)
        for blk in self.encoder:
            x = blk(x, mask=m_e)  # (B, 1 + N, C)
        memory, q = self.enc_norm(x), self.query + self.pos_emb[order]  # (B, N, C)
        for blk in self.decoder:
            q = blk(q, blk.cross_attn.keys_values(memory), self_mask=m_ds, cross_mask=m_dc)
        logits, targets = self.head(self.norm(q)), tokens.gather(1, order)
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


MODELS: dict[str, dict] = {
    # CPU sizes (ours)
    "tiny": dict(dim=64, heads=4, enc_layers=2, dec_layers=2, ffn_multiple=64),
    "small": dict(dim=96, heads=4, enc_layers=3, dec_layers=3, ffn_multiple=32),
    # the paper's sizes: LlamaGen GPT widths, layers split half encoder / half decoder
    "B": dict(dim=768, heads=12, enc_layers=6, dec_layers=6, ffn_multiple=256),
    "L": dict(dim=1024, heads=16, enc_layers=12, dec_layers=12, ffn_multiple=256),
    "XL": dict(dim=1280, heads=20, enc_layers=18, dec_layers=18, ffn_multiple=256),
}
MODELS.update({f"gpt-{k}": dict(v, kind="gpt") for k, v in list(MODELS.items())})


def build_model(name: str, **overrides) -> SARModel:
    """Build a model by factory name (``tiny``, ``small``, ``B``, ``L``, ``XL``, ``gpt-<size>``).

    ``overrides`` are ``ModelConfig`` fields (vocab_size, num_classes, height, width, decoder_attn,
    first_set_loss, class_dropout, dropout, ...).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    valid = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown model options {unknown}; valid options: {', '.join(sorted(valid))}")
    cfg = ModelConfig(**{**MODELS[name], **overrides})
    return model_from_config(cfg)


def model_class(name_or_kind: str) -> type[SARModel]:
    """The class of a factory name (``small``, ``gpt-B``) or of a kind (``fmt``, ``gpt``)."""
    from .gpt import GPT

    kinds = {"fmt": FullyMaskedTransformer, "gpt": GPT}
    return kinds[MODELS[name_or_kind].get("kind", "fmt") if name_or_kind in MODELS else name_or_kind]


def model_from_config(cfg: ModelConfig | dict) -> SARModel:
    if isinstance(cfg, dict):
        cfg = ModelConfig(**cfg)
    return model_class(cfg.kind)(cfg)


def config_dict(model: SARModel) -> dict:
    return asdict(model.config)
