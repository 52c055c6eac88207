"""sar-lightning: Set AutoRegressive image generation with the Fully Masked Transformer.

The rooms (each subpackage's docstring says more): ``core`` (the method in plain PyTorch), ``models``,
``data``, ``training``, ``evaluation``, ``sweeps``, ``analysis``, ``speed``; at the top ``config``, ``runs``
(the run folder), ``files`` and the command line (``python -m sar_lightning <command>``).
"""

from sar_lightning.config import Config, load_config
from sar_lightning.core import generate, make_intervals, make_order
from sar_lightning.models import build_model

__all__ = ["Config", "build_model", "generate", "load_config", "make_intervals", "make_order"]
