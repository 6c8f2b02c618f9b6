"""Entry point ``ezpz-tar-env``: pack a venv or conda environment into one archive."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from .common import standard_main, to_settings

DESCRIPTION = "pack a venv or conda environment into one verified, relocatable archive"
EXAMPLES = (
    "ezpz-tar-env",
    "ezpz-tar-env env.prefix=/lus/proj/envs/myenv archive.codec=zstd archive.level=5",
    "ezpz-tar-env archive.path=/lus/proj/envs/myenv.tar.zst overwrite=true",
    "ezpz-tar-env 'exclude=[**/__pycache__]' archive.codec=gzip",
    "ezpz-tar-env env.include_system_site=true   (a --system-site-packages venv, base included)",
)


def task(cfg: Any) -> int:
    from ..pack import pack

    path = pack(to_settings(cfg))
    # The last line on stdout is the archive path, for scripts to capture.
    print(path, flush=True)
    return 0


def preflight(settings: Any) -> None:
    """What refuses to pack is found before Hydra creates a run directory: where the archive
    goes (a directory, a file that is not an ezpz archive of the user's), a missing
    env.prefix, editable installs without env.allow_editable=true. One line, nothing
    written."""
    from ..envkind import detect_kind
    from ..pack import resolve_output
    from ..pack.outside import inspect, refuse_editables
    from ..pack.packer import resolve_prefix

    prefix = resolve_prefix(settings.env.prefix)
    resolve_output(settings.archive.path, prefix, settings.archive.codec)
    refuse_editables(inspect(prefix, str(detect_kind(prefix)), None, system_site=False),
                     settings.env)


def main(argv: Sequence[str] | None = None) -> int:
    return standard_main(prog="ezpz-tar-env", description=DESCRIPTION, config_name="tar_env",
                         groups=(), task=task, argv=argv, examples=EXAMPLES, detect=False,
                         preflight=preflight)


if __name__ == "__main__":
    sys.exit(main())
