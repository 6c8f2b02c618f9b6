"""Rank 0's plan of the transfer (what is sent, how big, its identity) and the checks of a
user's ``src``/``dst`` seen from the launching host."""

from __future__ import annotations

import os
import re

from ..config import Codec, TransferConfig
from ..errors import ArchiveError, ConfigError
from ..formats.codecs import DETECT_BYTES, detect, strip_suffix
from ..fsutil import is_readonly
from ..ownership import private_dir_reason, protected_paths, protected_reason, user_dir
from .node import NOT_REPLACED, install_state
from .spec import Plan

#: Bytes hashed at each end of the archive for its identity.
HEAD_BYTES = 1 << 20
_UNSAFE_NAME = re.compile(r"[^\w.+@%,=-]")


def visible_name(name: str, parent: str | None = None) -> str:
    """A destination name that is visible and says what it holds: no leading dot (a ``.venv``
    of ``/home/u/proj`` becomes ``proj-venv``), no character a shell or ezpz treats
    specially."""
    name = _UNSAFE_NAME.sub("_", name).replace(".ezpz-", "_ezpz-")
    if name.startswith("."):
        name = name.lstrip(".")
        owner = _UNSAFE_NAME.sub("_", os.path.basename(parent or "")).lstrip(".")
        if owner and name:
            name = f"{owner}-{name}"
    return name[:100] or "env"


def env_name(src: str) -> str:
    """The environment's real name: the manifest's ``name`` (its prefix's directory for a
    dot-name), else the archive's name without ``.tar.*``; for a directory, its own name."""
    path = os.path.normpath(src)
    if os.path.isdir(path):
        return visible_name(os.path.basename(path), os.path.dirname(path))
    from ..formats.manifest import read_manifest

    try:
        man = read_manifest(path)
    except (ArchiveError, OSError, ValueError, TypeError):
        man = None
    name = getattr(man, "name", None)
    prefix = getattr(man, "prefix", None)
    if isinstance(name, str) and name and "/" not in name and name not in (".", ".."):
        return visible_name(name, os.path.dirname(prefix) if isinstance(prefix, str) else None)
    return visible_name(strip_suffix(os.path.basename(path)))


def default_dst(src: str, decompress: bool) -> str:
    """``/tmp/ezpz-<user>/<name>``: the environment's name (see :func:`env_name`), or the
    file's name with ``decompress=false``, in the per-user directory of the node's /tmp."""
    name = env_name(src) if decompress else visible_name(os.path.basename(os.path.normpath(src)))
    return os.path.join(user_dir(), name)


def check_source(archive: str, decompress: bool = True) -> None:
    """``transfer.src`` must be a readable regular file, and not empty when it is to be
    unpacked."""
    try:
        st = os.stat(archive)
        with open(archive, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConfigError(f"transfer.src: cannot read {archive}: {exc.strerror or exc} "
                          "(make it readable, e.g. chmod a+r, or give another archive)") from None
    if not os.path.isfile(archive):
        raise ConfigError(f"transfer.src: {archive} is not a regular file (give an archive, or "
                          "a file with transfer.decompress=false)")
    if st.st_size == 0 and decompress:
        raise ConfigError(f"transfer.src: {archive} is empty (0 bytes), not an archive; give "
                          "an archive made by ezpz-tar-env (or transfer.decompress=false to "
                          "deliver the empty file)")


def check_user_paths(cfg: TransferConfig, archive: str | None, env_dir: str | None = None
                     ) -> None:
    """What a user got wrong about ``src``/``dst``, seen from the launching host before
    anything starts: an unreadable or empty archive; a dst that must never be one (the root,
    a mount point, $HOME, the current directory, the running environment, anything holding
    the source), that exists and is not an ezpz install of the user's (never replaced,
    whatever ``overwrite`` says), of the wrong type, or in a read-only or unwritable place;
    a kept archive copy that would replace something. ``env_dir``: the environment that
    will be packed first. Raises :class:`ConfigError` (one line naming the key and the fix).
    Each node checks again before it writes."""
    if archive is not None:
        check_source(archive, cfg.decompress)
    source = archive or env_dir
    dst = cfg.dst or (default_dst(source, cfg.decompress) if source else None)
    if not dst:
        return
    dst = os.path.abspath(dst)
    sources = [p for p in (archive, env_dir) if p]
    why = protected_reason(dst, protected_paths(src=sources),
                           inside=[(env_dir, "the environment to pack")] if env_dir else [])
    if why:
        raise ConfigError(f"transfer.dst: {dst} {why}; ezpz never installs there (give a new "
                          f"directory such as {user_dir()}/<name>)")
    mine = user_dir()
    if dst.startswith(mine + "/"):
        why = private_dir_reason(mine)
        if why:
            raise ConfigError(f"transfer.dst: the per-user directory {mine} cannot be used "
                              f"({why}); remove it or choose another transfer.dst")
    if os.path.lexists(dst):
        if cfg.decompress and not os.path.isdir(dst):
            raise ConfigError(f"transfer.dst: {dst} exists and is not a directory (remove it "
                              "or choose another transfer.dst)")
        if not cfg.decompress and os.path.isdir(dst):
            raise ConfigError(f"transfer.dst: {dst} is a directory; a file cannot replace it "
                              "(choose another transfer.dst)")
        mark, why = install_state(dst, not cfg.decompress)
        if mark is None:
            raise ConfigError(f"transfer.dst: {dst} exists and is not an ezpz install of "
                              f"yours ({why}); {NOT_REPLACED}")
    if cfg.keep_archive and cfg.decompress and archive:
        _check_copy_place(os.path.join(os.path.dirname(dst), os.path.basename(archive)), dst,
                          archive)
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
                          f"a node-local writable place, e.g. transfer.dst={mine}/<name>)")


def _check_copy_place(copy: str, dst: str, archive: str) -> None:
    """keep_archive puts the archive next to dst: never over dst, the source, or a file
    ezpz did not keep there."""
    if copy == dst or os.path.realpath(copy) == os.path.realpath(archive):
        what = "transfer.dst" if copy == dst else "transfer.src"
        raise ConfigError(f"transfer.keep_archive: the copy {copy} would replace {what}; "
                          "choose another transfer.dst")
    if os.path.lexists(copy):
        mark, why = install_state(copy, True)
        if mark is None:
            raise ConfigError(f"transfer.keep_archive: {copy} exists and is not an archive "
                              f"ezpz kept ({why}); {NOT_REPLACED}")


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
    check_source(src, decompress)
    try:
        st = os.stat(src)
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
