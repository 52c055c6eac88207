"""Write the findings report: ``python analysis/report.py [--root runs] [--out docs/results/FINDINGS.md]``.

The findings and their checks live in ``sar_lightning.analysis.findings``, the report in
``sar_lightning.analysis.report``; this script translates its flags (``--root --out --figures --readme``)
into ``report_command`` (the same as ``python -m sar_lightning report root=... readme=...``).
"""

import sys

from sar_lightning.analysis.report import ReportArgs, report_command
from sar_lightning.options import flag_parser


def main(argv: list[str] | None = None) -> int:
    parser = flag_parser(ReportArgs, "python analysis/report.py", __doc__.splitlines()[0])
    return report_command(ReportArgs(**vars(parser.parse_args(argv))))


if __name__ == "__main__":
    sys.exit(main())
