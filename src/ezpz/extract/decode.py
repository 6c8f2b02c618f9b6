"""Decoding ahead of the tar parser, in a thread of its own."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from ..formats.codecs import READ_SIZE, gzip_blocks, open_decoder


class DecodeAhead:
    """The decompressed stream, decoded in its own thread ahead of the tar parser.

    zstandard and ISA-L (zlib without it) release the GIL while they decompress, so decoding
    runs beside the parsing and file writes of the extraction thread instead of in turn with
    them. Blocks of up to ``READ_SIZE`` bytes pass through a bounded queue (memory: ``depth``
    blocks); a decoder error is raised again in the reader.
    """

    def __init__(self, raw: Any, codec: str, depth: int = 8) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
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


def _read_blocks(dec: Any, size: int) -> Iterator[bytes]:
    while True:
        block = dec.read(size)
        if not block:
            return
        yield block

