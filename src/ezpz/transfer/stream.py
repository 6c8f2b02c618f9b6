"""The stream: rank 0 reads the archive once and broadcasts it chunk by chunk; every node
leader hands what arrives to its consumer thread, which extracts it (or writes the file).

One loop (:func:`pump`) serves both sides of the broadcast: for every chunk a control block
(length, flags, digest, abort message) then the data, the same collective calls on rank 0
and on the leaders. The sides differ only in where the control block and the buffer come
from and in who hashes: :class:`RootSide` takes both from the :class:`Reader` thread (which
hashes as it reads); :class:`LeaderSide` receives them and hashes each chunk. Buffers go
back to their pool once the consumer is done with them, so memory stays at ``depth`` chunks.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from typing import Any, BinaryIO

from ..fsutil import write_all
from .comm import Comm, CommTimeout
from .node import NodeInstall
from .spec import Plan, WorkerSpec
from .wire import CONTROL_SIZE, Control, Flag


def open_source(path: str) -> BinaryIO:
    """The archive, unbuffered (rank 0 reads each chunk straight into a broadcast buffer)."""
    return open(path, "rb", buffering=0)


# --------------------------------------------------------------------------------------
# rank 0's reader thread
# --------------------------------------------------------------------------------------
class Reader(threading.Thread):
    """Reads the source into free buffers, hashing as it goes; (buf, n) or (None, error)."""

    def __init__(self, path: str, size: int, buffers: list[bytearray]) -> None:
        super().__init__(name="ezpz-read", daemon=True)
        self.path = path
        self.size = size
        self.free: queue.Queue[bytearray] = queue.Queue()
        for b in buffers:
            self.free.put(b)
        self.filled: queue.Queue[tuple[bytearray | None, Any]] = queue.Queue()
        self.seconds = 0.0
        self.hash_seconds = 0.0
        self.digest = ""
        self.stop = threading.Event()

    def run(self) -> None:
        import xxhash

        h = xxhash.xxh3_128()
        done = 0
        try:
            with open_source(self.path) as fh:
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

    def _free(self) -> bytearray | None:
        while not self.stop.is_set():
            try:
                return self.free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None


# --------------------------------------------------------------------------------------
# the two sides of the broadcast
# --------------------------------------------------------------------------------------
class RootSide:
    """Rank 0: control blocks and buffers come from the reader thread."""

    def __init__(self, spec: WorkerSpec, plan: Plan) -> None:
        self.spec = spec
        size = min(spec.chunk_bytes, max(plan.bytes, 1))
        self.reader = Reader(plan.src, plan.bytes, [bytearray(size) for _ in range(spec.depth)])
        self.reader.start()
        self._buf: bytearray | None = None
        self.error: str | None = None

    def control(self) -> bytearray:
        try:
            buf, n = self.reader.filled.get(timeout=self.spec.timeout)
        except queue.Empty:
            buf, n = None, f"reading {self.spec.src} stalled for {self.spec.timeout:g}s"
        self._buf = buf
        if buf is not None:
            return Control(n, Flag.DATA).encode()
        if isinstance(n, str):
            self.error = n
            return Control(0, Flag.ABORT, msg=n).encode()
        return Control(0, Flag.END, digest=self.reader.digest).encode()

    def buffer(self) -> bytearray:
        assert self._buf is not None
        return self._buf

    def received(self, view: memoryview) -> None:
        """The reader hashed it already."""

    def release(self, buf: bytearray) -> None:
        self.reader.free.put(buf)

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
        size = min(spec.chunk_bytes, max(plan.bytes, 1))
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(spec.depth):
            self.free.put(bytearray(size))
        self.hash = xxhash.xxh3_128()
        self.hash_seconds = 0.0

    def control(self) -> bytearray:
        return bytearray(CONTROL_SIZE)

    def buffer(self) -> bytearray:
        try:
            return self.free.get(timeout=self.spec.timeout)
        except queue.Empty:
            raise CommTimeout(f"extraction on {self.host} did not free a buffer within "
                              f"{self.spec.timeout:g}s") from None

    def received(self, view: memoryview) -> None:
        if self.spec.verify:  # the marker records rank 0's digest either way
            t0 = time.perf_counter()
            self.hash.update(view)
            self.hash_seconds += time.perf_counter() - t0

    def release(self, buf: bytearray) -> None:
        self.free.put(buf)

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


def pump(comm: Comm, side: RootSide | LeaderSide, consumer: Consumer | None,
         timeout: float, phases: dict[str, float]) -> tuple[str, str | None]:
    """Broadcast (rank 0) or receive (leaders) the whole archive, chunk by chunk, handing
    each chunk to ``consumer`` (None: take part in the broadcast, write nothing).

    Returns (digest, error): rank 0's digest of what it read, or on a leader the digest it
    verified; ``error`` when the stream was aborted or did not arrive whole.
    """
    bcast = 0.0
    received = 0
    try:
        while True:
            t0 = time.perf_counter()
            raw = side.control()
            comm.bcast_control(raw, timeout=timeout)
            ctrl = Control.decode(raw)
            if ctrl.flag is not Flag.DATA:
                bcast += time.perf_counter() - t0
                break
            buf = side.buffer()
            comm.bcast_data(buf, ctrl.nbytes)
            bcast += time.perf_counter() - t0
            view = memoryview(buf)[:ctrl.nbytes]
            side.received(view)
            received += ctrl.nbytes
            if consumer is not None:
                consumer.stream.put(view, release=lambda b=buf: side.release(b),
                                    timeout=timeout)
            else:
                side.release(buf)
    finally:
        side.close()
    digest, err = side.finish(ctrl, received)
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
    def __init__(self, node: NodeInstall, plan: Plan, spec: WorkerSpec) -> None:
        super().__init__(name="ezpz-extract", daemon=True)
        from ..extract import ChunkStream

        self.node = node
        self.plan = plan
        self.spec = spec
        self.stream = ChunkStream(spec.depth)
        self.error: BaseException | None = None
        self.report: Any = None
        self.seconds = 0.0
        self.copy_fd = node.open_archive_copy() if spec.keep_archive and not plan.file_mode \
            else None

    def run(self) -> None:
        t0 = time.perf_counter()
        try:
            if self.plan.file_mode:
                self._write_file()
            else:
                from ..extract import SafeExtractor
                from ..extract.decode import DecodeAhead

                raw: Any = self.stream
                if self.copy_fd is not None:
                    raw = Tee(self.stream, self.copy_fd)
                dec = DecodeAhead(raw, self.plan.codec)
                try:
                    ex = SafeExtractor(self.node.staging, engine=self.spec.engine,
                                       label=self.plan.src)
                    self.report = ex.run(dec, self.plan.codec)
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
                write_all(fd, memoryview(buf)[:n])
        finally:
            os.close(fd)


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
