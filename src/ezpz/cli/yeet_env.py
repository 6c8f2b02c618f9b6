"""Entry point ``ezpz-yeet-env``: broadcast an environment archive to every node's /tmp."""

from __future__ import annotations

import sys
from typing import Any, Sequence

from ..errors import EzpzError
from .common import standard_main

DESCRIPTION = "deliver an environment archive to node-local /tmp on every node of the job"
EXAMPLES = (
    "ezpz-yeet-env transfer.src=/lus/proj/envs/myenv.tar.zst",
    "ezpz-yeet-env machine=aurora transfer.src=env.tar.zst transfer.chunk_size=64MiB",
    "ezpz-yeet-env launcher=torchrun transfer.src=env.tar.zst",
    "ezpz-yeet-env -m transfer.src=env.tar.zst transfer.chunk_size=4MiB,16MiB,64MiB",
)


def task(cfg: Any) -> int:
    raise EzpzError("ezpz-yeet-env is not implemented yet")


def main(argv: Sequence[str] | None = None) -> int:
    return standard_main(prog="ezpz-yeet-env", description=DESCRIPTION, config_name="yeet",
                         groups=("machine", "launcher", "transfer"), task=task, argv=argv,
                         examples=EXAMPLES)


if __name__ == "__main__":
    sys.exit(main())
