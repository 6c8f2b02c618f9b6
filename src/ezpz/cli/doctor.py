"""Entry point ``ezpz-doctor``: check the machine and the environment before a job does.

    ezpz-doctor                                   # this machine, this environment
    ezpz-doctor transfer.src=/lus/proj/env.tar.zst  # ... and whether /tmp can take the archive
    ezpz-doctor machine=aurora env.prefix=/lus/proj/envs/myenv

Each check prints one line (``ok``, ``warn``, ``FAIL``, ``skip``) with what it found and the
fix; the exit code is 1 when any check failed. Nothing is written (no run directory).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from .common import default_launcher, standard_main, to_settings

DESCRIPTION = ("check MPI, /tmp space, the environment to pack, torch, the job's hosts and "
               "MASTER_ADDR, one line each with its fix")
EXAMPLES = (
    "ezpz-doctor",
    "ezpz-doctor transfer.src=/lus/proj/envs/myenv.tar.zst",
    "ezpz-doctor machine=polaris tar_env.env.prefix=/eagle/proj/envs/myenv",
)


def task(cfg: Any) -> int:
    from ..doctor import run_checks, summary

    settings = to_settings(cfg)
    checks = run_checks(settings.machine, settings.launcher, settings.transfer,
                        settings.tar_env)
    for check in checks:
        print(check.line(), flush=True)
    print(summary(checks), flush=True)
    return 1 if any(c.failed for c in checks) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = [a.replace("env.prefix=", "tar_env.env.prefix=", 1) if a.startswith("env.prefix=")
            else a for a in (sys.argv[1:] if argv is None else argv)]
    return standard_main(prog="ezpz-doctor", description=DESCRIPTION, config_name="doctor",
                         groups=("machine", "launcher", "transfer"), task=task, argv=args,
                         examples=EXAMPLES, adjust=default_launcher, log_file=False)


if __name__ == "__main__":
    sys.exit(main())
