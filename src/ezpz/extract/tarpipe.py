"""The ``tar`` engine: GNU tar writes, fed a canonical stream of what the checks accepted.

GNU tar never sees the archive's own bytes. Every accepted member is written again as a
plain ustar header by :func:`ezpz.formats.tarheader.tar_header` (a pax header only for names
and link targets over 100 bytes and sizes over 8 GiB): its resolved path below the
destination (no symlink of the archive on the way, no ``..``, no leading ``./``), the mode
with setuid/setgid dropped, ownership 0/0, hardlinks naming the resolved path of their
file, directories nobody declared emitted before their contents. There is no second reading
of a header that the checks and GNU tar could understand differently (the ustar prefix
field under GNU magic, base-256 or negative numbers, pax keywords), and GNU tar is never
left waiting on a size the checks refused.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from typing import Any

from ..errors import ArchiveError
from ..formats.tarheader import BLOCK, END_OF_ARCHIVE, tar_header
from ..formats.tarread import TarReader
from ..fsutil import write_all
from .checks import DIR, FILE, HARDLINK, ROOT, SYMLINK, Accepted

#: Bytes gathered before one write into the pipe.
FLUSH = 1 << 20


class TarPipeWriter:
    """Runs ``tar -x`` into ``dest`` and writes the canonical stream into its stdin."""

    def __init__(self, dest: str, label: str) -> None:
        self.label = label
        self._err = tempfile.TemporaryFile()
        # -p: the modes as given (the canonical stream holds no setuid/setgid bits);
        # --no-same-owner: whoever extracts owns the files
        self._proc = subprocess.Popen(
            ["tar", "-x", "-p", "--no-same-owner", "-f", "-", "-C", dest],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()
        self._buf = bytearray()
        self._now = int(time.time())

    def _write(self, data: Any) -> None:
        try:
            write_all(self._fd, data)
        except BrokenPipeError:
            raise ArchiveError(f"{self.label}: tar failed: {self._stderr()}") from None

    def _out(self, data: Any) -> None:
        self._buf += data
        if len(self._buf) >= FLUSH:
            self._write(self._buf)
            self._buf = bytearray()

    def put(self, a: Accepted, reader: TarReader) -> None:
        for d in a.implied:
            self._out(tar_header(os.fsencode(d), 0o700, 0, self._now, b"5"))
        kind = a.kind
        rel = os.fsencode(a.rel)
        if kind == FILE:
            self._out(tar_header(rel, a.mode, a.size, a.mtime, b"0"))
            view = reader.data_view()
            if view is not None and len(view) < FLUSH:
                self._out(view)
            else:
                self._write(self._buf)
                self._buf = bytearray()
                if view is not None:
                    self._write(view)
                else:
                    for part in reader.iter_data(a.name):
                        self._write(part)
            self._out(bytes(-a.size % BLOCK))
        elif kind == DIR:
            self._out(tar_header(rel, a.mode, 0, a.mtime, b"5"))
        elif kind == SYMLINK:
            self._out(tar_header(rel, 0o777, 0, a.mtime, b"2", os.fsencode(a.target)))
        elif kind == HARDLINK:
            self._out(tar_header(rel, a.mode, 0, a.mtime, b"1", os.fsencode(a.target)))
        elif kind == ROOT:
            self._out(tar_header(b"./", a.mode, 0, a.mtime, b"5"))

    def finish(self) -> None:
        self._out(END_OF_ARCHIVE)
        self._write(self._buf)
        self._buf = bytearray()
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = self._proc.wait()
        if rc != 0:
            raise ArchiveError(f"{self.label}: tar failed (exit {rc}): {self._stderr()}")

    def _stderr(self) -> str:
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self._proc.kill()
        self._err.seek(0)
        lines = [ln for ln in self._err.read().decode(errors="replace").splitlines()
                 if ln.strip()]
        return lines[0] if lines else f"exit code {self._proc.returncode}"

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        self._err.close()
