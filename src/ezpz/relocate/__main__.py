"""``python -m ezpz.relocate PATH [--prefix NEW] [--from OLD]``."""

from __future__ import annotations

import argparse
import os
import sys

from ..envkind import activation_hint
from ..errors import EXIT_FAILURE, EXIT_USAGE, RelocateError
from . import relocate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ezpz.relocate",
        description="Rewrite a venv or conda environment copied to PATH so that it works there "
                    "(or at --prefix, where it will be moved).")
    p.add_argument("path", metavar="PATH", help="the unpacked environment")
    p.add_argument("--prefix", metavar="NEW", help="where the environment will be used "
                   "(default: PATH)")
    p.add_argument("--from", dest="old_prefix", metavar="OLD",
                   help="the old prefix, when there is no manifest and it cannot be detected")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not os.path.isdir(args.path):
        print(f"error: {args.path}: not a directory (PATH must be an unpacked environment)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        report = relocate(args.path, new_prefix=args.prefix, old_prefix=args.old_prefix)
    except (RelocateError, OSError) as exc:
        if os.environ.get("EZPZ_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        if isinstance(exc, OSError):  # e.g. a directory of the tree this user cannot read
            exc = RelocateError(f"cannot relocate {args.path}: {exc.filename or ''}: "
                                f"{exc.strerror or exc}")
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if report.kind == "data":
        print(f"{args.path}: not a venv or conda environment; nothing to relocate")
    else:
        print(f"relocated {report.kind} {report.old_prefix} -> {report.new_prefix} "
              f"({report.files_rewritten} files, {report.links_repointed} links)")
        print(activation_hint(report.kind, report.new_prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())

