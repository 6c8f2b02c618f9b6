"""Rewriting the old prefix: text (shebangs rebuilt as pip writes them), binaries (conda's
padded in-place rule), conda-meta records."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable

from ..errors import RelocateError
from ..formats.prefix import SKIP_SUFFIXES as SKIP_SUFFIXES  # re-exported
from ..log import get_logger

log = get_logger(__name__)

#: Linux's shebang limit before 5.1 (what pip assumes): ``#!`` + path + args + newline.
MAX_SHEBANG = 127
#: Characters the activate scripts and conda's text files cannot hold unquoted.
FORBIDDEN_IN_PREFIX = {"'": "a single quote", '"': "a double quote", "\\": "a backslash",
                        "$": "'$'", "`": "a backquote", "\n": "a newline", "\r": "a carriage return",
                        "\0": "a NUL byte"}
# A prefix only matches where it ends a path component: not followed by a name character.
_BOUNDARY = rb"(?![A-Za-z0-9_.+\-])"
TMP_SUFFIX = ".ezpz-relocate"
TRAMPOLINE = re.compile(rb"\A#!/bin/sh\n'''exec' (?P<cmd>[^\n]*?) \"\$0\" \"\$@\"\n' '''")
_PLACEHOLDER_VALUE = re.compile(rb'"prefix_placeholder"\s*:\s*"(?:[^"\\]|\\.)*"')
SCAN_CHUNK = 1 << 20


class Rewriter:
    """Old → new prefix mappings applied as one regex, longest prefix first."""

    def __init__(self, pairs: Iterable[tuple[str, str]]):
        self.map = {os.fsencode(o): os.fsencode(n) for o, n in pairs}
        alts = b"|".join(re.escape(o) for o in sorted(self.map, key=len, reverse=True))
        self.regex = re.compile(b"(?:" + alts + b")" + _BOUNDARY)

    def sub(self, data: bytes) -> bytes:
        return self.regex.sub(lambda m: self.map[m.group(0)], data)

    def text(self, data: bytes, conda_meta: bool = False) -> bytes:
        if conda_meta:
            return self._sub_outside(data, _PLACEHOLDER_VALUE)
        if data.startswith(b"#!"):
            head, body = _rewrite_shebang(data, self)
            return head + self.sub(body)
        return self.sub(data)

    def _sub_outside(self, data: bytes, protected: re.Pattern[bytes]) -> bytes:
        out, pos = [], 0
        for m in protected.finditer(data):
            out.append(self.sub(data[pos:m.start()]))
            out.append(m.group(0))
            pos = m.end()
        out.append(self.sub(data[pos:]))
        return b"".join(out)

    def binary(self, data: bytes, rel: str) -> bytes:
        """Rewrite each NUL-terminated string holding a prefix, padded to its old length."""
        out, pos = [], 0
        for m in self.regex.finditer(data):
            if m.start() < pos:
                continue
            end = data.find(b"\0", m.start())
            if end < 0:
                end = len(data)
            seg = data[m.start():end]
            new = self.sub(seg)
            if len(new) > len(seg):
                o = m.group(0)
                raise RelocateError(
                    f"cannot relocate {rel}: it is a binary file holding the old prefix "
                    f"{o.decode(errors='replace')!r} ({len(o)} bytes) and the new prefix "
                    f"{self.map[o].decode(errors='replace')!r} ({len(self.map[o])} bytes) is "
                    "longer; choose a destination path no longer than the old prefix")
            out.append(data[pos:m.start()])
            out.append(new + b"\0" * (len(seg) - len(new)))
            pos = end
        out.append(data[pos:])
        return b"".join(out)



def _rewrite_shebang(data: bytes, rw: Rewriter) -> tuple[bytes, bytes]:
    """Split ``data`` into (rewritten shebang header, rest). The header is rebuilt as pip would."""
    m = TRAMPOLINE.match(data)
    if m:
        try:
            words = shlex.split(m.group("cmd").decode())
        except (ValueError, UnicodeDecodeError):
            return b"", data
        rest = data[m.end():]
    else:
        nl = data.find(b"\n")
        line = data[2:nl if nl >= 0 else len(data)]
        rest = data[nl:] if nl >= 0 else b""
        raw_words = line.strip().split(maxsplit=1)
        try:
            words = [w.decode() for w in raw_words]
        except UnicodeDecodeError:
            return b"", data
        if not words:
            return b"", data
    exe, args = os.fsencode(words[0]), [os.fsencode(w) for w in words[1:]]
    new_exe = rw.sub(exe)
    if new_exe == exe:
        return b"", data
    return _build_shebang(new_exe, args), rest


def _build_shebang(exe: bytes, args: list[bytes]) -> bytes:
    """The first line(s) of a script run by ``exe``, without the newline that follows.

    The ``exec`` trampoline is valid Python only: any other interpreter keeps a plain
    shebang (newer kernels accept up to 255 bytes).
    """
    post = b"".join(b" " + a for a in args)
    fits = b" " not in exe and b"\t" not in exe and len(exe) + len(post) + 3 <= MAX_SHEBANG
    if fits or not os.path.basename(exe).startswith((b"python", b"pypy")):
        if not fits:
            log.warning("shebang #!%s is longer than %d bytes or holds a space; it may not run",
                        os.fsdecode(exe), MAX_SHEBANG)
        return b"#!" + exe + post
    quoted = os.fsencode(shlex.quote(os.fsdecode(exe)))
    quoted_args = b"".join(b" " + os.fsencode(shlex.quote(os.fsdecode(a))) for a in args)
    return b"#!/bin/sh\n'''exec' " + quoted + quoted_args + b' "$0" "$@"\n' + b"' '''"


