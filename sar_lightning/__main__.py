"""``python -m sar_lightning <command> ...``: the command line (``sar_lightning.cli``)."""

import sys

from sar_lightning.cli import main

sys.exit(main())
