"""Training: the LightningModule, its callbacks (EMA, checkpoints, sample grids, HParams, progress), the
``train`` command, and loading a trained run's model from its checkpoint. Training never imports evaluation.
"""

from sar_lightning.training.checkpoints import load_model
from sar_lightning.training.module import SARLightningModule

__all__ = ["SARLightningModule", "load_model"]
