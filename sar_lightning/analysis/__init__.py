"""Analysis: one results table from the run folders (and its aggregate over seeds), the trade-off figures,
the findings with their verdicts, and the report (FINDINGS.md, README's results block). No training here.
"""

from sar_lightning.analysis.findings import check_all
from sar_lightning.analysis.table import aggregate, collect, prepare

__all__ = ["aggregate", "check_all", "collect", "prepare"]
