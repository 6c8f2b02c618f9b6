"""One extraction: read each member once, check it, write what was accepted."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from ..anchored import Anchor, is_escape
from ..config import Engine, choice
from ..errors import ArchiveError, ConfigError
from ..formats.codecs import decode_error
from ..formats.tarread import TarReader
from ..fsutil import free_bytes
from .checks import DIR, FILE, HARDLINK, SYMLINK, ExtractReport, MemberChecker
from .decode import resolve_threads, write_threads
from .hints import HintCollector
from .tarpipe import TarPipeWriter
from .writers import PythonWriter, WriteError

#: The interpreter's thread switch interval while an extraction runs (seconds). The
#: extraction thread runs Python for every member; with the default 5 ms, the decoder's
#: thread (and the transfer's main thread) waits up to that long for the GIL after each
#: block it decoded, and decoding stops keeping ahead (venv-big: 3.7 s instead of 1.9 s).
SWITCH_INTERVAL = 0.001
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


@contextlib.contextmanager
def _short_switch_interval() -> Iterator[None]:
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            if _switch_saved > SWITCH_INTERVAL:
                sys.setswitchinterval(SWITCH_INTERVAL)
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0 and sys.getswitchinterval() == SWITCH_INTERVAL:
                sys.setswitchinterval(_switch_saved)


def _load_fast() -> Any:
    """The C writer, or None (not built, or ``EZPZ_EXTRACT_C=0``)."""
    if os.environ.get("EZPZ_EXTRACT_C", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        return importlib.import_module("ezpz.extract._fastx")
    except ImportError:
        return None


class SafeExtractor:
    """Extract one tar stream into ``dest`` (an existing, empty directory), checking members.

    ``run(decoded)`` reads the decompressed stream to its end and returns an
    :class:`ExtractReport`. ``label`` (usually the archive path) prefixes errors. ``writers``
    is the number of threads writing file data (default: :func:`~.decode.write_threads` of
    ``transfer.threads=auto``).
    """

    def __init__(self, dest: str, *, engine: str = "python", label: str = "archive",
                 hints: bool = False, writers: int | None = None) -> None:
        try:
            engine = choice(Engine, engine, "transfer.extractor")
        except ConfigError as exc:
            raise ArchiveError(str(exc)) from None
        self.dest = os.path.abspath(dest)
        self.engine = engine
        self.label = label
        self.checker = MemberChecker(self.dest, free_bytes(self.dest), label)
        self.report = ExtractReport(engine=engine)
        self._member = ""
        self._fast = _load_fast() if engine == "python" else None
        self.writers = writers if writers is not None else write_threads(resolve_threads(0))
        #: relocation hints collected on the way (``hints=True``; :mod:`.hints`)
        self.hints = HintCollector(self._fast or _load_fast()) if hints else None

    def run(self, decoded: BinaryIO, codec: str = "none") -> ExtractReport:
        t0 = time.perf_counter()
        reader = TarReader(decoded, self.label)
        writer: Any = None
        root: Anchor | None = None
        try:
            try:
                root = Anchor(self.dest)
                if self.engine == "tar" and root.listdir():
                    # GNU tar follows a symlink it finds on disk in a member's path (its
                    # CVE-2025-45582): it only ever writes into a directory of its own
                    raise ArchiveError(f"{self.label}: the tar engine extracts only into an "
                                       f"empty directory and {self.dest} is not empty; use "
                                       "transfer.extractor=python")
                if self.hints is not None:
                    if root.listdir():
                        self.hints.why = f"{self.dest} was not empty"
                    else:
                        reader.on_block = self.hints.block
                writer = PythonWriter(root, self.report, self._fast, self.writers) \
                    if self.engine == "python" else TarPipeWriter(self.dest, self.label)
                with _short_switch_interval():
                    self._loop(reader, writer)
                    writer.finish()
                    reader.drain()
            except ArchiveError:
                raise
            except WriteError as exc:
                raise self._write_error(exc, exc.member) from exc
            except (EOFError, OSError, ValueError) as exc:
                if isinstance(exc, OSError) and not _is_decode_error(exc):
                    raise self._write_error(exc, self._member) from exc
                raise decode_error(exc, self.label, codec) from exc
            except Exception as exc:  # zstandard.ZstdError, zlib.error
                if type(exc).__name__ in ("ZstdError", "error", "BadGzipFile"):
                    raise decode_error(exc, self.label, codec) from exc
                raise
        finally:
            if writer is not None:
                writer.close()
            if root is not None:
                root.close()
        self.report.top = self.checker.single_top()
        if self.hints is not None:
            self.report.hints = self.hints.result()
        self.report.tar_bytes = reader.delivered
        self.report.seconds = time.perf_counter() - t0
        return self.report

    def _loop(self, reader: TarReader, writer: Any) -> None:
        check = self.checker.check
        put = writer.put
        nxt = reader.next
        m = None
        hint = self.hints.member if self.hints is not None and not self.hints.why else None
        tell = reader.tell
        try:
            if hint is None:
                while True:
                    m = nxt()
                    if m is None:
                        return
                    put(check(m), reader)
            while True:
                m = nxt()
                if m is None:
                    return
                a = check(m)
                hint(a, tell())
                put(a, reader)
        except BaseException:
            self._member = m.name if m is not None else ""
            raise
        finally:
            c = self.checker
            r = self.report
            r.members = sum(c.counts)
            r.files, r.dirs, r.symlinks, r.hardlinks = c.counts[FILE], c.counts[DIR], \
                c.counts[SYMLINK], c.counts[HARDLINK]
            r.bytes = c.file_bytes
            r.dropped_bits = c.dropped_bits

    def _write_error(self, exc: OSError, member: str) -> ArchiveError:
        where = f"member {member!r} into " if member else ""
        if is_escape(exc):
            why = "a symlink or a file is in the way (nothing is written through a link)"
        else:
            why = exc.strerror or str(exc)
        fix = ("; free space or choose another transfer.dst"
               if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "")
        return ArchiveError(f"{self.label}: cannot write {where}{self.dest}: {why}{fix}")


def _is_decode_error(exc: OSError) -> bool:
    # igzip/gzip raise BadGzipFile (an OSError) for corrupt data
    return type(exc).__name__ in ("BadGzipFile",)
