"""The archive manifest: what ezpz-tar-env records and relocation/transfer read back.

It is the first member of every archive ezpz writes, at ``<env-name>/.ezpz/manifest.json``.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..anchored import Anchor
from ..errors import ArchiveError
from .codecs import open_file
from .tarread import Member, TarReader, iter_archive

FORMAT_VERSION = 1
#: ezpz's own directory inside every tree it installs; an archive may bring only the
#: manifest and a bundled interpreter there (the checks refuse anything else).
RESERVED_DIR = ".ezpz"
#: Path of the manifest inside the environment (and, under the top directory, in the archive).
MANIFEST_RELPATH = ".ezpz/manifest.json"
#: The marker ezpz writes into every tree it installs.
MARKER_RELPATH = ".ezpz/installed.json"
#: Where a bundled interpreter tree lives inside the environment.
BUNDLED_PYTHON_RELPATH = ".ezpz/python"

KINDS = ("venv", "conda", "data")
#: Longest manifest accepted (bytes), checked before it is read: a real one lists the files
#: that hold the prefix, a few hundred KB even for large conda environments.
MANIFEST_MAX = 16 << 20
#: JSON values (objects, arrays and commas counted) a manifest may hold: parsed, each costs
#: up to a few hundred bytes, so this keeps a hostile manifest well under 100 MB.
MANIFEST_ITEMS = 400_000


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
    def from_dict(cls, data: Any) -> Manifest:
        """The manifest described by ``data``; ValueError (one line, naming the field) for a
        wrong type or value. Keys from newer versions are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"a manifest is a JSON object, not {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for key, (types, required) in _SCHEMA.items():
            if key not in data:
                if required:
                    raise ValueError(f"the manifest has no {key!r}")
                continue
            value = data[key]
            if not _is(value, types):
                raise ValueError(f"manifest field {key!r} must be {_describe(types)}, not "
                                 f"{type(value).__name__}")
            kwargs[key] = value
        if kwargs["kind"] not in KINDS:
            raise ValueError(f"manifest field 'kind' is {kwargs['kind']!r}; expected one of "
                             f"{', '.join(KINDS)}")
        name = kwargs["name"]
        if not name or "/" in name or name in (".", "..") or "\x00" in name:
            raise ValueError(f"manifest field 'name' is {name!r}, not a directory name")
        for key in ("files", "dirs", "symlinks", "total_bytes"):
            if kwargs.get(key, 0) < 0:
                raise ValueError(f"manifest field {key!r} is negative")
        kwargs["prefix_files"] = [_prefix_file(p) for p in kwargs.get("prefix_files", [])]
        if not all(isinstance(x, str) for x in kwargs.get("excludes", [])):
            raise ValueError("manifest field 'excludes' must be a list of strings")
        frames = kwargs.get("frames", [])
        if not all(_is(x, (int,)) and x >= 0 for x in frames) or \
                any(b <= a for a, b in zip(frames, frames[1:])):
            raise ValueError("manifest field 'frames' must be a list of increasing offsets "
                             "(non-negative integers)")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a manifest; ValueError (one line) when it is too large, not JSON or not a
        manifest."""
        raw = text.encode() if isinstance(text, str) else text
        if len(raw) > MANIFEST_MAX:
            raise ValueError(f"the manifest holds {len(raw)} bytes, more than the "
                             f"{MANIFEST_MAX >> 20} MiB ezpz accepts")
        items = raw.count(b",") + raw.count(b"{") + raw.count(b"[")
        if items > MANIFEST_ITEMS:
            raise ValueError(f"the manifest holds about {items} values, more than the "
                             f"{MANIFEST_ITEMS} ezpz accepts")
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ValueError("the manifest nests too deeply") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"the manifest is not valid JSON ({str(exc).splitlines()[0]})") \
                from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, env_root: str | os.PathLike[str]) -> Manifest | None:
        """The manifest of an extracted environment, or None when it has none. It is read
        beneath ``env_root`` without following a symlink (OSError for one on the way) and
        refused (ValueError) when larger than MANIFEST_MAX."""
        with Anchor(os.fspath(env_root)) as root:
            try:
                data = root.read_bytes(MANIFEST_RELPATH, MANIFEST_MAX)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.EFBIG:
                    raise ValueError(f"{root.show(MANIFEST_RELPATH)}: larger than the "
                                     f"{MANIFEST_MAX >> 20} MiB ezpz accepts") from None
                raise
        return cls.from_json(data)


_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "kind": ((str,), True),
    "name": ((str,), True),
    "prefix": ((str,), True),
    "format": ((int,), False),
    "python_version": ((str, type(None)), False),
    "python_implementation": ((str, type(None)), False),
    "files": ((int,), False),
    "dirs": ((int,), False),
    "symlinks": ((int,), False),
    "total_bytes": ((int,), False),
    "prefix_files": ((list,), False),
    "bundled_python_prefix": ((str, type(None)), False),
    "codec": ((str, type(None)), False),
    "created_host": ((str, type(None)), False),
    "created_time": ((str, type(None)), False),
    "ezpz_version": ((str, type(None)), False),
    "excludes": ((list,), False),
    "source": ((dict,), False),
    "frames": ((list,), False),
}


def _is(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:  # JSON true is not a number here
        return False
    return isinstance(value, types)


def _describe(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", list: "a list", dict: "an object",
             type(None): "null"}
    return " or ".join(names[t] for t in types)


def _prefix_file(p: Any) -> PrefixFile:
    if isinstance(p, str):
        return PrefixFile(p)
    if not isinstance(p, dict) or not isinstance(p.get("path"), str) or \
            not isinstance(p.get("mode", "text"), str):
        raise ValueError("manifest field 'prefix_files' must list strings or objects with a "
                         "string 'path' and 'mode'")
    return PrefixFile(p["path"], p.get("mode", "text"))


def _is_manifest(m: Member) -> bool:
    parts = m.name.split("/")
    return m.isreg() and len(parts) == 3 and "/".join(parts[1:]) == MANIFEST_RELPATH


def read_manifest(path: str | os.PathLike[str]) -> Manifest | None:
    """The manifest of an archive, or None when its first member is not an ezpz manifest.

    Only the start of the archive is decoded, through the one tar reader; a manifest larger
    than MANIFEST_MAX is refused before it is read. Raises :class:`ArchiveError` (one line)
    when the file cannot be read, is not a tar archive in a known codec, or its manifest is
    malformed.
    """
    try:
        stream, _codec, fh = open_file(path)
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        reader = TarReader(stream, str(path), read_size=64 << 10)
        first = reader.next()
        if first is None or not _is_manifest(first):
            return None
        if first.size > MANIFEST_MAX:
            raise ArchiveError(f"{path}: the manifest member declares {first.size} bytes, more "
                               f"than the {MANIFEST_MAX >> 20} MiB ezpz accepts; the archive is "
                               "corrupt or was not made by ezpz-tar-env")
        data = reader.read_data(MANIFEST_MAX)
        return Manifest.from_json(data)
    except ArchiveError:
        raise
    except (EOFError, ValueError, TypeError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchiveError(f"{path}: not a readable ezpz archive ({msg})") from exc
    except Exception as exc:  # zstandard.ZstdError and friends
        if type(exc).__module__.startswith("zstandard"):
            raise ArchiveError(f"{path}: corrupt zstd data ({exc})") from exc
        raise
    finally:
        try:
            stream.close()
        finally:
            fh.close()


def iter_members(path: str | os.PathLike[str]) -> Iterator[tuple[Member, bytes | None]]:
    """(Member, data or None) for every member, streaming (tests and tools)."""
    stream, _codec, fh = open_file(path)
    try:
        yield from iter_archive(stream, str(path))
    finally:
        stream.close()
        fh.close()
