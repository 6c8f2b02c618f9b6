"""Entry point ``ezpz-launch``: run any command on the job's GPUs with the machine's settings.

    ezpz-launch [overrides] -- <command ...>     (or cmd=[...] as an override)
    ezpz-launch transfer.src=/lus/proj/env.tar.zst -- python train.py

Everything after ``--`` is the command, passed through unchanged (never through a shell).
With ``transfer.src`` the environment is delivered to every node first (as ezpz-yeet-env
does it, into ``<run dir>/delivery``; nodes that hold it skip), then every rank runs the
command with the node-local environment first: ``dst/bin`` on PATH, VIRTUAL_ENV or
CONDA_PREFIX, and ``python``/``python3`` as the command is the delivered interpreter.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import EXIT_USAGE, LaunchError
from ..log import get_logger
from .common import current_run_id, default_launcher, fail, standard_main, to_settings

log = get_logger(__name__)

DESCRIPTION = "run a command on every GPU of the job with the machine's launcher settings"
EXAMPLES = (
    "ezpz-launch -- python3 train.py --epochs 3",
    "ezpz-launch launcher.ngpus=8 -- python3 -m my.module",
    "ezpz-launch launcher=torchrun -- train.py",
    "ezpz-launch launcher.dry_run=true -- hostname",
    "ezpz-launch launcher.retries=2 launcher.spares=1 launcher.idle_timeout=600 -- python3 train.py",
    "ezpz-launch transfer.src=/lus/proj/env.tar.zst -- python train.py   (deliver, then run)",
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
    run_dir = _run_dir()
    delivery = None
    if settings.transfer.src:
        # one line in a job script: deliver the environment first (nodes that hold it skip)
        from ..deliver import deliver

        delivery = deliver(settings.machine, settings.launcher, settings.transfer,
                           run_dir=Path(run_dir or tempfile.mkdtemp(prefix="ezpz-launch-"))
                           / "delivery", run_id=current_run_id(),
                           dry_run=settings.launcher.dry_run)
        if delivery.exit_code and not settings.launcher.dry_run:
            log.error("the delivery of %s failed (exit code %d): not starting the command; "
                      "see %s", settings.transfer.src, delivery.exit_code,
                      delivery.run_dir / "results.json")
            return delivery.exit_code
    plan = plan_launch(settings.machine, settings.launcher, cmd, workdir=run_dir,
                       wrap_ranks=settings.launcher.rank_wrapper)
    if delivery is not None:
        from ..deliver import use_delivery

        plan = use_delivery(plan, delivery)
    return run_plan(plan, dry_run=settings.launcher.dry_run)


def preflight(settings: Any, command: Sequence[str]) -> None:
    """What a user can get wrong (hosts, GPU counts, spares, srun outside an allocation, the
    environment to deliver) is checked on the validated settings before Hydra makes a run
    directory: a refused launch writes and starts nothing."""
    from ..launch import resolve_hosts

    if not command and not settings.cmd:
        raise LaunchError(_NO_COMMAND)
    resolve_hosts(settings.machine, settings.launcher, quiet=True)
    if settings.transfer.src:
        from ..deliver import check_src
        from ..jobenv import resolve_backend
        from ..transfer import check_user_paths

        resolve_backend(settings.transfer.backend, settings.launcher.name)
        archive, _ = check_src(settings.transfer.src)
        check_user_paths(settings.transfer, str(archive) if archive else None)


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
                         groups=("machine", "launcher", "transfer"),
                         task=functools.partial(task, command=command), argv=args,
                         examples=EXAMPLES, adjust=default_launcher,
                         preflight=functools.partial(preflight, command=command))


if __name__ == "__main__":
    sys.exit(main())
