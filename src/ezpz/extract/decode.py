"""Decoding ahead of the tar parser: in a thread of its own, and for zstd archives made of
independent frames (ezpz-tar-env's) on several threads at once."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, cast

from ..config import EXTRACT_THREADS_AUTO
from ..formats.codecs import READ_SIZE, gzip_blocks, open_decoder
from ..formats.zstdframes import FrameScan, NotSplittable
from ..fsutil import cpu_count
from .streams import Prepend

#: Largest frame decoded on its own (declared content size); a larger one, or one without a
#: declared size, and everything after it is decoded as one stream. ezpz-tar-env writes
#: frames of 16 MiB.
FRAME_MAX = 64 << 20
#: Most frames decoded at once, whatever the thread count: the memory of the decode-ahead is
#: about (this + 1) x the frame size (16 MiB for ezpz-tar-env's frames).
FRAMES_AHEAD_MAX = 4


def resolve_threads(count: int) -> int:
    """Threads for one node's extraction: ``count``, or for 0 (``transfer.threads=auto``)
    the cores this process may run on (its affinity mask), at most
    :data:`~ezpz.config.EXTRACT_THREADS_AUTO`."""
    return count if count > 0 else min(cpu_count(), EXTRACT_THREADS_AUTO)


def decode_threads(total: int) -> int:
    """Of ``total`` extraction threads, the ones that decode: half of them from 4 on (zstd
    frames side by side), else one. Below 4 cores a second decoding thread only competes
    with the parser and the writers (and costs CPU: frames decoded ahead are fresh memory)."""
    return total // 2 if total >= 4 else 1


#: Most writer threads, whatever ``transfer.threads`` says: each holds up to
#: ``WritePool.DEPTH`` decoded blocks (1 MiB) waiting, and a node's filesystem takes no more.
WRITERS_MAX = 16


def write_threads(total: int) -> int:
    """Of ``total`` extraction threads, the ones that write file data: the other half from
    4 on (the parser, which runs Python, sits beside them), at most :data:`WRITERS_MAX`;
    else one."""
    return min(total - decode_threads(total), WRITERS_MAX) if total >= 4 else 1


class DecodeAhead:
    """The decompressed stream, decoded in its own thread ahead of the tar parser.

    zstandard and ISA-L (zlib without it) release the GIL while they decompress, so decoding
    runs beside the parsing and file writes of the extraction thread instead of in turn with
    them. Blocks of up to ``READ_SIZE`` bytes pass through a bounded queue (memory: ``depth``
    blocks); a decoder error is raised again in the reader, after every byte before it.

    With ``threads`` > 1 (default: :func:`decode_threads` of ``transfer.threads=auto``), a
    zstd stream is cut at its frame boundaries (read from the frame headers,
    :mod:`ezpz.formats.zstdframes`) and frames that declare their size (at most
    :data:`FRAME_MAX`) are decoded on up to ``threads`` threads (at most
    :data:`FRAMES_AHEAD_MAX` frames at a time, one more being read), each strictly: the
    whole frame, its size and checksum, nothing after it. Output order is the stream's. From
    the first frame that does not qualify (a one-stream archive's only frame, say) the rest
    is decoded as one stream, exactly as with one thread.
    """

    def __init__(self, raw: Any, codec: str, depth: int = 8, threads: int | None = None
                 ) -> None:
        if threads is None:
            threads = decode_threads(resolve_threads(0))
        self._stop = threading.Event()
        self._cur: Any = b""
        self._pos = 0
        self._eof = False
        self._pending: deque[bytes] = deque()
        self._pool: ThreadPoolExecutor | None = None
        items: Iterator[Any]
        if codec == "zstd" and threads > 1:
            ahead = min(threads, FRAMES_AHEAD_MAX)
            self._pool = ThreadPoolExecutor(ahead, thread_name_prefix="ezpz-unzstd")
            # in memory: the frames queued, the one the producer holds, the one being read
            self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, ahead - 1))
            items = _frame_items(raw, self._pool, self._stop)
        else:
            self._q = queue.Queue(maxsize=depth)
            if codec == "gzip":
                items = gzip_blocks(raw, READ_SIZE)
            else:
                items = _read_blocks(open_decoder(raw, codec), READ_SIZE)
        self._items = items
        self._thread = threading.Thread(target=self._run, name="ezpz-decode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
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
        if isinstance(item, Future):
            item.cancel()
        return False

    def _get(self) -> Any:
        while True:
            try:
                return self._q.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._q.empty():
                    return b""

    def _next_block(self) -> bool:
        """Make the next non-empty block current; False at the end of the stream."""
        while True:
            if self._pending:
                self._cur, self._pos = self._pending.popleft(), 0
                if self._cur:
                    return True
                continue
            if self._eof:
                return False
            item = self._get()
            if isinstance(item, Future):
                try:
                    self._pending.extend(item.result())
                except BaseException:
                    self._eof = True
                    raise
                continue
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return False
            self._cur, self._pos = item, 0
            return True

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._cur) and not self._next_block():
            return b""
        if self._pos == 0 and (n is None or n < 0 or n >= len(self._cur)):
            self._pos = len(self._cur)
            out: bytes = self._cur
            return out  # the whole block, no copy
        end = len(self._cur) if n is None or n < 0 else self._pos + n
        out = self._cur[self._pos:end]
        self._pos += len(out)
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _read_blocks(dec: Any, size: int) -> Iterator[bytes]:
    while True:
        block = dec.read(size)
        if not block:
            return
        yield block


_local = threading.local()


def _decode_frame(frame: bytes, size: int) -> list[bytes]:
    """One whole zstd frame declaring ``size`` bytes, decoded (in blocks of at most
    ``READ_SIZE``, straight from the decoder: no large buffer, no copy) and checked: zstd
    checks the declared size and the checksum; decoding that stops short or runs on (the
    frame's end misjudged) is refused here."""
    import zstandard

    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    reader = dctx.stream_reader(frame, read_size=len(frame) or 1)
    blocks = []
    total = 0
    while True:
        block = reader.read(READ_SIZE)
        if not block:
            break
        total += len(block)
        if total > size:
            raise zstandard.ZstdError(f"a zstd frame holds more than the {size} bytes it "
                                      "declares")
        blocks.append(block)
    if total != size:
        raise zstandard.ZstdError(f"a zstd frame holds {total} of the {size} bytes it declares "
                                  "(truncated or corrupt)")
    return blocks


def _frame_items(raw: Any, pool: ThreadPoolExecutor, stop: threading.Event) -> Iterator[Any]:
    """Futures of decoded frames, in stream order, then (from the first frame that is not
    split off) the blocks of the one-stream decoder over the rest."""
    buf = bytearray()
    start = 0  # of the current frame in buf
    scan = FrameScan(0, FRAME_MAX, FRAME_MAX + (1 << 20))
    eof = False
    seen = False  # an empty stream is no zstd stream: the one-stream decoder says so
    while not stop.is_set():
        try:
            frame = scan.feed(buf)
        except NotSplittable:
            break
        if frame is not None:
            seen = True
            if not frame.skippable:
                with memoryview(buf) as view:
                    piece = bytes(view[start:frame.end])
                yield pool.submit(_decode_frame, piece, frame.size)
            start = frame.end
            if start >= len(buf) // 2 and start:
                del buf[:start]
                start = 0
            scan = FrameScan(start, FRAME_MAX, FRAME_MAX + (1 << 20))
            if eof and start == len(buf):
                return
            continue
        if eof:
            break  # the stream ends inside a frame: the one-stream decoder says how
        more = raw.read(READ_SIZE)
        if not more:
            eof = True
            if start == len(buf) and seen:
                return
            if not seen and not buf:
                break
            continue
        buf += more
    if stop.is_set():
        return
    rest = bytes(buf[start:])
    del buf
    yield from _read_blocks(open_decoder(cast(BinaryIO, Prepend(rest, raw)), "zstd"), READ_SIZE)

