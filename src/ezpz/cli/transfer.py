"""Entry point of the per-node worker, ``python -m ezpz.transfer``.

Three command lines::

    python -m ezpz.transfer --spec FILE [--run-dir DIR] [--run-id ID]   # as ezpz-yeet-env
    python -m ezpz.transfer --config-file FILE [--run-dir DIR] [key=value ...]
    python -m ezpz.transfer [hydra overrides ...]                # config 'yeet'

``--spec`` is the run's :class:`~ezpz.transfer.WorkerSpec` (JSON, written by the launcher:
backend decided, paths absolute, sizes in bytes); ranks read it without Hydra or OmegaConf.
With ``--run-id`` the spec must have been written by that run (its ``run_id``): a worker
refuses, in one line with exit code 2, a spec another run wrote into a shared run directory.
``--config-file`` takes a YAML config of the ``yeet`` schema (e.g. a run's saved config)
and resolves it on each rank; the last form composes with Hydra.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from ..errors import EXIT_USAGE, ConfigError

DESCRIPTION = "per-node worker: receive the broadcast archive and install it on this node"
EXAMPLES = (
    "mpiexec -n 4 -ppn 1 python -m ezpz.transfer transfer.src=/lus/envs/env.tar.zst",
    "torchrun --nnodes 2 --nproc-per-node 1 -m ezpz.transfer transfer.src=env.tar.zst",
    "python -m ezpz.transfer --spec outputs/yeet/.../worker-spec.json --run-dir outputs/yeet/...",
)
_USAGE = ("use --spec FILE [--run-dir DIR] [--run-id ID], or --config-file FILE "
          "[--run-dir DIR] [key=value ...]")


def _run(spec: Any, run_dir: str | None) -> int:
    from ..transfer import run_transfer

    result = run_transfer(spec, run_dir=run_dir)
    return result.exit_code if result is not None else 0


def _settings_task(cfg: Any, run_dir: str | None) -> int:
    from ..transfer import spec_for
    from .common import to_settings

    settings = to_settings(cfg)
    return _run(spec_for(settings.transfer, machine=settings.machine), run_dir)


def _hydra_task(cfg: Any) -> int:
    from hydra.core.hydra_config import HydraConfig

    return _settings_task(cfg, HydraConfig.get().runtime.output_dir)


def _parse(argv: Sequence[str]) -> tuple[dict[str, str | None], list[str]]:
    """``--spec``/``--config-file``/``--run-dir`` (``--k v`` or ``--k=v``) and overrides."""
    opts: dict[str, str | None] = {"spec": None, "config-file": None, "run-dir": None,
                                   "run-id": None}
    overrides: list[str] = []
    it = iter(argv)
    for a in it:
        name, eq, value = a.partition("=")
        if name.startswith("--") and name[2:] in opts:
            opts[name[2:]] = value if eq else next(it, None)
            if not opts[name[2:]]:
                raise ConfigError(f"{name} needs a value ({_USAGE})")
        elif eq and not a.startswith("-"):
            overrides.append(a)
        else:
            raise ConfigError(f"unexpected argument {a!r} ({_USAGE})")
    return opts, overrides


def _load_config_file(path: str, overrides: list[str]) -> Any:
    from omegaconf import DictConfig, OmegaConf

    from ..config import YeetConfig
    from .common import describe_config_exception

    try:
        base = OmegaConf.structured(YeetConfig)
        loaded = OmegaConf.load(path)
        if isinstance(loaded, DictConfig):
            loaded.pop("hydra", None)
        return OmegaConf.merge(base, loaded, OmegaConf.from_dotlist(overrides))
    except FileNotFoundError:
        raise ConfigError(f"--config-file: {path} does not exist") from None
    except Exception as exc:
        raise ConfigError(f"--config-file {path}: {describe_config_exception(exc)}") from exc


def check_run_id(spec: Any, path: str, run_id: str | None) -> None:
    """A spec written by another run than the one that started this worker is refused."""
    if run_id is not None and spec.run_id != run_id:
        raise ConfigError(f"--spec {path} was written by run {spec.run_id or '(none)'}, not by "
                          f"run {run_id} that started this worker: two runs share one run "
                          "directory; give each run its own (hydra.run.dir=...)")


def main_files(argv: Sequence[str]) -> int:
    """``--spec`` or ``--config-file``: no Hydra run (and with --spec no OmegaConf)."""
    from .guard import fail, guard

    try:
        opts, overrides = _parse(argv)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)

    @guard
    def _go() -> int:
        if opts["spec"]:
            if opts["config-file"] or overrides:
                raise ConfigError(f"--spec takes no other config ({_USAGE})")
            from ..transfer import WorkerSpec

            spec = WorkerSpec.read(opts["spec"])
            check_run_id(spec, opts["spec"], opts["run-id"])
            return _run(spec, opts["run-dir"])
        if opts["run-id"]:
            raise ConfigError(f"--run-id goes with --spec ({_USAGE})")
        if not opts["config-file"]:
            raise ConfigError(f"no config given ({_USAGE})")
        return _settings_task(_load_config_file(opts["config-file"], overrides),
                              opts["run-dir"])

    return _go()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a.split("=", 1)[0] in ("--spec", "--config-file", "--run-dir", "--run-id")
           for a in args):
        return main_files(args)
    from .common import standard_main

    return standard_main(prog="python -m ezpz.transfer", description=DESCRIPTION,
                         config_name="yeet", groups=("machine", "launcher", "transfer"),
                         task=_hydra_task, argv=args, examples=EXAMPLES,
                         config_in_help=False)  # start-up stays light; --cfg job shows it


if __name__ == "__main__":
    sys.exit(main())
