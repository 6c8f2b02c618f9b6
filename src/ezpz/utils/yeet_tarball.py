"""``python -m ezpz.utils.yeet_tarball --src X [--dst Y] [--d] [--chunk_size N] [--overwrite]``.

The original ezpz entry point, kept as a thin layer over ``ezpz-yeet-env`` (same flags,
and any ``key=value`` override).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from ..cli.yeet_env import main as yeet_main

    return yeet_main(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
