"""Entry point `ezpz-report`."""

from __future__ import annotations

import sys
from typing import Sequence

from ..errors import EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    print("error: ezpz-report is not implemented yet", file=sys.stderr)
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
