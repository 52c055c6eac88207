"""Gather every run's results into one table: ``python analysis/collect.py [--root runs] [--out analysis/results]``.

The table and its views live in ``sar_lightning.analysis.table``; this script translates its flags into
``collect_command`` (the same as ``python -m sar_lightning collect root=... out=...``).
"""

import sys

from sar_lightning.analysis.table import CollectArgs, collect_command
from sar_lightning.options import flag_parser


def main(argv: list[str] | None = None) -> int:
    parser = flag_parser(CollectArgs, "python analysis/collect.py", __doc__.splitlines()[0])
    return collect_command(CollectArgs(**vars(parser.parse_args(argv))))


if __name__ == "__main__":
    sys.exit(main())
