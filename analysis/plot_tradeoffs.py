"""Draw the trade-off figures: ``python analysis/plot_tradeoffs.py [--root runs] [--grid NAME] [--out DIR]``.

The figures live in ``sar_lightning.analysis.plots``; this is its command line.
"""

import sys

from sar_lightning.analysis.plots import main

if __name__ == "__main__":
    sys.exit(main())
