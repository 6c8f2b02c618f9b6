"""The per-node transfer worker: ``python -m ezpz.transfer``.

Rank 0 reads the archive once, chunk k+1 while chunk k is broadcast to one leader per node
(raw buffers, never pickled). Each leader hashes what it receives and feeds a decompress +
safe-extract thread (:mod:`ezpz.extract`) through a bounded queue, into a staging directory
next to ``dst``; after verification (xxh3-128) and relocation the staging tree is renamed to
``dst`` and a marker records the archive. The other ranks of a node wait for their leader.

Every rank learns about a failure: a control block (length, flags, digest, message) goes
before every data chunk, so a read error on rank 0 aborts the stream everywhere; node
statuses are exchanged at the end; every wait is bounded by ``transfer.timeout``.

Two command lines::

    python -m ezpz.transfer [hydra overrides ...]             # config 'yeet'
    python -m ezpz.transfer --config-file FILE [--run-dir DIR] [key=value ...]
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import math
import os
import queue
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from . import __version__
from .codecs import DETECT_BYTES, detect, strip_suffix
from .config import MachineConfig, TransferConfig, format_size
from .errors import EXIT_FAILURE, ConfigError, EzpzError, TransferError
from .log import get_logger

log = get_logger(__name__)

RESULTS_FILE = "results.json"
MARKER_RELPATH = ".ezpz/installed.json"
CONTROL_SIZE = 1024
F_DATA, F_END, F_ABORT = 0, 1, 2
_HEAD_BYTES = 1 << 20  # bytes hashed at each end of the archive for its identity


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
@dataclass
class NodeStatus:
    host: str
    status: str = "ok"  # ok | skipped | failed
    seconds: float = 0.0
    mb_s: float = 0.0
    error: Optional[str] = None
    rss_mb: float = 0.0


@dataclass
class TransferResult:
    status: str
    exit_code: int
    dst: str
    nodes: int
    ranks: int
    backend: str
    archive: dict[str, Any]
    phases: dict[str, float]
    per_node: list[NodeStatus] = field(default_factory=list)
    kind: Optional[str] = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_hosts(self) -> list[str]:
        return [n.host for n in self.per_node if n.status == "failed"]

    def to_json(self) -> dict[str, Any]:
        total = self.phases.get("total") or 0.0
        return {
            "ezpz_version": __version__,
            "host": socket.gethostname(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": self.status,
            "exit_code": self.exit_code,
            "config": self.config,
            "nodes": self.nodes,
            "ranks": self.ranks,
            "archive": self.archive,
            "dst": self.dst,
            "kind": self.kind,
            "phases": {k: round(v, 6) for k, v in self.phases.items()},
            "throughput_mb_s": round(self.archive.get("bytes", 0) / total / 1e6, 3) if total else 0.0,
            "per_node": [asdict(n) for n in self.per_node],
            "failed_hosts": self.failed_hosts,
        }


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------
# plan (rank 0): what is sent, how big, its identity
# --------------------------------------------------------------------------------------
def default_dst(src: str, decompress: bool) -> str:
    name = os.path.basename(os.path.normpath(src))
    return os.path.join("/tmp", strip_suffix(name) if decompress else name)


def check_user_paths(cfg: TransferConfig, archive: Optional[str]) -> None:
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
    try:
        readonly = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
    except OSError:
        readonly = False
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
        h.update(fh.read(_HEAD_BYTES))
        if size > _HEAD_BYTES:
            fh.seek(max(_HEAD_BYTES, size - _HEAD_BYTES))
            h.update(fh.read(_HEAD_BYTES))
    return h.hexdigest()


def _peek_manifest(path: str) -> Optional[dict[str, Any]]:
    """What the nodes need from the archive's manifest (kind, total_bytes for the space
    check), or None when it has none. Only these few facts travel in the plan: the manifest
    itself (its list of prefix files) can be far larger than a status message."""
    from .archive import read_manifest

    try:
        man = read_manifest(path)
    except Exception:  # noqa: BLE001 - a manifest is optional; extraction reports real errors
        return None
    if man is None:
        return None
    return {"kind": man.kind, "total_bytes": man.total_bytes}


def make_plan(cfg: TransferConfig) -> dict[str, Any]:
    """Rank 0's view of the source; {'error': ...} when it cannot be read."""
    src = cfg.src
    assert src is not None
    try:
        st = os.stat(src)
    except OSError as exc:
        return {"error": f"transfer.src: cannot read {src}: {exc.strerror}", "usage": True}
    if not os.path.isfile(src):
        return {"error": f"transfer.src: {src} is not a regular file (give an archive, or a "
                         "file with transfer.decompress=false)", "usage": True}
    try:
        with open(src, "rb") as fh:
            head = fh.read(DETECT_BYTES)
        ident = archive_id(src, st.st_size, st.st_mtime_ns)
    except OSError as exc:
        return {"error": f"transfer.src: cannot read {src}: {exc.strerror}", "usage": True}
    plan: dict[str, Any] = {"src": os.path.abspath(src), "bytes": st.st_size, "id": ident,
                            "codec": "file", "manifest": None}
    if cfg.decompress:
        codec = detect(head)
        if codec not in ("zstd", "gzip", "none"):
            return {"error": f"transfer.src: {src} is not a tar, .tar.gz or .tar.zst archive "
                             f"(detected {codec}); pass transfer.decompress=false to copy it "
                             "as a file", "usage": True}
        plan["codec"] = codec
        plan["manifest"] = _peek_manifest(src)
    return plan


