"""One registry of model kinds and sizes: the factory names (``tiny`` ... ``XL``, ``gpt-<size>``), their
classes, and building a model from a name or a ``ModelConfig``. It knows both families; neither knows the other.
"""

from __future__ import annotations

from dataclasses import fields

from sar_lightning.models.base import ModelConfig, SARModel
from sar_lightning.models.fmt import FullyMaskedTransformer
from sar_lightning.models.gpt import GPT

KINDS: dict[str, type[SARModel]] = {"fmt": FullyMaskedTransformer, "gpt": GPT}

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
    kind = MODELS[name_or_kind].get("kind", "fmt") if name_or_kind in MODELS else name_or_kind
    if kind not in KINDS:
        raise ValueError(f"unknown model {name_or_kind!r}; valid models: {', '.join(MODELS)} "
                         f"(kinds: {', '.join(KINDS)})")
    return KINDS[kind]


def model_from_config(cfg: ModelConfig | dict) -> SARModel:
    if isinstance(cfg, dict):
        cfg = ModelConfig(**cfg)
    return model_class(cfg.kind)(cfg)
