"""The engines that write a checked tar stream: ezpz's own (``python``, with the C module
for plain members) and GNU tar fed the checked bytes through a pipe (``tar``)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import tarfile
import tempfile
import time
from typing import Any, BinaryIO

from ..config import Engine, choice
from ..errors import ArchiveError, ConfigError
from ..formats.codecs import READ_SIZE, decode_error
from ..fsutil import current_umask, free_bytes, write_all
from ..log import get_logger
from .checks import DROP_BITS, ExtractReport, MemberChecker, unsafe
from .reader import BLOCK, HeaderInfo, check_end, header_in_block, next_member
from .streams import ForwardReader

log = get_logger(__name__)


def _load_fast() -> Any:
    """The C helper for plain members, or None (not built, or ``EZPZ_EXTRACT_C=0``)."""
    if os.environ.get("EZPZ_EXTRACT_C", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from . import _fastx
    except ImportError:
        return None
    return _fastx



class SafeExtractor:
    """Extract one tar stream into ``dest`` (an existing, empty directory), checking members.

    ``run(decoded)`` reads the decompressed stream to its end and returns an
    :class:`ExtractReport`. ``label`` (usually the archive path) prefixes errors.
    """

    def __init__(self, dest: str, *, engine: str = "python", label: str = "archive") -> None:
        try:
            engine = choice(Engine, engine, "transfer.extractor")
        except ConfigError as exc:
            raise ArchiveError(str(exc)) from None
        self.dest = os.path.abspath(dest)
        self._prefix = self.dest.rstrip("/") + "/"
        self.engine = engine
        self.label = label
        self.checker = MemberChecker(self.dest)
        self.report = ExtractReport(engine=engine)
        self._dirs: list[tuple[str, int, float]] = []
        self._made: set[str] = {self.dest, self._prefix[:-1]}
        self._member = ""
        self._declared = 0
        self._free = free_bytes(self.dest)
        self._umask = current_umask()
        self._fast = _load_fast() if engine == "python" else None
        self._prefix_b = os.fsencode(self._prefix)

    def _check_space(self, ti: tarfile.TarInfo) -> None:
        """Refuse, before writing it, the member whose declared size no longer fits."""
        self._declared += ti.size
        if self._free is not None and self._declared > self._free:
            from ..config import format_size

            raise ArchiveError(
                f"{self.label}: member {ti.name!r} declares {format_size(ti.size)}, which brings "
                f"the archive to {format_size(self._declared)}, more than the "
                f"{format_size(self._free)} free in {self.dest}; refusing to extract (free space "
                "or choose another transfer.dst)")

    # python engine helpers -----------------------------------------------------------
    def _mkparents(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent in self._made:
            return
        os.makedirs(parent, mode=0o700, exist_ok=True)
        self._made.add(parent)

    def _clear(self, path: str, member: str, for_dir: bool = False) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if for_dir:
                return
            raise unsafe(member, "replaces a directory extracted earlier")
        os.unlink(path)

    def _write(self, tf: tarfile.TarFile, reader: ForwardReader, ti: tarfile.TarInfo,
               rel: str, mode: int) -> None:
        path = self._prefix + rel  # rel is relative, checked and without empty components
        self._mkparents(path)
        member = ti.name
        if ti.isdir():
            self._clear(path, member, for_dir=True)
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            self._made.add(path)
            self._dirs.append((path, mode, ti.mtime))
            self.report.dirs += 1
        elif ti.isreg():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            # created with its final mode when the umask keeps all of it (no fchmod then)
            direct = self._umask is not None and not mode & self._umask
            first = mode if direct else 0o600
            try:  # a fresh path is the rule: clear only when something is there
                fd = os.open(path, flags, first)
            except FileExistsError:
                self._clear(path, member)
                fd = os.open(path, flags, first)
            try:
                reader.seek(ti.offset_data)
                n = reader.copy_to(fd, ti.size)
                if n != ti.size:
                    raise ArchiveError(f"{self.label}: truncated archive (member {member!r} has "
                                       f"{n} of {ti.size} bytes); re-create or re-copy the archive")
                if not direct:
                    os.fchmod(fd, mode)
                os.utime(fd, (ti.mtime, ti.mtime))
            finally:
                os.close(fd)
            self.report.files += 1
            self.report.bytes += ti.size
        elif ti.issym():
            self._clear(path, member)
            os.symlink(ti.linkname, path)
            try:
                os.utime(path, (ti.mtime, ti.mtime), follow_symlinks=False)
            except OSError:  # pragma: no cover - filesystems without lutimes
                pass
            self.report.symlinks += 1
        elif ti.islnk():
            self._clear(path, member)
            os.link(os.path.join(self.dest, ti.linkname), path, follow_symlinks=False)
            self.report.hardlinks += 1

    def _fast_members(self, tf: tarfile.TarFile, reader: ForwardReader) -> None:
        """Let the C helper write the plain members that follow in the reader's block."""
        i = header_in_block(tf, reader)
        if i is None:
            return
        off = tf.offset
        budget = -1 if self._free is None else max(0, self._free - self._declared)
        c = self.checker
        pos, last, members, files, dirs, nbytes, declared = self._fast.run(
            reader._buf, i, self._prefix_b, self._made, self._dirs, c.files, c.symlinks,
            c.tops, -1 if self._umask is None else self._umask, budget)
        if not members:
            return
        reader._i = pos
        reader.last_header = bytes(reader._buf[last:last + BLOCK])
        tf.offset = off + (pos - i)
        r = self.report
        r.members += members
        r.fast_members += members
        r.files += files
        r.dirs += dirs
        r.bytes += nbytes
        self._declared += declared

    def _finish_dirs(self) -> None:
        for path, mode, mtime in sorted(self._dirs, key=lambda d: d[0], reverse=True):
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))

    # the loop --------------------------------------------------------------------------
    def run(self, decoded: BinaryIO, codec: str = "none") -> ExtractReport:
        t0 = time.perf_counter()
        proc = None
        errfile = None
        sink = None
        if self.engine == "tar":
            errfile = tempfile.TemporaryFile()
            proc = subprocess.Popen(
                ["tar", "-x", "-f", "-", "-C", self.dest, "--no-same-owner",
                 "--no-overwrite-dir"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errfile)
            assert proc.stdin is not None
            pipe_fd = proc.stdin.fileno()

            def sink(view: memoryview) -> None:
                write_all(pipe_fd, view)
        reader = ForwardReader(decoded, sink)
        fixups: list[tuple[str, int]] = []
        try:
            try:
                tf = tarfile.TarFile(fileobj=reader, mode="r", tarinfo=HeaderInfo,  # type: ignore[arg-type]
                                     errorlevel=2)
                fast = self._fast is not None and proc is None
                while True:
                    if fast:
                        self._fast_members(tf, reader)
                    ti = next_member(tf, reader)
                    tf.members.clear()  # keep memory flat: members are not needed later
                    if ti is None:
                        break
                    rel, mode = self.checker.check(ti)
                    self._member = ti.name
                    if ti.isreg():
                        self._check_space(ti)
                    self.report.members += 1
                    if ti.mode & DROP_BITS:
                        self.report.dropped_bits += 1
                    if proc is None:
                        self._write(tf, reader, ti, rel, mode)
                    else:
                        if ti.mode & DROP_BITS and not ti.issym():
                            fixups.append((rel, mode))
                        reader.allow(tf.offset)
                        self._count(ti)
                check_end(reader, tf, self.label)
                if proc is not None:
                    reader.finish_sink()
                else:
                    while reader.read(READ_SIZE):  # decode the rest (trailing zero blocks)
                        pass
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                if isinstance(exc, BrokenPipeError) and proc is not None:
                    raise ArchiveError(f"{self.label}: tar failed: "
                                       f"{self._tar_stderr(proc, errfile)}") from exc
                if isinstance(exc, OSError) and not _isdecode_error(exc):
                    where = f"member {self._member!r} into " if self._member else ""
                    fix = ("; free space or choose another transfer.dst"
                           if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "")
                    raise ArchiveError(f"{self.label}: cannot write {where}{self.dest}: "
                                       f"{exc.strerror or exc}{fix}") from exc
                raise decode_error(exc, self.label, codec) from exc
            except Exception as exc:  # zstandard.ZstdError, zlib.error
                if type(exc).__name__ in ("ZstdError", "error", "BadGzipFile"):
                    raise decode_error(exc, self.label, codec) from exc
                raise
            if proc is not None:
                assert proc.stdin is not None
                proc.stdin.close()
                rc = proc.wait()
                if rc != 0:
                    raise ArchiveError(f"{self.label}: tar failed (exit {rc}): "
                                       f"{self._tar_stderr(proc, errfile)}")
                for rel, mode in fixups:
                    path = os.path.join(self.dest, rel)
                    if not os.path.islink(path):
                        os.chmod(path, mode)
            else:
                self._finish_dirs()
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if errfile is not None:
                errfile.close()
        self.report.top = self.checker.single_top()
        self.report.tar_bytes = reader.delivered
        self.report.seconds = time.perf_counter() - t0
        return self.report

    def _count(self, ti: tarfile.TarInfo) -> None:
        r = self.report
        if ti.isdir():
            r.dirs += 1
        elif ti.issym():
            r.symlinks += 1
        elif ti.islnk():
            r.hardlinks += 1
        else:
            r.files += 1
            r.bytes += ti.size

    @staticmethod
    def _tar_stderr(proc: subprocess.Popen, errfile: Any) -> str:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
        errfile.seek(0)
        lines = [ln for ln in errfile.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[0] if lines else f"exit code {proc.returncode}"




def _isdecode_error(exc: OSError) -> bool:
    # igzip/gzip raise BadGzipFile (an OSError) for corrupt data
    return type(exc).__name__ in ("BadGzipFile",)

