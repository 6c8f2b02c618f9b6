"""Rewriting a file from one descriptor into another in bounded memory.

Relocation reads a file holding the old prefix and writes its new version next to it; a
file may be as large as the environment's largest library, so nothing here holds more than
a chunk (plus a few KiB carried over) at a time. The results are byte for byte those of the
in-memory rules of :mod:`ezpz.relocate.rewrite`:

- text: every match of the prefix regex replaced (matches that could continue past the end
  of a chunk are carried into the next one); the shebang is rebuilt from the first chunk;
- binary: the same replacements, and each NUL-terminated string that shrank padded with NULs
  before its terminator (or at the end of the file), so the file keeps its length; a
  replacement that would grow a string is refused;
- run paths: NUL-terminated strings (up to ``SEGMENT_MAX``) whose ``:``-separated entries
  name the bundled interpreter's library directory are rewritten by a given function.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator

from ..errors import RelocateError
from ..fsutil import write_all

#: Bytes read at a time.
CHUNK = 1 << 20
#: Longest NUL-terminated string a run-path rewrite looks at (longer ones are left alone).
SEGMENT_MAX = 64 * 1024


def chunks(fd: int, first: bytes = b"") -> Iterator[bytes]:
    if first:
        yield first
    while True:
        block = os.read(fd, CHUNK)
        if not block:
            return
        yield block


class _Out:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.changed = False

    def __call__(self, data: bytes) -> None:
        if data:
            write_all(self.fd, data)


def stream_sub(src: Iterator[bytes], out: Callable[[bytes], None], regex: re.Pattern[bytes],
               repl: Callable[[re.Match[bytes]], bytes], longest: int,
               on_raw: Callable[[bytes], bytes] | None = None,
               on_match: Callable[[bytes, bytes], None] | None = None) -> bool:
    """Apply ``regex.sub(repl, data)`` to the concatenation of ``src`` in bounded memory;
    ``longest`` bounds a match's length. ``on_raw`` may transform the bytes between matches
    (binary padding); ``on_match(old, new)`` sees every replacement. Returns whether anything
    changed."""
    keep = longest + 1  # a match and the byte its boundary looks at
    changed = False

    def emit(buf: bytes, limit: int) -> int:
        """Write ``buf`` with the matches that start before ``limit`` replaced, up to the
        later of the last match's end and ``limit``; returns where that is."""
        nonlocal changed
        parts: list[bytes] = []
        pos = 0
        for m in regex.finditer(buf):
            if m.start() >= limit:
                break
            raw = buf[pos:m.start()]
            parts.append(on_raw(raw) if on_raw else raw)
            old, new = m.group(0), repl(m)
            if on_match:
                on_match(old, new)
            changed = changed or new != old
            parts.append(new)
            pos = m.end()
        cut = max(pos, limit, 0)
        raw = buf[pos:cut]
        parts.append(on_raw(raw) if on_raw else raw)
        out(b"".join(parts))
        return cut

    carry = b""
    for chunk in src:
        buf = carry + chunk if carry else chunk
        # a match that starts in the last `keep` bytes may go on in the next chunk
        carry = buf[emit(buf, len(buf) - keep):]
    emit(carry, len(carry))  # the end of the file: every match
    return changed


class BinaryPadding:
    """The NUL padding of binary rewrites: the bytes a string lost are put back before its
    terminating NUL (or at the end of the file)."""

    def __init__(self, rel: str, old_prefix: str, new_prefix: str) -> None:
        self.deficit = 0
        self.rel = rel
        self.old, self.new = old_prefix, new_prefix

    def on_match(self, old: bytes, new: bytes) -> None:
        if len(new) > len(old):
            raise RelocateError(
                f"cannot relocate {self.rel}: it is a binary file holding the old prefix "
                f"{old.decode(errors='replace')!r} ({len(old)} bytes) and the new prefix "
                f"{new.decode(errors='replace')!r} ({len(new)} bytes) is longer; choose a "
                "destination path no longer than the old prefix")
        self.deficit += len(old) - len(new)

    def on_raw(self, raw: bytes) -> bytes:
        if not self.deficit:
            return raw
        k = raw.find(b"\0")
        if k < 0:
            return raw
        pad, self.deficit = b"\0" * self.deficit, 0
        return raw[:k] + pad + raw[k:]

    def tail(self) -> bytes:
        pad, self.deficit = b"\0" * self.deficit, 0
        return pad


def rewrite_segments(src: Iterator[bytes], out: Callable[[bytes], None], needle: bytes,
                     fn: Callable[[bytes], bytes | None]) -> bool:
    """Pass ``src`` to ``out``, with every NUL-terminated string that holds ``needle`` (and
    is at most SEGMENT_MAX bytes) replaced by ``fn(string)`` when that is not None (same
    length). Returns whether anything changed."""
    carry = b""
    long_run = False  # the current string was already passed on in part (too long)
    changed = False
    keep = len(needle)
    for chunk in src:
        buf = carry + chunk if carry else chunk
        parts: list[bytes] = []
        pos = 0
        while True:
            nul = buf.find(b"\0", pos)
            if nul < 0:
                break
            seg = buf[pos:nul]
            if not long_run and needle in seg:
                new = fn(seg)
                if new is not None and new != seg:
                    seg = new
                    changed = True
            long_run = False
            parts.append(seg + b"\0")
            pos = nul + 1
        rest = buf[pos:]
        if len(rest) > SEGMENT_MAX:  # no NUL for long: pass it on, keep a needle's length
            parts.append(rest[:-keep])
            rest = rest[-keep:]
            long_run = True
        out(b"".join(parts))
        carry = rest
    if carry:
        if not long_run and needle in carry:
            new = fn(carry)
            if new is not None and new != carry:
                carry = new
                changed = True
        out(carry)
    return changed
