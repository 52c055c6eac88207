"""Gather every run's results into one table: ``python analysis/collect.py [--root runs] [--out analysis/results]``.

The table and its views live in ``sar_lightning.analysis.table``; this is its command line.
"""

import sys

from sar_lightning.analysis.table import main

if __name__ == "__main__":
    sys.exit(main())
