"""The archive manifest: what ezpz-tar-env records and relocation/transfer read back.

It is the first member of every archive ezpz writes, at ``<env-name>/.ezpz/manifest.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

FORMAT_VERSION = 1
#: Path of the manifest inside the environment (and, under the top directory, in the archive).
MANIFEST_RELPATH = ".ezpz/manifest.json"
#: Where a bundled interpreter tree lives inside the environment.
BUNDLED_PYTHON_RELPATH = ".ezpz/python"

KINDS = ("venv", "conda", "data")


@dataclass
class PrefixFile:
    """A file that contains the original prefix. ``mode`` is ``text`` or ``binary``."""

    path: str  # relative to the environment root, '/'-separated
    mode: str = "text"


@dataclass
class Manifest:
    kind: str  # venv | conda | data
    name: str  # top-level directory name in the archive
    prefix: str  # original absolute prefix of the environment
    format: int = FORMAT_VERSION
    python_version: Optional[str] = None  # "3.11.7"
    python_implementation: Optional[str] = None  # "CPython"
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    total_bytes: int = 0  # uncompressed file bytes
    prefix_files: list[PrefixFile] = field(default_factory=list)
    #: Original prefix of an interpreter packed under BUNDLED_PYTHON_RELPATH (bundle_python=true).
    bundled_python_prefix: Optional[str] = None
    codec: Optional[str] = None
    created_host: Optional[str] = None
    created_time: Optional[str] = None  # ISO 8601, UTC
    ezpz_version: Optional[str] = None
    excludes: list[str] = field(default_factory=list)
    #: Free-form facts used to decide whether an existing archive is up to date.
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if not isinstance(data, dict):
            raise ValueError(f"a manifest is a JSON object, not {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}  # ignore keys from newer versions
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["prefix_files"] = [PrefixFile(**p) if isinstance(p, dict) else PrefixFile(str(p))
                                  for p in kwargs.get("prefix_files", [])]
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, env_root: str | os.PathLike[str]) -> Optional["Manifest"]:
        """The manifest of an extracted environment, or None when it has none."""
        path = os.path.join(env_root, MANIFEST_RELPATH)
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as fh:
            return cls.from_json(fh.read())
