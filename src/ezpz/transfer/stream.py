"""The stream: rank 0 reads the archive once and broadcasts it chunk by chunk; every node
leader hands what arrives to its consumer thread, which extracts it (or writes the file).

One loop (:func:`pump`) serves both sides of the broadcast: for every chunk a control block
(length, offset, flags, digest, abort message) then the data, the same collective calls on
rank 0 and on the leaders. The sides differ only in where the control block and the buffer
come from and in who hashes: :class:`RootSide` takes both from the :class:`Reader` thread
(which hashes as it reads); :class:`LeaderSide` receives them and hashes each chunk.

What arrives goes into the consumer's :class:`~ezpz.transfer.backlog.Backlog`, which never
makes the broadcast wait for the extraction (it spills to disk beyond a few chunks): the
broadcast runs at the network's pace and each node extracts at its own.

When the stream group changes (a node lost, see :mod:`.comm.recovery`) the broadcast resumes
from an earlier byte: rank 0 reads again from there, and every side hands on only the bytes
it does not have yet, so the consumer and the digest see each byte exactly once. A buffer
that was in flight on the old group is never reused.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from ..fsutil import write_all
from .backlog import Backlog, Paced, slow_extract_rate
from .comm import Comm, CommTimeout
from .comm.base import Resync
from .node import NodeInstall
from .spec import Plan, WorkerSpec
from .wire import CONTROL_SIZE, Control, Flag


def open_source(path: str) -> io.RawIOBase:
    """The archive, unbuffered (rank 0 reads each chunk straight into a broadcast buffer)."""
    return open(path, "rb", buffering=0)


class Pool:
    """The receive (or read) buffers of one rank: a fixed number, each reused."""

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(count):
            self.free.put(bytearray(size))
        #: buffers left in a broadcast on an abandoned group: never reused, never freed
        self.graveyard: list[bytearray] = []

    def get(self, timeout: float) -> bytearray | None:
        try:
            return self.free.get(timeout=timeout)
        except queue.Empty:
            return None

    def put(self, buf: bytearray) -> None:
        self.free.put(buf)

    def abandon(self, buf: bytearray) -> None:
        """``buf`` may still be written or read by the communication library: replace it."""
        self.graveyard.append(buf)
        self.free.put(bytearray(self.size))


# --------------------------------------------------------------------------------------
# rank 0's reader thread
# --------------------------------------------------------------------------------------
class Reader(threading.Thread):
    """Reads the source from ``start`` into pool buffers, hashing what it has not hashed
    before; puts (buf, n, offset) or (None, error, offset) on ``filled``."""

    def __init__(self, path: str, size: int, pool: Pool, start: int = 0,
                 previous: Reader | None = None) -> None:
        super().__init__(name="ezpz-read", daemon=True)
        import xxhash

        self.path = path
        self.size = size
        self.pool = pool
        self.start_at = start
        self.filled: queue.Queue[tuple[bytearray | None, Any, int]] = queue.Queue()
        self.hasher: Any = previous.hasher if previous else xxhash.xxh3_128()
        self.hashed: int = previous.hashed if previous else 0
        self.seconds: float = previous.seconds if previous else 0.0
        self.hash_seconds: float = previous.hash_seconds if previous else 0.0
        self.digest = ""
        self.stop = threading.Event()

    def run(self) -> None:
        pos = self.start_at
        try:
            with open_source(self.path) as fh:
                if pos:
                    fh.seek(pos)
                while True:
                    buf = self._free()
                    if buf is None:
                        return
                    t0 = time.perf_counter()
                    n = fh.readinto(buf)
                    t1 = time.perf_counter()
                    self.seconds += t1 - t0
                    if not n:
                        self.pool.put(buf)
                        break
                    new = pos + n - self.hashed
                    if new > 0:
                        self.hasher.update(memoryview(buf)[n - new:n])
                        self.hashed += new
                    self.hash_seconds += time.perf_counter() - t1
                    self.filled.put((buf, n, pos))
                    pos += n
            if pos != self.size:
                raise OSError(errno.EIO, f"read {pos} of {self.size} bytes (the file changed "
                                         "while it was read)")
            self.digest = self.hasher.hexdigest()
            self.filled.put((None, 0, pos))
        except OSError as exc:
            self.filled.put((None, f"cannot read {self.path}: {exc.strerror or exc}", pos))

    def _free(self) -> bytearray | None:
        while not self.stop.is_set():
            buf = self.pool.get(0.1)
            if buf is not None:
                return buf
        return None

    def halt(self, timeout: float) -> None:
        """Stop and wait for the thread; hand the buffers it filled back to the pool."""
        self.stop.set()
        self.join(timeout)
        if self.is_alive():
            raise CommTimeout(f"reading {self.path} did not stop within {timeout:g}s")
        while True:
            try:
                buf, _n, _off = self.filled.get_nowait()
            except queue.Empty:
                return
            if buf is not None:
                self.pool.put(buf)


# --------------------------------------------------------------------------------------
# the two sides of the broadcast
# --------------------------------------------------------------------------------------
class RootSide:
    """Rank 0: control blocks and buffers come from the reader thread."""

    def __init__(self, spec: WorkerSpec, plan: Plan) -> None:
        self.spec = spec
        self.plan = plan
        self.pool = Pool(spec.depth, min(spec.chunk_bytes, max(plan.bytes, 1)))
        self.reader = Reader(plan.src, plan.bytes, self.pool)
        self.reader.start()
        self._buf: bytearray | None = None
        self.error: str | None = None

    def control(self) -> bytearray:
        try:
            buf, n, off = self.reader.filled.get(timeout=self.spec.timeout)
        except queue.Empty:
            buf, n, off = None, f"reading {self.spec.src} stalled for {self.spec.timeout:g}s", 0
        self._buf = buf
        if buf is not None:
            return Control(n, Flag.DATA, offset=off).encode()
        if isinstance(n, str):
            self.error = n
            return Control(0, Flag.ABORT, msg=n, offset=off).encode()
        return Control(0, Flag.END, digest=self.reader.digest, offset=off).encode()

    def current(self) -> bytearray | None:
        """The buffer of the chunk whose control block was made last."""
        buf, self._buf = self._buf, None
        return buf

    def buffer(self) -> bytearray:
        raise AssertionError("rank 0 takes its buffers from current()")

    def received(self, view: memoryview) -> None:
        """The reader hashed it already."""

    def release(self, buf: bytearray) -> None:
        self.pool.put(buf)

    def resync(self, resume: int) -> None:
        """Read again from ``resume`` (the new group has not all received what follows)."""
        old = self.reader
        old.halt(self.spec.timeout)
        self.reader = Reader(self.plan.src, self.plan.bytes, self.pool, start=resume,
                             previous=old)
        self.reader.start()

    def finish(self, ctrl: Control, received: int) -> tuple[str, str | None]:
        return self.reader.digest, self.error

    def close(self) -> None:
        self.reader.stop.set()


class LeaderSide:
    """Every other node leader: receive into its own buffers and hash what arrives."""

    def __init__(self, spec: WorkerSpec, plan: Plan, host: str) -> None:
        import xxhash

        self.spec = spec
        self.plan = plan
        self.host = host
        self.pool = Pool(spec.depth, min(spec.chunk_bytes, max(plan.bytes, 1)))
        self.hash = xxhash.xxh3_128()
        self.hash_seconds = 0.0

    def control(self) -> bytearray:
        return bytearray(CONTROL_SIZE)

    def current(self) -> bytearray | None:
        return None

    def buffer(self) -> bytearray:
        buf = self.pool.get(self.spec.timeout)
        if buf is None:
            raise CommTimeout(f"extraction on {self.host} did not free a buffer within "
                              f"{self.spec.timeout:g}s")
        return buf

    def received(self, view: memoryview) -> None:
        if self.spec.verify:  # the marker records rank 0's digest either way
            t0 = time.perf_counter()
            self.hash.update(view)
            self.hash_seconds += time.perf_counter() - t0

    def release(self, buf: bytearray) -> None:
        self.pool.put(buf)

    def resync(self, resume: int) -> None:
        """Nothing to do: what arrives below the bytes already handed on is skipped."""

    def finish(self, ctrl: Control, received: int) -> tuple[str, str | None]:
        if ctrl.flag is Flag.ABORT:
            return "", f"rank 0 aborted the transfer: {ctrl.msg}"
        t0 = time.perf_counter()
        mine = self.hash.hexdigest()
        self.hash_seconds += time.perf_counter() - t0
        if received != self.plan.bytes:
            return "", f"received {received} of {self.plan.bytes} bytes"
        if self.spec.verify and mine != ctrl.digest:
            return "", (f"received data does not match the archive (xxh3-128 {mine} != "
                        f"{ctrl.digest}); the network or memory corrupted it")
        return ctrl.digest, None

    def close(self) -> None:
        pass


def pump(comm: Comm, side: RootSide | LeaderSide, backlog: Backlog | None, timeout: float,
         phases: dict[str, float], tick: Callable[[int], None] | None = None
         ) -> tuple[str, str | None]:
    """Broadcast (rank 0) or receive (leaders) the whole archive, chunk by chunk, handing
    each new byte to ``backlog`` once (None: take part in the broadcast, write nothing);
    ``tick(bytes so far)`` after each chunk (progress).

    Returns (digest, error): rank 0's digest of what it read, or on a leader the digest it
    verified; ``error`` when the stream was aborted or did not arrive whole.
    """
    bcast = 0.0
    fed = 0  # bytes handed on: this rank's position in the stream
    ctrl = Control(0, Flag.ABORT, msg="the stream ended early")
    try:
        while True:
            t0 = time.perf_counter()
            buf: bytearray | None = None
            in_flight = False
            try:
                raw = side.control()
                buf = side.current()
                comm.bcast_control(raw, timeout=timeout)
                ctrl = Control.decode(raw)
                if ctrl.flag is not Flag.DATA:
                    if ctrl.flag is Flag.END:
                        comm.end_stream(fed)
                    bcast += time.perf_counter() - t0
                    break
                if buf is None:
                    buf = side.buffer()
                in_flight = True
                comm.bcast_data(buf, ctrl.nbytes)
                in_flight = False
            except Resync as rs:
                bcast += time.perf_counter() - t0
                if buf is not None:
                    (side.pool.abandon if in_flight else side.release)(buf)
                side.resync(rs.resume)
                continue
            bcast += time.perf_counter() - t0
            skip = fed - ctrl.offset
            if skip < 0:
                side.release(buf)
                return "", (f"the stream skipped bytes {fed}..{ctrl.offset} (a corrupt "
                            "control block?)")
            if skip >= ctrl.nbytes:  # resent after a recovery: this side has it already
                side.release(buf)
                continue
            view = memoryview(buf)[skip:ctrl.nbytes]
            side.received(view)
            fed += len(view)
            comm.position = fed
            if backlog is not None:
                backlog.put(view, release=functools.partial(side.release, buf),
                            timeout=timeout)
            else:
                side.release(buf)
            if tick is not None:
                tick(fed)
    finally:
        side.close()
    digest, err = side.finish(ctrl, fed)
    phases["broadcast"] = bcast
    if isinstance(side, RootSide):
        phases["read"] = side.reader.seconds
        phases["verify"] = side.reader.hash_seconds
    else:
        phases["verify"] = side.hash_seconds
    return digest, err


# --------------------------------------------------------------------------------------
# the consumer thread on each leader: extract (or write the file)
# --------------------------------------------------------------------------------------
class Consumer(threading.Thread):
    def __init__(self, node: NodeInstall, plan: Plan, spec: WorkerSpec, *,
                 root: bool = False, spill: bool = True) -> None:
        super().__init__(name="ezpz-extract", daemon=True)
        self.node = node
        self.plan = plan
        self.spec = spec
        # rank 0's reader needs a free buffer to read ahead while one is broadcast
        cap = max(1, spec.depth - (2 if root else 1))
        self.stream = Backlog(cap, spill_dir=node.parent if spill else None,
                              spill_name=node.name,
                              reserve=self._reserve)
        self.error: BaseException | None = None
        self.report: Any = None
        self.seconds = 0.0
        self.finished_at: float | None = None
        self.copy_fd = node.open_archive_copy() if spec.keep_archive and not plan.file_mode \
            else None

    def _reserve(self, backlog: Backlog) -> int:
        """Bytes the extraction still needs next to dst: the tree's size from the manifest (the
        archive's size without one), minus the share of the stream already extracted."""
        total = self.plan.total_bytes or self.plan.bytes
        if self.copy_fd is not None:
            total += self.plan.bytes
        done = backlog.consumed / self.plan.bytes if self.plan.bytes else 1.0
        return int(total * max(0.0, 1.0 - done))

    def run(self) -> None:
        t0 = time.perf_counter()
        _lower_priority()
        try:
            if self.plan.file_mode:
                self._write_file()
            else:
                from ..extract import SafeExtractor
                from ..extract.decode import (
                    DecodeAhead,
                    decode_threads,
                    resolve_threads,
                    write_threads,
                )

                raw: Any = self.stream
                if self.copy_fd is not None:
                    raw = Tee(self.stream, self.copy_fd)
                pace = slow_extract_rate(self.node.host)
                if pace is not None:
                    raw = Paced(raw, pace)
                threads = resolve_threads(self.spec.threads)
                dec = DecodeAhead(raw, self.plan.codec, threads=decode_threads(threads))
                try:
                    # without a manifest, relocation needs to know which files hold the
                    # old prefix: the extraction notes them as the data passes
                    hints = self.spec.relocate and self.plan.kind is None
                    ex = SafeExtractor(self.node.staging, engine=self.spec.engine,
                                       label=self.plan.src, hints=hints,
                                       writers=write_threads(threads))
                    self.report = ex.run(cast(BinaryIO, dec), self.plan.codec)
                finally:
                    dec.close()
                self.stream.drain()
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self.error = exc
            self.stream.abort()
        finally:
            if self.copy_fd is not None:
                os.close(self.copy_fd)
            self.stream.close()
            self.seconds = time.perf_counter() - t0
            self.finished_at = time.time()

    def _write_file(self) -> None:
        fd = os.open(self.node.staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            buf = bytearray(1 << 20)
            while True:
                n = self.stream.readinto(buf)
                if not n:
                    break
                write_all(fd, memoryview(buf)[:n])
        finally:
            os.close(fd)


def _nice_setting() -> int:
    raw = os.environ.get("EZPZ_EXTRACT_NICE", "10").strip()
    return int(raw) if raw.isdigit() else 10


#: How much less CPU priority the extraction gets than the broadcast (nice increment;
#: ``EZPZ_EXTRACT_NICE=0`` keeps it equal).
EXTRACT_NICE = _nice_setting()


def _lower_priority() -> None:
    """Run this thread (and the threads it starts) at a lower CPU priority: where cores are
    scarce, the broadcast, which every other node waits for, goes first; the extraction
    uses what is left (on a node with idle cores this changes nothing)."""
    if EXTRACT_NICE <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid,
                       min(19, os.getpriority(os.PRIO_PROCESS, tid) + EXTRACT_NICE))
    except (OSError, AttributeError):
        pass


class Tee:
    """Raw stream that also writes what is read to ``fd`` (keep_archive)."""

    def __init__(self, raw: Any, fd: int) -> None:
        self.raw = raw
        self.fd = fd

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n: int = self.raw.readinto(b)
        write_all(self.fd, memoryview(b)[:n])
        return n

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(n if n and n > 0 else 1 << 20)
        got = self.readinto(buf)
        return bytes(buf[:got])
