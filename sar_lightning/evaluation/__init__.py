"""Evaluation: classifier / Inception features, the metrics (FD with its bootstrap interval, KID, precision,
recall, class accuracy), the ``evaluate`` command that writes result rows, and the ``sample`` command.
"""

from sar_lightning.evaluation.evaluate import pending_settings
from sar_lightning.evaluation.metrics import compute_metrics

__all__ = ["compute_metrics", "pending_settings"]
