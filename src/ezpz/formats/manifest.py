"""The archive manifest: what ezpz-tar-env records and relocation/transfer read back.

It is the first member of every archive ezpz writes, at ``<env-name>/.ezpz/manifest.json``.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ArchiveError
from .codecs import open_file

FORMAT_VERSION = 1
#: Path of the manifest inside the environment (and, under the top directory, in the archive).
MANIFEST_RELPATH = ".ezpz/manifest.json"
#: Where a bundled interpreter tree lives inside the environment.
BUNDLED_PYTHON_RELPATH = ".ezpz/python"

KINDS = ("venv", "conda", "data")
#: Longest manifest accepted by read_manifest (a corrupt header must not make us allocate GBs).
MANIFEST_MAX = 256 * 1024 * 1024


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
    python_version: str | None = None  # "3.11.7"
    python_implementation: str | None = None  # "CPython"
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    total_bytes: int = 0  # uncompressed file bytes
    prefix_files: list[PrefixFile] = field(default_factory=list)
    #: Original prefix of an interpreter packed under BUNDLED_PYTHON_RELPATH (bundle_python=true).
    bundled_python_prefix: str | None = None
    codec: str | None = None
    created_host: str | None = None
    created_time: str | None = None  # ISO 8601, UTC
    ezpz_version: str | None = None
    excludes: list[str] = field(default_factory=list)
    #: Free-form facts used to decide whether an existing archive is up to date.
    source: dict[str, Any] = field(default_factory=dict)
    #: zstd archives: offsets of the body's independent frames (each decodable on its own,
    #: with its content size), counted from the first, which follows the manifest's frame
    #: and its padding. Empty for one-stream archives.
    frames: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if not isinstance(data, dict):
            raise ValueError(f"a manifest is a JSON object, not {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}  # ignore keys from newer versions
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["prefix_files"] = [PrefixFile(**p) if isinstance(p, dict) else PrefixFile(str(p))
                                  for p in kwargs.get("prefix_files", [])]
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, env_root: str | os.PathLike[str]) -> Manifest | None:
        """The manifest of an extracted environment, or None when it has none."""
        path = os.path.join(env_root, MANIFEST_RELPATH)
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as fh:
            return cls.from_json(fh.read())


def read_manifest(path: str | os.PathLike[str]) -> Manifest | None:
    """The manifest of an archive, or None when its first member is not an ezpz manifest.

    Only the start of the archive is decoded. Raises :class:`ArchiveError` when the file
    cannot be read or is not a tar archive in a known codec.
    """
    try:
        stream, _codec, fh = open_file(path)
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            first = tf.next()
            if first is None or not first.isfile():
                return None
            parts = first.name.split("/")
            if len(parts) != 3 or "/".join(parts[1:]) != MANIFEST_RELPATH:
                return None
            if first.size > MANIFEST_MAX:
                raise ArchiveError(f"{path}: manifest member is implausibly large "
                                   f"({first.size} bytes); the archive is corrupt")
            fobj = tf.extractfile(first)
            data = fobj.read() if fobj is not None else b""
        return Manifest.from_json(data)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, ValueError, TypeError, OSError) as exc:
        raise ArchiveError(f"{path}: not a readable ezpz archive ({exc})") from exc
    except Exception as exc:  # zstandard.ZstdError and friends
        if type(exc).__module__.startswith("zstandard"):
            raise ArchiveError(f"{path}: corrupt zstd data ({exc})") from exc
        raise
    finally:
        try:
            stream.close()
        finally:
            fh.close()


def iter_members(path: str | os.PathLike[str]) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """(TarInfo, data or None) for every member, streaming (tests and tools)."""
    stream, _codec, fh = open_file(path)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for info in tf:
                fobj = tf.extractfile(info) if info.isfile() else None
                data = fobj.read() if fobj is not None else None
                yield info, data
    finally:
        stream.close()
        fh.close()


