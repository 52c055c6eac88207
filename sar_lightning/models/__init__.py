"""The models: the contract every family keeps (``SARModel``, ``ModelConfig``), the Fully Masked Transformer,
the GPT baseline, and one registry of kinds and sizes (``build_model``). Models import only ``core``.
"""

from sar_lightning.models.base import ModelConfig, SARModel
from sar_lightning.models.fmt import FullyMaskedTransformer
from sar_lightning.models.gpt import GPT
from sar_lightning.models.registry import KINDS, MODELS, build_model, model_class, model_from_config

__all__ = ["GPT", "KINDS", "MODELS", "FullyMaskedTransformer", "ModelConfig", "SARModel", "build_model",
           "model_class", "model_from_config"]
