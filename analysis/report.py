"""Write the findings report: ``python analysis/report.py [--root runs] [--out docs/results/FINDINGS.md]``.

The findings and their checks live in ``sar_lightning.analysis.findings``,
the report in ``sar_lightning.analysis.report``;
this is its command line.
"""

import sys

from sar_lightning.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
