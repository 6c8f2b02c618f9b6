"""Entry point ``ezpz-yeet-env``: broadcast an environment archive to every node's /tmp.

One run: compose the config, then :func:`ezpz.deliver.deliver` (check ``transfer.src``,
pack the environment first when it is a directory or omitted, one worker per node started
with ``python -m ezpz.transfer --spec <run dir>/worker-spec.json --run-id <id>``, retries on
the nodes that failed), then say how to activate the delivered environment and exit with
the delivery's status.

The original flags still work: ``ezpz-yeet-env --src X [--dst Y] [--d] [--chunk_size N]
[--overwrite]`` (translated to ``transfer.*`` overrides).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import YeetConfig
from ..deliver import check_src
from ..errors import EXIT_FAILURE, ConfigError, EzpzError
from ..jobenv import resolve_backend
from ..log import get_logger
from .common import current_run_id, default_launcher, fail, standard_main, to_settings

DESCRIPTION = "deliver an environment archive to node-local /tmp on every node of the job"
EXAMPLES = (
    "ezpz-yeet-env transfer.src=/lus/proj/envs/myenv.tar.zst",
    "ezpz-yeet-env machine=aurora transfer.src=env.tar.zst transfer.chunk_size=64MiB",
    "ezpz-yeet-env launcher=torchrun transfer.src=env.tar.zst",
    "ezpz-yeet-env -m transfer.src=env.tar.zst transfer.chunk_size=4MiB,16MiB,64MiB",
    "ezpz-yeet-env --src env.tar.zst --dst /tmp/env   (original flags)",
)

log = get_logger(__name__)


# --------------------------------------------------------------------------------------
# original flags → overrides
# --------------------------------------------------------------------------------------
def hydra_quote(value: str) -> str:
    """``value`` as one quoted Hydra override value that parses back to exactly ``value``."""
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
    text = text.replace("'", "\\'").replace("${", "\\${")
    return f"'{text}'"


_COMPAT_VALUE = {"--src": "transfer.src", "--dst": "transfer.dst",
                 "--chunk_size": "transfer.chunk_size", "--chunk-size": "transfer.chunk_size"}
_COMPAT_FLAG = {"--d": "transfer.decompress=true", "--decompress": "transfer.decompress=true",
                "--overwrite": "transfer.overwrite=true"}


def translate_compat(argv: Sequence[str]) -> list[str]:
    """``--src X --dst Y --d --chunk_size N --overwrite`` → ``transfer.*`` overrides.

    ``--flag=value`` works too. Anything else is passed through unchanged.
    """
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if name in _COMPAT_VALUE and arg.startswith("--"):
            if eq:
                value = inline
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise ConfigError(f"{name} needs a value")
            out.append(f"{_COMPAT_VALUE[name]}={hydra_quote(value)}")
        elif arg in _COMPAT_FLAG:
            out.append(_COMPAT_FLAG[arg])
        else:
            out.append(arg)
        i += 1
    return out


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------
def _run_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - called outside a Hydra run
        import tempfile

        return Path(tempfile.mkdtemp(prefix="ezpz-yeet-"))


def job_run_id() -> str:
    """The run id written into the worker spec: the run's, plus the job number in a sweep
    (every job of a sweep has its own directory and spec)."""
    run_id = current_run_id()
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return f"{run_id}-{hc.job.num}"
    except Exception:  # noqa: BLE001 - called outside a Hydra run
        pass
    return run_id


def task(cfg: Any) -> int:
    from ..deliver import deliver

    settings: YeetConfig = to_settings(cfg)
    delivery = deliver(settings.machine, settings.launcher, settings.transfer,
                       tar_env=settings.tar_env, run_dir=_run_dir(), run_id=job_run_id(),
                       dry_run=settings.launcher.dry_run)
    if settings.launcher.dry_run:
        return delivery.exit_code
    return _finish(delivery.run_dir, delivery.launcher_rc, delivery.archive)


def _finish(run_dir: Path, rc: int, archive: Path | None) -> int:
    from ..transfer import RESULTS_FILE
    from ..transfer.results import activation_for

    results_path = run_dir / RESULTS_FILE
    if not results_path.exists():
        log.error("the transfer wrote no %s (launcher exit code %d)", results_path, rc)
        return rc or EXIT_FAILURE
    try:
        results = json.loads(results_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.error("cannot read %s: %s", results_path, exc)
        return rc or EXIT_FAILURE
    status = results.get("status")
    failed = results.get("failed_hosts") or []
    if failed:
        log.error("failed on %d node(s): %s", len(failed), ", ".join(map(str, failed)))
    code = results.get("exit_code")
    code = int(code) if isinstance(code, int) else (0 if status == "ok" else EXIT_FAILURE)
    if code == 0 and rc != 0:
        code = rc
    if code == 0:
        hint = activation_for(results, _archive_kind(archive))
        if hint:
            print(f"activate the delivered environment on each node with: {hint}")
    log.info("results: %s (status %s, exit code %d)", results_path, status, code)
    return code


def _archive_kind(archive: Path | None) -> str | None:
    if archive is None:
        return None
    from ..errors import ArchiveError
    from ..formats.manifest import read_manifest

    try:
        manifest = read_manifest(archive)
    except ArchiveError:  # the hint is a courtesy
        return None
    return manifest.kind if manifest else None


def preflight(settings: YeetConfig) -> None:
    """Check what a user can get wrong (transfer.src and dst, the archive to pack, backend,
    hosts) before Hydra creates a run directory: a refused run writes and starts nothing."""
    from ..launch import resolve_topology
    from ..launch.hosts import discover_hosts
    from ..transfer import check_user_paths

    resolve_backend(settings.transfer.backend, settings.launcher.name)
    archive, to_pack = check_src(settings.transfer.src)
    if to_pack is not None:  # where the packed archive will go, before anything is written
        from ..pack import resolve_output

        resolve_output(settings.tar_env.archive.path, to_pack, settings.tar_env.archive.codec)
    check_user_paths(settings.transfer, str(archive) if archive else None,
                     env_dir=str(to_pack) if to_pack else None)
    hosts = discover_hosts(settings.launcher.hostfile, warn=False)  # the launch warns once
    resolve_topology(ngpus=None, nhosts=settings.launcher.nhosts, ngpu_per_host=1,
                     hosts_available=len(hosts), gpus_per_host=0)
    lc = settings.launcher
    if lc.ngpus is not None or lc.ngpu_per_host is not None:
        # the transfer uses one process per host, but GPU counts that cannot fit the job's
        # hosts are a mistake worth stopping on (the machine's GPU count when it is known)
        resolve_topology(ngpus=lc.ngpus, nhosts=lc.nhosts, ngpu_per_host=lc.ngpu_per_host,
                         hosts_available=len(hosts),
                         gpus_per_host=settings.machine.gpus_per_node or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = translate_compat(args)
    except EzpzError as exc:
        return fail(str(exc), exc.exit_code)
    return standard_main(prog="ezpz-yeet-env", description=DESCRIPTION, config_name="yeet",
                         groups=("machine", "launcher", "transfer"), task=task, argv=args,
                         examples=EXAMPLES, preflight=preflight, adjust=default_launcher)


if __name__ == "__main__":
    sys.exit(main())
