"""Draw the trade-off figures: ``python analysis/plot_tradeoffs.py [--root runs] [--grid NAME] [--out DIR]``.

The figures live in ``sar_lightning.analysis.plots``; this script translates its flags into ``plots_command``
(the same as ``python -m sar_lightning plots root=... grid=... out=...``).
"""

import sys

from sar_lightning.analysis.plots import PlotArgs, plots_command
from sar_lightning.options import flag_parser


def main(argv: list[str] | None = None) -> int:
    parser = flag_parser(PlotArgs, "python analysis/plot_tradeoffs.py", __doc__.splitlines()[0])
    return plots_command(PlotArgs(**vars(parser.parse_args(argv))))


if __name__ == "__main__":
    sys.exit(main())
