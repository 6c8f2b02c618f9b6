"""Rank 0's plan of the transfer (what is sent, how big, its identity) and the checks of a
user's ``src``/``dst`` seen from the launching host."""

from __future__ import annotations

import os

from ..config import Codec, TransferConfig
from ..errors import ArchiveError, ConfigError
from ..formats.codecs import DETECT_BYTES, detect, strip_suffix
from ..fsutil import is_readonly
from .spec import Plan

#: Bytes hashed at each end of the archive for its identity.
HEAD_BYTES = 1 << 20


def default_dst(src: str, decompress: bool) -> str:
    name = os.path.basename(os.path.normpath(src))
    return os.path.join("/tmp", strip_suffix(name) if decompress else name)


def check_user_paths(cfg: TransferConfig, archive: str | None) -> None:
    """What a user got wrong about ``src``/``dst``, seen from the launching host before
    anything starts: an unreadable archive, a dst of the wrong type, a read-only or
    unwritable location. Raises :class:`ConfigError` (one line naming the key and the fix).
    Each node checks again before it writes."""
    if archive is not None:
        try:
            with open(archive, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise ConfigError(f"transfer.src: cannot read {archive}: {exc.strerror or exc} "
                              "(make it readable, e.g. chmod a+r, or give another archive)") from None
    dst = cfg.dst or (default_dst(archive, cfg.decompress) if archive else None)
    if not dst:
        return
    dst = os.path.abspath(dst)
    if os.path.lexists(dst):
        if cfg.decompress and not os.path.isdir(dst):
            raise ConfigError(f"transfer.dst: {dst} exists and is not a directory (remove it "
                              "or choose another transfer.dst)")
        if not cfg.decompress and os.path.isdir(dst):
            raise ConfigError(f"transfer.dst: {dst} is a directory; a file cannot replace it "
                              "(choose another transfer.dst)")
    parent = os.path.dirname(dst)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"transfer.dst: {parent} is not a directory, so {dst} cannot be "
                          "created (choose another transfer.dst)")
    readonly = is_readonly(parent)
    if readonly or not os.access(parent, os.W_OK | os.X_OK):
        why = "is on a read-only filesystem" if readonly else "is not writable"
        raise ConfigError(f"transfer.dst: {parent} {why}, so {dst} cannot be written (choose "
                          "a node-local writable place, e.g. transfer.dst=/tmp/<name>)")


def archive_id(path: str, size: int, mtime_ns: int) -> str:
    """A cheap identity of the archive file: size, mtime and the first and last MiB."""
    import xxhash

    h = xxhash.xxh3_128()
    h.update(f"{size}:{mtime_ns}:".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(HEAD_BYTES))
        if size > HEAD_BYTES:
            fh.seek(max(HEAD_BYTES, size - HEAD_BYTES))
            h.update(fh.read(HEAD_BYTES))
    return h.hexdigest()


def _manifest_facts(path: str) -> tuple[str | None, int | None]:
    """(kind, total_bytes) from the archive's manifest, or (None, None) without one. Only these
    few facts travel in the plan: the manifest itself (its list of prefix files) can be far
    larger than a status message."""
    from ..formats.manifest import read_manifest

    try:
        man = read_manifest(path)
    except ArchiveError:  # a manifest is optional; extraction reports real errors
        return None, None
    if man is None:
        return None, None
    return man.kind, man.total_bytes


def make_plan(src: str, decompress: bool) -> Plan:
    """Rank 0's view of the source. Raises :class:`ConfigError` (the user's to fix: every rank
    reports it) when it cannot be read or is not what ``decompress`` needs."""
    try:
        st = os.stat(src)
    except OSError as exc:
        raise ConfigError(f"transfer.src: cannot read {src}: {exc.strerror}") from None
    if not os.path.isfile(src):
        raise ConfigError(f"transfer.src: {src} is not a regular file (give an archive, or a "
                          "file with transfer.decompress=false)")
    try:
        with open(src, "rb") as fh:
            head = fh.read(DETECT_BYTES)
        ident = archive_id(src, st.st_size, st.st_mtime_ns)
    except OSError as exc:
        raise ConfigError(f"transfer.src: cannot read {src}: {exc.strerror}") from None
    if not decompress:
        return Plan(src=os.path.abspath(src), bytes=st.st_size, id=ident, codec="file")
    codec = detect(head)
    if codec not in (Codec.zstd, Codec.gzip, Codec.none):
        raise ConfigError(f"transfer.src: {src} is not a tar, .tar.gz or .tar.zst archive "
                          f"(detected {codec}); pass transfer.decompress=false to copy it "
                          "as a file")
    kind, total = _manifest_facts(src)
    return Plan(src=os.path.abspath(src), bytes=st.st_size, id=ident, codec=codec, kind=kind,
                total_bytes=total)