# --------------------------------------------------------------------------------------
# per-node install: lock, staging, marker, atomic rename
# --------------------------------------------------------------------------------------
class NodeInstall:
    """Everything one leader does on its node's filesystem around the stream."""

    def __init__(self, cfg: TransferConfig, plan: dict[str, Any], dst: str) -> None:
        self.cfg = cfg
        self.plan = plan
        self.dst = os.path.abspath(dst)
        self.parent = os.path.dirname(self.dst)
        self.name = os.path.basename(self.dst)
        self.file_mode = not cfg.decompress
        self.staging = os.path.join(self.parent, f".{self.name}.ezpz-staging-{os.getpid()}")
        self.lock_path = os.path.join(self.parent, f".{self.name}.ezpz-lock")
        self.archive_copy: Optional[str] = None
        self._lock_fd: Optional[int] = None
        self.cleanup_paths: list[str] = []

    # -- marker ------------------------------------------------------------------------
    @property
    def marker_path(self) -> str:
        if self.file_mode:
            return os.path.join(self.parent, f".{self.name}.ezpz-installed.json")
        return os.path.join(self.dst, MARKER_RELPATH)

    def read_marker(self) -> Optional[dict[str, Any]]:
        try:
            with open(self.marker_path) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def marker(self, digest: str) -> dict[str, Any]:
        return {"archive_id": self.plan["id"], "xxh3_128": digest, "src": self.plan["src"],
                "bytes": self.plan["bytes"], "codec": self.plan["codec"],
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": socket.gethostname(), "ezpz_version": __version__}

    # -- lock --------------------------------------------------------------------------
    def lock(self, timeout: float) -> None:
        os.makedirs(self.parent, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TransferError(f"another transfer into {self.dst} is still running "
                                        f"(lock {self.lock_path} held for {timeout:g}s); wait "
                                        "for it or choose another transfer.dst")
                time.sleep(0.05)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def clean_stale(self) -> None:
        """Under the lock, leftovers of earlier killed transfers into dst are stale."""
        pats = [f".{self.name}.ezpz-staging-*", f".{self.name}.ezpz-old-*"]
        if self.cfg.keep_archive:
            pats.append(f".{os.path.basename(self.plan['src'])}.ezpz-partial-*")
        for pat in pats:
            for path in glob.glob(os.path.join(glob.escape(self.parent), pat)):
                log.info("removing stale %s", path)
                _remove(path)

    # -- preflight ---------------------------------------------------------------------
    def preflight(self) -> str:
        """'skip' (already installed), or 'go'; raises TransferError to refuse."""
        if os.path.lexists(self.dst):
            if self.file_mode and os.path.isdir(self.dst):
                raise TransferError(f"transfer.dst: {self.dst} is a directory; a file cannot "
                                    "replace it (choose another transfer.dst)")
            if not self.file_mode and not os.path.isdir(self.dst):
                raise TransferError(f"transfer.dst: {self.dst} exists and is not a directory "
                                    "(remove it or choose another transfer.dst)")
            mark = self.read_marker()
            if mark and mark.get("archive_id") == self.plan["id"] and not self.cfg.overwrite:
                return "skip"
            if not self.cfg.overwrite:
                what = (f"holds a different archive (from {mark.get('src')})" if mark
                        else "exists and was not installed by ezpz")
                raise TransferError(f"transfer.dst: {self.dst} {what}; pass "
                                    "transfer.overwrite=true to replace it")
        need = 0
        man = self.plan.get("manifest") or {}
        if self.file_mode:
            need = self.plan["bytes"]
        elif man.get("total_bytes"):
            need = int(man["total_bytes"])
        if self.cfg.keep_archive and not self.file_mode:
            need += self.plan["bytes"]
        if need:
            st = os.statvfs(self.parent)
            free = st.f_bavail * st.f_frsize
            if free < need:
                raise TransferError(f"not enough space in {self.parent} on {socket.gethostname()}: "
                                    f"need {format_size(need)}, {format_size(free)} free; free "
                                    "space or choose another transfer.dst")
        return "go"

    def make_staging(self) -> None:
        self.cleanup_paths.append(self.staging)
        if self.file_mode:
            return
        os.mkdir(self.staging, 0o700)

    def open_archive_copy(self) -> int:
        base = os.path.basename(self.plan["src"])
        self.archive_copy = os.path.join(self.parent, f".{base}.ezpz-partial-{os.getpid()}")
        self.cleanup_paths.append(self.archive_copy)
        return os.open(self.archive_copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                       0o644)

    # -- install -----------------------------------------------------------------------
    def install(self, tree: str, digest: str) -> None:
        """Write the marker into ``tree`` and rename it to dst (replacing an old dst)."""
        mark = self.marker(digest)
        if self.file_mode:
            tmp_mark = self.marker_path + f".{os.getpid()}"
            with open(tmp_mark, "w") as fh:
                json.dump(mark, fh)
            self.cleanup_paths.append(tmp_mark)
        else:
            os.makedirs(os.path.join(tree, ".ezpz"), exist_ok=True)
            with open(os.path.join(tree, MARKER_RELPATH), "w") as fh:
                json.dump(mark, fh, indent=1)
        old = None
        if os.path.lexists(self.dst):
            if _exchange(tree, self.dst):
                # one atomic step: dst is never missing; the previous version is now at `tree`
                old = tree
            else:
                old = os.path.join(self.parent, f".{self.name}.ezpz-old-{os.getpid()}")
                os.rename(self.dst, old)
                try:
                    os.rename(tree, self.dst)
                except OSError:
                    os.rename(old, self.dst)  # put the previous version back
                    raise
        else:
            os.rename(tree, self.dst)
        if self.file_mode:
            os.replace(tmp_mark, self.marker_path)
        if old:
            _remove(old)
        if self.archive_copy:
            os.replace(self.archive_copy, os.path.join(self.parent, os.path.basename(self.plan["src"])))
        if os.path.isdir(self.staging):
            _remove(self.staging)
        self.cleanup_paths.clear()

    def cleanup(self) -> None:
        for path in self.cleanup_paths:
            _remove(path)
        self.cleanup_paths.clear()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swap the paths ``a`` and ``b`` atomically (Linux renameat2 RENAME_EXCHANGE).

    False where the kernel, libc or filesystem cannot (the caller then renames in two steps).
    """
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def _remove(path: str) -> None:
    for _ in range(3):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


# --------------------------------------------------------------------------------------
# the consumer thread on each leader: extract (or write the file)
# --------------------------------------------------------------------------------------
class Consumer(threading.Thread):
    def __init__(self, node: NodeInstall, codec: str, engine: str, depth: int) -> None:
        super().__init__(name="ezpz-extract", daemon=True)
        from .extract import ChunkStream

        self.node = node
        self.codec = codec
        self.engine = engine
        self.stream = ChunkStream(depth)
        self.error: Optional[BaseException] = None
        self.report: Any = None
        self.seconds = 0.0
        self.copy_fd = node.open_archive_copy() if node.cfg.keep_archive and not node.file_mode \
            else None

    def run(self) -> None:
        t0 = time.perf_counter()
        try:
            if self.node.file_mode:
                self._write_file()
            else:
                from .extract import SafeExtractor

                raw: Any = self.stream
                if self.copy_fd is not None:
                    raw = _Tee(self.stream, self.copy_fd)
                dec = _DecodeAhead(raw, self.codec)
                try:
                    ex = SafeExtractor(self.node.staging, engine=self.engine,
                                       label=self.node.plan["src"])
                    self.report = ex.run(dec, self.codec)  # type: ignore[arg-type]
                finally:
                    dec.close()
                self.stream.drain()
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self.error = exc
            self.stream.abort()
        finally:
            if self.copy_fd is not None:
                os.close(self.copy_fd)
            self.seconds = time.perf_counter() - t0

    def _write_file(self) -> None:
        fd = os.open(self.node.staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            buf = bytearray(1 << 20)
            while True:
                n = self.stream.readinto(buf)
                if not n:
                    break
                view = memoryview(buf)[:n]
                while len(view):
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)


class _Tee:
    """Raw stream that also writes what is read to ``fd`` (keep_archive)."""

    def __init__(self, raw: Any, fd: int) -> None:
        self.raw = raw
        self.fd = fd

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.raw.readinto(b)
        view = memoryview(b)[:n]
        while len(view):
            view = view[os.write(self.fd, view):]
        return n

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(n if n and n > 0 else 1 << 20)
        got = self.readinto(buf)
        return bytes(buf[:got])


class _DecodeAhead:
    """The decompressed stream, decoded in its own thread ahead of the tar parser.

    zstandard and ISA-L (zlib without it) release the GIL while they decompress, so decoding
    runs beside the parsing and file writes of the extraction thread instead of in turn with
    them. Blocks of up to ``READ_SIZE`` bytes pass through a bounded queue (memory: ``depth``
    blocks); a decoder error is raised again in the reader.
    """

    def __init__(self, raw: Any, codec: str, depth: int = 8) -> None:
        from .extract import READ_SIZE, gzip_blocks, open_decoder

        self._q: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._cur = b""
        self._pos = 0
        self._eof = False
        if codec == "gzip":
            self._blocks = gzip_blocks(raw, READ_SIZE)
        else:
            self._blocks = _read_blocks(open_decoder(raw, codec), READ_SIZE)
        self._thread = threading.Thread(target=self._run, name="ezpz-decode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for block in self._blocks:
                if not self._put(block):
                    return
            self._put(b"")
        except BaseException as exc:  # noqa: BLE001 - raised again in the reader
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._cur):
            if self._eof:
                return b""
            while True:
                try:
                    item = self._q.get(timeout=0.1)
                    break
                except queue.Empty:
                    if not self._thread.is_alive() and self._q.empty():
                        self._eof = True
                        return b""
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return b""
            self._cur, self._pos = item, 0
        if self._pos == 0 and (n is None or n < 0 or n >= len(self._cur)):
            self._pos = len(self._cur)
            return self._cur  # the whole block, no copy
        end = len(self._cur) if n is None or n < 0 else self._pos + n
        out = self._cur[self._pos:end]
        self._pos += len(out)
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stop.set()


def _read_blocks(dec: Any, size: int) -> Any:
    while True:
        block = dec.read(size)
        if not block:
            return
        yield block


# --------------------------------------------------------------------------------------
# the root's reader thread
# --------------------------------------------------------------------------------------
class Reader(threading.Thread):
    """Reads the source into free buffers, hashing as it goes; (buf, n) or (None, error)."""

    def __init__(self, path: str, size: int, buffers: list[bytearray]) -> None:
        super().__init__(name="ezpz-read", daemon=True)
        self.path = path
        self.size = size
        self.free: "queue.Queue[bytearray]" = queue.Queue()
        for b in buffers:
            self.free.put(b)
        self.filled: "queue.Queue[tuple[Optional[bytearray], Any]]" = queue.Queue()
        self.seconds = 0.0
        self.hash_seconds = 0.0
        self.digest = ""
        self.stop = threading.Event()

    def run(self) -> None:
        import xxhash

        h = xxhash.xxh3_128()
        done = 0
        try:
            with open(self.path, "rb", buffering=0) as fh:
                while True:
                    buf = self._free()
                    if buf is None:
                        return
                    t0 = time.perf_counter()
                    n = fh.readinto(buf)
                    t1 = time.perf_counter()
                    self.seconds += t1 - t0
                    if not n:
                        self.free.put(buf)
                        break
                    h.update(memoryview(buf)[:n])
                    self.hash_seconds += time.perf_counter() - t1
                    done += n
                    self.filled.put((buf, n))
            if done != self.size:
                raise OSError(errno.EIO, f"read {done} of {self.size} bytes (the file changed "
                                         "while it was read)")
            self.digest = h.hexdigest()
            self.filled.put((None, 0))
        except OSError as exc:
            self.filled.put((None, f"cannot read {self.path}: {exc.strerror or exc}"))

    def _free(self) -> Optional[bytearray]:
        while not self.stop.is_set():
            try:
                return self.free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None


# --------------------------------------------------------------------------------------
# the collective run
# --------------------------------------------------------------------------------------
def _control(nbytes: int, flags: int, digest: str = "", msg: str = "") -> bytearray:
    buf = bytearray(CONTROL_SIZE)
    raw = msg.encode()[: CONTROL_SIZE - 64]
    buf[0:8] = nbytes.to_bytes(8, "little")
    buf[8:16] = flags.to_bytes(8, "little")
    buf[16:48] = digest.encode().ljust(32, b"\0")[:32]
    buf[48:56] = len(raw).to_bytes(8, "little")
    buf[64:64 + len(raw)] = raw
    return buf


def _parse_control(buf: bytearray) -> tuple[int, int, str, str]:
    n = int.from_bytes(buf[0:8], "little")
    flags = int.from_bytes(buf[8:16], "little")
    digest = bytes(buf[16:48]).rstrip(b"\0").decode()
    ml = int.from_bytes(buf[48:56], "little")
    return n, flags, digest, bytes(buf[64:64 + ml]).decode(errors="replace")


class _Terminated(BaseException):
    pass


class Transfer:
    """One run of the collective on this rank (see :func:`run_transfer`)."""

    def __init__(self, cfg: TransferConfig, machine: Optional[MachineConfig],
                 launcher_name: Optional[str]) -> None:
        self.cfg = cfg
        self.machine = machine or MachineConfig()
        self.launcher_name = launcher_name
        self.node: Optional[NodeInstall] = None
        self.consumer: Optional[Consumer] = None
        self.phases = {"read": 0.0, "broadcast": 0.0, "extract": 0.0, "verify": 0.0,
                       "relocate": 0.0, "total": 0.0}
        self.kind: Optional[str] = None

    # emergency exits (timeout watchdog, signals) ---------------------------------------
    def _emergency_cleanup(self) -> None:
        if self.consumer is not None:
            self.consumer.stream.abort()
            if self.consumer.is_alive() and self.consumer is not threading.current_thread():
                self.consumer.join(5)  # let the extractor stop before its tree is removed
        if self.node is not None:
            self.node.cleanup()

    def _on_timeout(self, what: str) -> None:
        log.critical("%s: timed out after %gs in %s; removing staging and exiting",
                     socket.gethostname(), self.cfg.timeout, what)
        self._emergency_cleanup()
        os._exit(EXIT_FAILURE)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.critical("%s: received signal %d; removing staging and exiting",
                     socket.gethostname(), signum)
        self._emergency_cleanup()
        os._exit(128 + signum)

    # ----------------------------------------------------------------------------------
    def run(self, run_dir: Optional[str]) -> Optional[TransferResult]:
        from .comm import CommTimeout, make_comm, resolve_backend

        t_start = time.perf_counter()
        cfg = self.cfg
        if not cfg.src:
            raise ConfigError("transfer.src: missing (give the archive, e.g. "
                              "transfer.src=/path/env.tar.zst)")
        backend = resolve_backend(cfg.backend)
        dst = cfg.dst or default_dst(cfg.src, cfg.decompress)
        comm = make_comm(backend, cfg.timeout, dist_backend=self.machine.dist_backend,
                         device=self.machine.device)
        comm.set_timeout_handler(self._on_timeout)
        old_handlers = {s: signal.signal(s, self._on_signal)
                        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                        if threading.current_thread() is threading.main_thread()}
        try:
            try:
                return self._run(comm, backend, dst, run_dir, t_start)
            except CommTimeout as exc:
                log.critical("%s: %s", socket.gethostname(), exc)
                self._emergency_cleanup()
                sys.stderr.flush()
                os._exit(EXIT_FAILURE)
            except EzpzError:
                self._emergency_cleanup()
                raise
            except BaseException as exc:
                self._emergency_cleanup()
                if not type(exc).__module__.startswith(("mpi4py", "torch")):
                    raise
                # The communication library failed, e.g. because a peer process died. Exit
                # now: finalizing the library would wait for the dead peer.
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                log.critical("%s: the %s communication failed (%s); a node or rank is gone, "
                             "see the launcher's output", socket.gethostname(), backend,
                             lines[-1] if lines else type(exc).__name__)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(EXIT_FAILURE)
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            comm.close()

    def _run(self, comm: Any, backend: str, dst: str, run_dir: Optional[str],
             t_start: float) -> Optional[TransferResult]:
        cfg = self.cfg
        chunk = cfg.chunk_bytes
        my = NodeStatus(host=comm.host)
        plan: dict[str, Any] = {}

        # 1. the plan: rank 0 -> leaders -> the node's other ranks
        if comm.is_leader:
            plan = comm.allgather_leaders(make_plan(cfg) if comm.is_root else None)[0]
        plan = comm.node_bcast_obj(plan if comm.is_leader else None)
        if plan.get("error"):
            # every rank reports the same user error
            if plan.get("usage"):
                raise ConfigError(plan["error"])
            raise TransferError(plan["error"])
        nchunks = max(1, math.ceil(plan["bytes"] / chunk))

        # 2. preflight on every leader; the others wait for their leader's final status
        if not comm.is_leader:
            final = comm.node_bcast_obj(None, timeout=cfg.timeout * (nchunks + 4))
            return self._finish_nonleader(final)
        action = "fail"
        try:
            self.node = NodeInstall(cfg, plan, dst)
            # half the timeout: a node that cannot get the lock reports it while the other
            # nodes still wait for its status
            self.node.lock(cfg.timeout / 2)
            self.node.clean_stale()
            action = self.node.preflight()
            if action == "go":
                self.node.make_staging()
        except (EzpzError, OSError) as exc:
            my.status, my.error = "failed", _one_line(exc)
            action = "fail"
        actions = comm.allgather_leaders(action)
        streaming = "go" in actions
        if action == "skip":
            my.status = "skipped"

        # 3. the stream
        digest = ""
        if streaming:
            active = action == "go"
            if active:
                try:
                    self.consumer = Consumer(self.node, plan["codec"], cfg.extractor, cfg.depth)  # type: ignore[arg-type]
                except OSError as exc:  # e.g. the kept archive copy cannot be created
                    my.status, my.error = "failed", _one_line(exc)
                    active = False  # still take part in the broadcast, write nothing
                else:
                    self.consumer.start()
            digest, err = (self._stream_root if comm.is_root else self._stream_leader)(
                comm, plan, chunk, active)
            if err and my.status != "failed":
                my.status, my.error = "failed", err
            if self.consumer is not None:
                self.consumer.stream.close_input()
                self.consumer.join(cfg.timeout)
                if self.consumer.is_alive():
                    self.consumer.stream.abort()
                    self.consumer.join(5)
                    if my.status != "failed":
                        my.status, my.error = "failed", "extraction did not finish within " \
                                                        f"transfer.timeout={cfg.timeout:g}s"
                elif self.consumer.error is not None and my.status != "failed":
                    my.status, my.error = "failed", _one_line(self.consumer.error)
                self.phases["extract"] = self.consumer.seconds

        # 4. verify, relocate, install
        if action == "go" and my.status == "ok":
            try:
                self._install(digest)
            except (EzpzError, OSError) as exc:
                my.status, my.error = "failed", _one_line(exc)
        if my.status == "failed" and self.node is not None:
            self.node.cleanup()
        my.seconds = time.perf_counter() - t_start
        my.mb_s = plan["bytes"] / my.seconds / 1e6 if my.seconds and my.status == "ok" else 0.0
        my.rss_mb = round(peak_rss_mb(), 1)
        if my.status == "failed":
            log.critical("%s: %s", my.host, my.error)

        # 5. every leader learns every node's status; the node's other ranks from the leader
        statuses = [NodeStatus(**s) for s in comm.allgather_leaders(asdict(my))]
        status, code = self._overall(statuses)
        if my.status != "failed":
            _update_failed_hosts(dst, status, statuses)
        if self.node is not None:
            self.node.unlock()
        comm.node_bcast_obj({"status": status, "exit_code": code, "error": my.error})
        self.phases["total"] = time.perf_counter() - t_start
        result = TransferResult(
            status=status, exit_code=code, dst=os.path.abspath(dst), nodes=comm.nnodes,
            ranks=comm.size, backend=backend,
            archive={"path": plan["src"], "bytes": plan["bytes"], "codec": plan["codec"],
                     "xxh3_128": digest or None},
            phases=self.phases, per_node=statuses, kind=self.kind,
            config={"transfer": asdict(cfg), "machine": self.machine.name,
                    "launcher": self.launcher_name, "backend": backend})
        if not comm.is_root:
            if code:
                raise TransferError(my.error or f"the transfer {status} on "
                                    f"{', '.join(result.failed_hosts)}")
            return None
        if run_dir:
            os.makedirs(run_dir, exist_ok=True)
            path = os.path.join(run_dir, RESULTS_FILE)
            with open(path + ".tmp", "w") as fh:
                json.dump(result.to_json(), fh, indent=1)
            os.replace(path + ".tmp", path)
        _print_summary(result)
        return result

    def _finish_nonleader(self, final: dict[str, Any]) -> None:
        if final.get("exit_code"):
            raise TransferError(final.get("error") or f"the transfer {final.get('status')}")
        return None

    def _overall(self, statuses: list[NodeStatus]) -> tuple[str, int]:
        n = len(statuses)
        failed = sum(s.status == "failed" for s in statuses)
        if not failed:
            return ("skipped" if all(s.status == "skipped" for s in statuses) else "ok"), 0
        good = n - failed
        need = n
        if self.cfg.min_success_nodes is not None:
            need = min(need, self.cfg.min_success_nodes)
        if self.cfg.min_success_fraction is not None:
            need = min(need, math.ceil(self.cfg.min_success_fraction * n))
        if good and good >= need and need < n:
            return "partial", 0
        return "failed", EXIT_FAILURE

    # -- the stream, root side ---------------------------------------------------------
    def _stream_root(self, comm: Any, plan: dict[str, Any], chunk: int,
                     consume: bool) -> tuple[str, Optional[str]]:
        depth = self.cfg.depth
        buffers = [bytearray(min(chunk, max(plan["bytes"], 1))) for _ in range(depth)]
        reader = Reader(plan["src"], plan["bytes"], buffers)
        reader.start()
        err = None
        bcast = 0.0
        try:
            while True:
                try:
                    buf, n = reader.filled.get(timeout=self.cfg.timeout)
                except queue.Empty:
                    n, buf = f"reading {plan['src']} stalled for {self.cfg.timeout:g}s", None
                if buf is None:
                    t0 = time.perf_counter()
                    if isinstance(n, str):
                        err = n
                        comm.bcast_control(_control(0, F_ABORT, msg=n))
                    else:
                        comm.bcast_control(_control(0, F_END, digest=reader.digest))
                    bcast += time.perf_counter() - t0
                    break
                t0 = time.perf_counter()
                comm.bcast_control(_control(n, F_DATA))
                comm.bcast_data(buf, n)
                bcast += time.perf_counter() - t0
                if consume and self.consumer is not None:
                    self.consumer.stream.put(memoryview(buf)[:n],
                                             release=lambda b=buf: reader.free.put(b),
                                             timeout=self.cfg.timeout)
                else:
                    reader.free.put(buf)
        finally:
            reader.stop.set()
        self.phases["read"] = reader.seconds
        self.phases["broadcast"] = bcast
        self.phases["verify"] = reader.hash_seconds
        if err:
            log.critical("%s: %s; aborting the transfer on every node", comm.host, err)
        return reader.digest, err

    # -- the stream, other leaders -----------------------------------------------------
    def _stream_leader(self, comm: Any, plan: dict[str, Any], chunk: int,
                       consume: bool) -> tuple[str, Optional[str]]:
        import xxhash

        free: "queue.Queue[bytearray]" = queue.Queue()
        for _ in range(self.cfg.depth):
            free.put(bytearray(min(chunk, max(plan["bytes"], 1))))
        h = xxhash.xxh3_128()
        ctrl = bytearray(CONTROL_SIZE)
        received = 0
        hash_s = bcast = 0.0
        err = None
        while True:
            t0 = time.perf_counter()
            comm.bcast_control(ctrl, timeout=self.cfg.timeout)
            n, flags, digest, msg = _parse_control(ctrl)
            if flags == F_ABORT:
                err = f"rank 0 aborted the transfer: {msg}"
                break
            if flags == F_END:
                bcast += time.perf_counter() - t0
                t1 = time.perf_counter()
                mine = h.hexdigest()
                if received != plan["bytes"]:
                    err = f"received {received} of {plan['bytes']} bytes"
                elif self.cfg.verify and mine != digest:
                    err = (f"received data does not match the archive (xxh3-128 {mine} != "
                           f"{digest}); the network or memory corrupted it")
                hash_s += time.perf_counter() - t1
                break
            try:
                buf = free.get(timeout=self.cfg.timeout)
            except queue.Empty:
                from .comm import CommTimeout

                raise CommTimeout(f"extraction on {comm.host} did not free a buffer within "
                                  f"{self.cfg.timeout:g}s") from None
            comm.bcast_data(buf, n)
            bcast += time.perf_counter() - t0
            t1 = time.perf_counter()
            view = memoryview(buf)[:n]
            if self.cfg.verify:  # the marker records rank 0's digest either way
                h.update(view)
            hash_s += time.perf_counter() - t1
            received += n
            if consume and self.consumer is not None:
                self.consumer.stream.put(view, release=lambda b=buf: free.put(b),
                                         timeout=self.cfg.timeout)
            else:
                free.put(buf)
        self.phases["broadcast"] = bcast
        self.phases["verify"] = hash_s
        return (digest if err is None else ""), err

    # -- after the stream --------------------------------------------------------------
    def _install(self, digest: str) -> None:
        node = self.node
        assert node is not None
        tree = node.staging
        if not node.file_mode:
            report = self.consumer.report if self.consumer else None
            if report is not None and report.top:
                tree = os.path.join(node.staging, report.top)
            manifest = None
            try:
                from .manifest import Manifest

                manifest = Manifest.load(tree)
            except (OSError, ValueError, TypeError):
                manifest = None
            if manifest is not None:
                self.kind = manifest.kind
            elif os.path.isfile(os.path.join(tree, "pyvenv.cfg")):
                self.kind = "venv"
            elif os.path.isdir(os.path.join(tree, "conda-meta")):
                self.kind = "conda"
            else:
                self.kind = "data"
            if self.cfg.relocate and self.kind in ("venv", "conda"):
                t0 = time.perf_counter()
                try:
                    from .relocate import relocate
                except ImportError:  # pragma: no cover - relocation not installed
                    log.debug("ezpz.relocate is not available; not relocating")
                else:
                    rep = relocate(tree, new_prefix=node.dst, manifest=manifest)
                    log.info("relocated %s files to %s", getattr(rep, "files_rewritten", "?"),
                             node.dst)
                self.phases["relocate"] = time.perf_counter() - t0
        node.install(tree, digest)


FAILED_HOSTS_SUFFIX = ".failed-hosts"


def failed_hosts_path(dst: str) -> str:
    """``<dst>.failed-hosts``: the hosts a partial run left out, one per line."""
    return os.path.abspath(dst).rstrip("/") + FAILED_HOSTS_SUFFIX


def _update_failed_hosts(dst: str, status: str, statuses: list[NodeStatus]) -> None:
    """On a node that holds dst: list the failed hosts after a partial run (so that later
    launches can leave them out); remove the stale list after a clean run."""
    path = failed_hosts_path(dst)
    try:
        if status == "partial":
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as fh:
                fh.writelines(f"{s.host}\n" for s in statuses if s.status == "failed")
            os.replace(tmp, path)
        elif status in ("ok", "skipped") and os.path.lexists(path):
            os.unlink(path)
    except OSError as exc:
        log.warning("cannot update %s: %s", path, exc.strerror or exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:1000]


def _print_summary(result: TransferResult) -> None:
    rows = [("host", "status", "seconds", "MB/s", "peak RSS MB", "error")]
    for n in result.per_node:
        rows.append((n.host, n.status, f"{n.seconds:.2f}", f"{n.mb_s:.1f}", f"{n.rss_mb:.0f}",
                     n.error or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + ("  " + r[5] if r[5] else "")
             for r in rows]
    ph = ", ".join(f"{k} {v:.2f}s" for k, v in result.phases.items())
    total = result.phases.get("total") or 0
    rate = result.archive["bytes"] / total / 1e6 if total else 0.0
    out = [f"transfer {result.status}: {result.archive['path']} "
           f"({format_size(result.archive['bytes'])}, {result.archive['codec']}) -> "
           f"{result.dst} on {result.nodes} node(s), {result.ranks} rank(s), "
           f"backend {result.backend}, {rate:.1f} MB/s", *lines, f"phases: {ph}"]
    if result.exit_code == 0 and result.kind in ("venv", "conda"):
        try:
            from .relocate import activation_hint

            out.append(f"activate with: {activation_hint(result.kind, result.dst)}")
        except ImportError:  # pragma: no cover
            pass
    print("\n".join(out), flush=True)


def run_transfer(cfg: TransferConfig, *, run_dir: Optional[str] = None,
                 machine: Optional[MachineConfig] = None,
                 launcher_name: Optional[str] = None) -> Optional[TransferResult]:
    """Deliver ``cfg.src`` to ``cfg.dst`` on every node (collective over all ranks).

    Returns the result on rank 0 (None elsewhere). Raises ConfigError for bad input (on every
    rank), TransferError on ranks of a failed run; a rank stuck longer than
    ``cfg.timeout`` in any wait removes its staging directory and exits non-zero.
    """
    return Transfer(cfg, machine, launcher_name).run(run_dir)


if __name__ == "__main__":
    # The entry point lives in ezpz.cli.transfer; ``python -m ezpz.transfer`` is its command.
    from ezpz.cli.transfer import main as _main

    sys.exit(_main())
