"""Whose files these are: what ezpz may replace or remove, and where it never writes.

ezpz replaces or removes only what it installed itself. A path counts as ezpz's only when it
is what ezpz would have made (a real directory or a regular file, never a symbolic link),
belongs to the running user and cannot be written by anyone else (:func:`foreign_reason`).
Some paths are never a destination whatever they hold (:func:`protected_reason`): the
filesystem root, mount points, the home directory, the current directory, the running
interpreter's environment, the source and the directories above them.

The default destinations live in one directory per user on the node's ``/tmp``
(:func:`user_dir`), created ``0700`` and checked before every use (:func:`private_dir_reason`).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
import sys
from collections.abc import Iterable
from typing import Any

#: The node-local directory the per-user directory lives in (not ``$TMPDIR``: the point is
#: the node's own ``/tmp``).
NODE_TMP = "/tmp"
#: Bytes read at most from one of ezpz's small JSON files (a marker).
SMALL_JSON_MAX = 64 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+@%,=-]")


def user_name() -> str:
    """The running user's login name (from the user database, not the environment), made
    safe as a file name; ``uid<N>`` when the database does not know it."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = ""
    name = _SAFE_NAME.sub("_", name).lstrip(".")
    return name or f"uid{uid}"


def user_dir() -> str:
    """``/tmp/ezpz-<user>``: where default destinations go on every node."""
    return os.path.join(NODE_TMP, f"ezpz-{user_name()}")


def owner_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def foreign_reason(st: os.stat_result, *, want: str) -> str | None:
    """Why an entry whose ``lstat`` is ``st`` is not ezpz's (None: it may be).

    ``want`` is ``dir`` or ``file``: the kind of entry ezpz would have made there.
    """
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "it is a symbolic link"
    if want == "dir" and not stat.S_ISDIR(mode):
        return "it is not a directory"
    if want == "file" and not stat.S_ISREG(mode):
        return "it is not a regular file"
    if st.st_uid != os.geteuid():
        return f"it belongs to {owner_name(st.st_uid)}, not to {owner_name(os.geteuid())}"
    if mode & 0o022:
        return f"others can write to it (mode {stat.S_IMODE(mode):04o})"
    if want == "file" and st.st_nlink != 1:
        return f"it has {st.st_nlink} hard links"
    return None


def lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def private_dir_reason(path: str) -> str | None:
    """Why the existing per-user directory ``path`` cannot be used (None: it can): it must be
    a real directory of the running user that nobody else can write to."""
    st = lstat_or_none(path)
    if st is None:
        return None
    return foreign_reason(st, want="dir")


def ensure_private_dir(path: str) -> str | None:
    """Create ``path`` with mode 0700 if it is missing, then check it. Returns why it cannot
    be used, or None. Its parent must exist (``/tmp``)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"it cannot be created ({exc.strerror or exc})"
    return private_dir_reason(path)


def read_private_json(path: str, limit: int = SMALL_JSON_MAX) -> tuple[dict[str, Any] | None,
                                                                        str | None]:
    """``(data, None)`` for a JSON object at ``path`` that is ezpz's (see
    :func:`foreign_reason`), else ``(None, why not)``. Never follows a symbolic link, never
    blocks on a FIFO, never reads more than ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, "it is missing"
    except OSError as exc:
        st = lstat_or_none(path)
        if st is not None and stat.S_ISLNK(st.st_mode):
            return None, "it is a symbolic link"
        return None, f"it cannot be read ({exc.strerror or exc})"
    try:
        why = foreign_reason(os.fstat(fd), want="file")
        if why:
            return None, why
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        return None, f"it is larger than {limit} bytes"
    try:
        obj = json.loads(data)
    except ValueError:
        return None, "it is not JSON"
    if not isinstance(obj, dict):
        return None, "it is not a JSON object"
    return obj, None


# --------------------------------------------------------------------------------------
# paths that are never a destination
# --------------------------------------------------------------------------------------
def _forms(path: str) -> set[str]:
    """The absolute and the resolved spelling of ``path``."""
    return {os.path.abspath(path), os.path.realpath(path)}


def _under(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def protected_paths(*, src: Iterable[str] = (), run_dir: str | None = None
                    ) -> list[tuple[str, str]]:
    """``(path, what it is)`` of the paths a destination may neither be nor contain."""
    out = [("/", "the filesystem root")]
    homes = {os.path.expanduser("~")}
    try:
        homes.add(pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:
        pass
    out += [(h, "your home directory") for h in sorted(homes) if h and h != "/"]
    try:
        out.append((os.getcwd(), "the current directory"))
    except OSError:  # the current directory was removed
        pass
    out += [(p, "the running Python's environment")
            for p in sorted({sys.prefix, sys.base_prefix})]
    out += [(s, "transfer.src") for s in src]
    if run_dir:
        out.append((run_dir, "the run directory"))
    out.append((user_dir(), "ezpz's per-user directory"))
    return out


def protected_reason(dst: str, protected: Iterable[tuple[str, str]],
                     inside: Iterable[tuple[str, str]] = ()) -> str | None:
    """Why ``dst`` must never be a destination, or None.

    ``dst`` may be neither one of ``protected`` nor a directory above one, nor lie under one
    of ``inside``; nor may it be a mount point.
    """
    protected = list(protected)
    for cand in sorted(_forms(dst)):
        for path, what in protected:
            for p in sorted(_forms(path)):
                if cand == p:
                    return f"is {what}"
                if _under(p, cand):
                    return f"contains {what} ({p})"
        for path, what in inside:
            for p in sorted(_forms(path)):
                if _under(cand, p):
                    return f"is inside {what} ({p})"
    if os.path.lexists(dst) and not os.path.islink(dst) and os.path.ismount(dst):
        return "is a mount point"
    return None
