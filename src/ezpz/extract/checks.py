"""The rules every member must pass before anything is written (see ``ezpz.extract``)."""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass

from ..errors import ArchiveError

PATH_MAX = 4096
NAME_MAX = 255
DROP_BITS = stat.S_ISUID | stat.S_ISGID


@dataclass
class ExtractReport:
    members: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    #: File bytes written.
    bytes: int = 0
    #: Bytes of the decompressed tar stream.
    tar_bytes: int = 0
    #: The single top-level directory of the archive, or None when there is not exactly one.
    top: str | None = None
    #: Members whose setuid/setgid bits were dropped.
    dropped_bits: int = 0
    seconds: float = 0.0
    engine: str = "python"
    #: Members written by the C helper (``ezpz._fastx``); the rest went through Python.
    fast_members: int = 0


def show_name(member: str) -> str:
    """The member's name for an error line; very long names are shortened in the middle."""
    if len(member) <= 300:
        return repr(member)
    return f"{member[:160] + '...' + member[-80:]!r} ({len(member)} characters)"


def unsafe(member: str, why: str) -> ArchiveError:
    return ArchiveError(f"unsafe archive member {show_name(member)}: {why}; refusing to extract "
                        "(only extract archives made by ezpz-tar-env or that you trust)")


#: Member types accepted without further type checks (sparse members aside).
_PLAIN_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.DIRTYPE,
                          tarfile.SYMTYPE, tarfile.LNKTYPE))


class MemberChecker:
    """Validates members in archive order; keeps the symlinks and files seen so far."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.symlinks: dict[str, str] = {}
        self._resolved: dict[str, list[str]] = {}  # parent dir -> resolved; reset with symlinks
        self.files: set[str] = set()
        self.tops: dict[str, bool] = {}  # top-level name -> is a directory
        self.has_root = False  # a "./" member: the archive holds the contents of one directory
        self._dest_len = len(os.fsencode(os.path.abspath(dest)))

    def _components(self, name: str, member: str, root_ok: bool = False) -> list[str]:
        if not name:
            raise unsafe(member, "empty name")
        if "\x00" in name:
            raise unsafe(member, "NUL byte in the name")
        if name.startswith("/") or name.startswith("\\"):
            raise unsafe(member, "absolute path")
        parts = name.split("/")
        if "" in parts or "." in parts:
            parts = [p for p in parts if p not in ("", ".")]
        if ".." in parts:
            raise unsafe(member, "'..' component escapes the destination")
        if not parts:
            if root_ok:  # "./", as `tar -C env -cf env.tar .` stores the top directory
                return parts
            raise unsafe(member, "names the destination itself")
        # the parts' lengths are bounded by the whole name's (in bytes; ASCII: one per char)
        raw_len = len(name) if name.isascii() else len(os.fsencode(name))
        if raw_len > NAME_MAX and any(len(os.fsencode(p)) > NAME_MAX for p in parts):
            raise unsafe(member, f"a path component is longer than {NAME_MAX} bytes")
        if self._dest_len + 1 + raw_len >= PATH_MAX and \
                self._dest_len + 1 + len(os.fsencode("/".join(parts))) >= PATH_MAX:
            raise unsafe(member, f"path longer than PATH_MAX ({PATH_MAX}) under the destination")
        return parts

    def _resolve(self, parts: list[str], member: str) -> list[str]:
        """Resolve directory ``parts`` through the archive's symlinks, lexically."""
        if not self.symlinks:
            return parts
        key = "/".join(parts)
        hit = self._resolved.get(key)
        if hit is None:
            hit = self._resolved[key] = self._resolve_walk(parts, member)
        return hit

    def _resolve_walk(self, parts: list[str], member: str) -> list[str]:
        out: list[str] = []
        todo = list(parts)
        hops = 0
        via = None
        while todo:
            c = todo.pop(0)
            if c in ("", "."):
                continue
            if c == "..":
                if not out:
                    raise unsafe(member, f"written through symlink {via!r} which points outside "
                                       "the destination")
                out.pop()
                continue
            key = "/".join(out + [c])
            target = self.symlinks.get(key)
            if target is None:
                out.append(c)
                continue
            hops += 1
            via = key
            if hops > 40:
                raise unsafe(member, "too many levels of symbolic links")
            if target.startswith("/"):
                raise unsafe(member, f"written through symlink {key!r} -> {target!r} which points "
                                   "outside the destination")
            todo = target.split("/") + todo
        return out

    @staticmethod
    def _check_type(ti: tarfile.TarInfo, member: str) -> None:
        if ti.ischr() or ti.isblk():
            raise unsafe(member, "device node")
        if ti.isfifo():
            raise unsafe(member, "FIFO (named pipe)")
        if ti.issparse():
            raise unsafe(member, "sparse file (not supported)")
        if not (ti.isreg() or ti.isdir() or ti.issym() or ti.islnk()):
            raise unsafe(member, f"unsupported member type {ti.type!r}")
        if ti.isreg() and ti.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            raise unsafe(member, f"unsupported member type {ti.type!r}")

    def check(self, ti: tarfile.TarInfo) -> tuple[str, int]:
        """(relative path, mode to apply) for a member, or ArchiveError naming it."""
        member = ti.name
        parts = self._components(ti.name, member, root_ok=ti.type == tarfile.DIRTYPE)
        if not parts:  # the destination directory itself: it takes the member's mode and mtime
            self.has_root = True  # and the archive's entries are its contents
            return "", ti.mode & 0o7777 & ~DROP_BITS
        if ti.type not in _PLAIN_TYPES or ti.sparse is not None:  # type: ignore[attr-defined]
            self._check_type(ti, member)
        parent = self._resolve(parts[:-1], member)
        rel = "/".join(parent + [parts[-1]])
        if ti.islnk():
            link = ti.linkname
            if not link or link.startswith("/"):
                raise unsafe(member, f"hardlink to absolute path {link!r}")
            lparts = [p for p in link.split("/") if p not in ("", ".")]
            if ".." in lparts:
                raise unsafe(member, f"hardlink target {link!r} escapes the destination")
            lres = "/".join(self._resolve(lparts[:-1], member) + lparts[-1:])
            if lres not in self.files:
                raise unsafe(member, f"hardlink target {link!r} is not a file extracted earlier")
        if ti.issym():
            if not ti.linkname:
                raise unsafe(member, "symlink with an empty target")
            self.symlinks[rel] = ti.linkname
            self._resolved.clear()
        elif self.symlinks.pop(rel, None) is not None:
            self._resolved.clear()
        if ti.isreg() or ti.islnk():
            self.files.add(rel)
        else:
            self.files.discard(rel)
        top = parts[0]
        is_dir = len(parts) > 1 or ti.isdir()
        self.tops[top] = self.tops.get(top, True) and is_dir
        mode = ti.mode & 0o7777
        return rel, mode & ~DROP_BITS

    def single_top(self) -> str | None:
        if len(self.tops) == 1 and not self.has_root:
            (name, is_dir), = self.tops.items()
            if is_dir:
                return name
        return None


