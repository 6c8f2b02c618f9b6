"""Entry point ``ezpz-launch``: run any command on the job's GPUs with the machine's settings.

    ezpz-launch [overrides] -- <command ...>     (or cmd=[...] as an override)

Everything after ``--`` is the command, passed through unchanged (never through a shell).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import EXIT_USAGE, LaunchError
from .common import default_launcher, fail, standard_main, to_settings

DESCRIPTION = "run a command on every GPU of the job with the machine's launcher settings"
EXAMPLES = (
    "ezpz-launch -- python3 train.py --epochs 3",
    "ezpz-launch launcher.ngpus=8 -- python3 -m my.module",
    "ezpz-launch launcher=torchrun -- train.py",
    "ezpz-launch launcher.dry_run=true -- hostname",
    "ezpz-launch launcher.retries=2 launcher.spares=1 launcher.idle_timeout=600 -- python3 train.py",
)
_NO_COMMAND = "no command to launch: give it after -- (ezpz-launch [overrides] -- cmd ...)"
_INFO_FLAGS = {"--help", "-h", "--cfg", "-c", "--hydra-help", "--version", "--info", "-i",
               "--shell-completion", "-sc"}


def _run_dir() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except Exception:  # noqa: BLE001 - outside a Hydra run (tests calling task directly)
        return None


def task(cfg: Any, command: Sequence[str] = ()) -> int:
    from ..launch import plan_launch, run_plan

    settings = to_settings(cfg)
    cmd = list(command) or [str(c) for c in settings.cmd]
    if not cmd:
        raise LaunchError(_NO_COMMAND)
    plan = plan_launch(settings.machine, settings.launcher, cmd, workdir=_run_dir(),
                       wrap_ranks=settings.launcher.rank_wrapper)
    return run_plan(plan, dry_run=settings.launcher.dry_run)


def preflight(settings: Any, command: Sequence[str]) -> None:
    """What a user can get wrong (hosts, GPU counts, spares, srun outside an allocation) is
    checked on the validated settings before Hydra makes a run directory: a refused launch
    writes and starts nothing."""
    from ..launch import resolve_hosts

    if not command and not settings.cmd:
        raise LaunchError(_NO_COMMAND)
    resolve_hosts(settings.machine, settings.launcher, quiet=True)


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``[overrides..., '--', cmd...]`` → (overrides, cmd)."""
    args = list(argv)
    if "--" in args:
        i = args.index("--")
        return args[:i], args[i + 1:]
    return args, []


def main(argv: Sequence[str] | None = None) -> int:
    args, command = split_command(sys.argv[1:] if argv is None else argv)
    has_cmd_override = any(a.split("=", 1)[0].lstrip("+~") == "cmd" for a in args)
    if not command and not has_cmd_override and not any(a in _INFO_FLAGS for a in args):
        return fail(_NO_COMMAND, EXIT_USAGE)
    return standard_main(prog="ezpz-launch", description=DESCRIPTION, config_name="launch",
                         groups=("machine", "launcher"),
                         task=functools.partial(task, command=command), argv=args,
                         examples=EXAMPLES, adjust=default_launcher,
                         preflight=functools.partial(preflight, command=command))


if __name__ == "__main__":
    sys.exit(main())
