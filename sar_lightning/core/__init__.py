"""The method in plain PyTorch: sequence orders, output intervals, the FMT's set masks, attention, the
transformer blocks and the sampler (any K, any order, an exact KV cache).

Nothing here imports Lightning, configs, files or any other room of the suite: a model only has to keep the
sampler's contract (``sar_lightning.models.SARModel``).
"""

from sar_lightning.core.intervals import make_intervals, validate_intervals
from sar_lightning.core.masks import set_ids, set_masks
from sar_lightning.core.orders import make_order, parse_order_name
from sar_lightning.core.sampling import Sampler, generate, inference_intervals

__all__ = ["Sampler", "generate", "inference_intervals", "make_intervals", "make_order", "parse_order_name",
           "set_ids", "set_masks", "validate_intervals"]
