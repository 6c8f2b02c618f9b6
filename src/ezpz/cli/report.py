"""Entry point ``ezpz-report``: rebuild a sweep summary from existing results.json files.

    ezpz-report <sweep dir or run dir> [more dirs ...] [--out DIR] [--x KEY] [--no-plot]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import EXIT_USAGE, EzpzError
from ..report import PLOT_HINT, SUMMARY_CSV, SUMMARY_MD, SUMMARY_PNG
from .common import fail, version_line

DESCRIPTION = ("summarise ezpz-yeet-env runs (a sweep directory, run directories, or several "
               "sweeps to merge) into summary.csv, summary.md and summary.png")
EPILOG = """examples:
  ezpz-report multirun/yeet/2025-01-31/12-00-00
  ezpz-report sweep-aurora-a sweep-aurora-b --out merged
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        self.exit(EXIT_USAGE, f"error: {message} (see ezpz-report --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ezpz-report", description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="a sweep directory (job directories inside) or a run directory")
    p.add_argument("-o", "--out", metavar="DIR",
                   help="where to write the summary (default: DIR when only one is given)")
    p.add_argument("--x", dest="x_key", metavar="KEY",
                   help="swept key for the plot's x axis (default: the numeric key with the "
                        "most values)")
    p.add_argument("--no-plot", action="store_true", help="write only the CSV and Markdown")
    p.add_argument("--version", action="version", version=version_line("ezpz-report"))
    p.add_argument("--info", action="store_true",
                   help="print the version, what is read and written, and the plot backend")
    return p


def info() -> str:
    """What ``ezpz-report --info`` prints: the version, what it reads and writes, the plot."""
    try:
        import matplotlib

        plot = f"matplotlib {matplotlib.__version__}"
    except ImportError:
        plot = f"not available: matplotlib is not installed ({PLOT_HINT})"
    return "\n".join([
        version_line("ezpz-report"),
        "reads: results.json and .hydra/overrides.yaml of every job directory below DIR",
        f"writes: {SUMMARY_CSV}, {SUMMARY_MD} and {SUMMARY_PNG} into --out (default: DIR)",
        f"plot: {plot}"])


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list == ["--info"]:
        print(info())
        return 0
    args = build_parser().parse_args(args_list)
    from ..report import build_report, to_markdown

    if args.info:
        print(info())
        return 0
    try:
        summary, written = build_report(args.dirs, args.out, x_key=args.x_key,
                                        plot=not args.no_plot)
    except EzpzError as exc:
        return fail(str(exc), exc.exit_code)
    print(to_markdown(summary))
    for note in written.notes:
        print(note, file=sys.stderr)
    print("wrote " + ", ".join(written.paths), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
