"""Entry point ``ezpz-launch``: run any command on the job's GPUs with the machine's settings."""

from __future__ import annotations

import sys
from typing import Any, Sequence

from ..errors import EzpzError
from .common import standard_main

DESCRIPTION = "run a command on every GPU of the job with the machine's launcher settings"
EXAMPLES = (
    "ezpz-launch -- python3 train.py --epochs 3",
    "ezpz-launch launcher.ngpus=8 -- python3 -m my.module",
    "ezpz-launch launcher=torchrun -- train.py",
    "ezpz-launch launcher.dry_run=true -- hostname",
)


def task(cfg: Any) -> int:
    raise EzpzError("ezpz-launch is not implemented yet")


def main(argv: Sequence[str] | None = None) -> int:
    return standard_main(prog="ezpz-launch", description=DESCRIPTION, config_name="launch",
                         groups=("machine", "launcher"), task=task, argv=argv,
                         examples=EXAMPLES)


if __name__ == "__main__":
    sys.exit(main())
