"""Entry point ``ezpz-tar-env``: pack a venv or conda environment into one archive."""

from __future__ import annotations

import sys
from typing import Any, Sequence

from ..errors import EzpzError
from .common import standard_main

DESCRIPTION = "pack a venv or conda environment into one verified, relocatable archive"
EXAMPLES = (
    "ezpz-tar-env",
    "ezpz-tar-env env.prefix=/lus/proj/envs/myenv archive.codec=zstd archive.level=5",
    "ezpz-tar-env archive.path=/lus/proj/envs/myenv.tar.zst overwrite=true",
)


def task(cfg: Any) -> int:
    raise EzpzError("ezpz-tar-env is not implemented yet")


def main(argv: Sequence[str] | None = None) -> int:
    return standard_main(prog="ezpz-tar-env", description=DESCRIPTION, config_name="tar_env",
                         groups=(), task=task, argv=argv, examples=EXAMPLES, detect=False)


if __name__ == "__main__":
    sys.exit(main())
