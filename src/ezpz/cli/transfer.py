"""Entry point of the per-node worker, ``python -m ezpz.transfer``.

Two command lines::

    python -m ezpz.transfer [hydra overrides ...]             # config 'yeet'
    python -m ezpz.transfer --config-file FILE [--run-dir DIR] [key=value ...]

The second is how ``ezpz-yeet-env`` starts it on every node: FILE is the run's resolved
config, merged onto the schema without Hydra (fast, and no re-parsing of the user's argv).
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

from ..errors import EXIT_USAGE, ConfigError
from ..transfer import run_transfer

DESCRIPTION = "per-node worker: receive the broadcast archive and install it on this node"
EXAMPLES = (
    "mpiexec -n 4 -ppn 1 python -m ezpz.transfer transfer.src=/lus/envs/env.tar.zst",
    "torchrun --nnodes 2 --nproc-per-node 1 -m ezpz.transfer transfer.src=env.tar.zst",
    "python -m ezpz.transfer --config-file outputs/yeet/.../config.yaml --run-dir outputs/yeet/...",
)


def _settings_task(cfg: Any, run_dir: Optional[str]) -> int:
    from .common import to_settings

    settings = to_settings(cfg)
    result = run_transfer(settings.transfer, run_dir=run_dir, machine=settings.machine,
                          launcher_name=settings.launcher.name)
    return result.exit_code if result is not None else 0


def _hydra_task(cfg: Any) -> int:
    from hydra.core.hydra_config import HydraConfig

    return _settings_task(cfg, HydraConfig.get().runtime.output_dir)


def main_config_file(argv: Sequence[str]) -> int:
    """``--config-file FILE [--run-dir DIR] [key=value ...]`` without Hydra."""
    from .common import describe_config_exception, fail, guard

    args = list(argv)
    config_file = run_dir = None
    overrides: list[str] = []
    it = iter(args)
    for a in it:
        if a == "--config-file" or a.startswith("--config-file="):
            config_file = a.split("=", 1)[1] if "=" in a else next(it, None)
        elif a == "--run-dir" or a.startswith("--run-dir="):
            run_dir = a.split("=", 1)[1] if "=" in a else next(it, None)
        elif "=" in a and not a.startswith("-"):
            overrides.append(a)
        else:
            return fail(f"unexpected argument {a!r} (use --config-file FILE [--run-dir DIR] "
                        "[key=value ...])", EXIT_USAGE)
    if not config_file:
        return fail("--config-file needs a file", EXIT_USAGE)

    @guard
    def _go() -> int:
        from omegaconf import OmegaConf

        from ..config import YeetConfig

        try:
            base = OmegaConf.structured(YeetConfig)
            loaded = OmegaConf.load(config_file)
            if isinstance(loaded, dict) or hasattr(loaded, "pop"):
                loaded.pop("hydra", None)  # type: ignore[union-attr]
            cfg = OmegaConf.merge(base, loaded, OmegaConf.from_dotlist(overrides))
        except FileNotFoundError:
            raise ConfigError(f"--config-file: {config_file} does not exist") from None
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"--config-file {config_file}: "
                              f"{describe_config_exception(exc)}") from exc
        return _settings_task(cfg, run_dir)

    return _go()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--config-file" or a.startswith("--config-file=") for a in args):
        return main_config_file(args)
    from .common import standard_main

    return standard_main(prog="python -m ezpz.transfer", description=DESCRIPTION,
                         config_name="yeet", groups=("machine", "launcher", "transfer"),
                         task=_hydra_task, argv=args, examples=EXAMPLES,
                         config_in_help=False)  # start-up stays light; --cfg job shows it


if __name__ == "__main__":
    sys.exit(main())
