"""The frame structure of a zstd stream (RFC 8878), read without decoding: where each frame
ends and how many bytes it declares. The decoder uses it to hand independent frames to
several threads; anything this reader does not accept is left to the one-stream decoder."""

from __future__ import annotations

from typing import Any, NamedTuple

ZSTD_MAGIC = 0xFD2FB528
#: Skippable frames: magic 0x184D2A50 to 0x184D2A5F, a 4-byte size, that many bytes.
SKIPPABLE_MAGIC = 0x184D2A50
SKIPPABLE_MASK = 0xFFFFFFF0
_FCS_BYTES = (0, 2, 4, 8)  # by Frame_Content_Size_flag (flag 0: 1 byte if single segment)
_DICT_BYTES = (0, 1, 2, 4)  # by Dictionary_ID_flag


class Frame(NamedTuple):
    """One whole frame: ``end`` (exclusive) in the buffer it was read from, ``size``: the
    content size its header declares (0 for a skippable frame)."""

    end: int
    size: int
    skippable: bool


class NotSplittable(Exception):
    """The frame at this point cannot be decoded on its own by ezpz's rules (no declared
    content size, a dictionary, a reserved bit, over a limit, or not a zstd frame)."""


class FrameScan:
    """Reads one frame starting at ``start`` of a growing buffer, block by block.

    ``feed(buf)`` returns the :class:`Frame` once ``buf`` holds all of it, None while more
    bytes are needed (it resumes where it stopped), and raises :class:`NotSplittable` as
    soon as the header shows the frame is not one to split off: no content size, larger than
    ``max_size`` (decoded) or ``max_bytes`` (compressed), a dictionary, reserved bits.
    """

    def __init__(self, start: int, max_size: int, max_bytes: int) -> None:
        self.start = start
        self.max_size = max_size
        self.max_bytes = max_bytes
        self._pos: int | None = None  # next block header, once the frame header was read
        self._size = 0
        self._checksum = 0
        self._skip_end: int | None = None

    def feed(self, buf: Any) -> Frame | None:
        if self._pos is None and self._skip_end is None and not self._header(buf):
            return None
        n = len(buf)
        if self._skip_end is not None:
            return Frame(self._skip_end, 0, True) if self._skip_end <= n else None
        pos = self._pos
        assert pos is not None
        limit = self.start + self.max_bytes
        while True:
            if pos + 3 > n:
                break
            bh = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            btype = (bh >> 1) & 3
            if btype == 3:
                raise NotSplittable("reserved block type")
            nxt = pos + 3 + (1 if btype == 1 else bh >> 3)
            if nxt > limit:
                raise NotSplittable("frame larger than the limit")
            if bh & 1:  # the last block
                end = nxt + self._checksum
                if end > n:
                    break
                return Frame(end, self._size, False)
            pos = nxt
        self._pos = pos
        return None

    def _header(self, buf: Any) -> bool:
        s = self.start
        n = len(buf)
        if n - s < 4:
            return False
        magic = int.from_bytes(buf[s:s + 4], "little")
        if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC:
            if n - s < 8:
                return False
            size = int.from_bytes(buf[s + 4:s + 8], "little")
            if 8 + size > self.max_bytes:
                raise NotSplittable("skippable frame larger than the limit")
            self._skip_end = s + 8 + size
            return True
        if magic != ZSTD_MAGIC:
            raise NotSplittable("not a zstd frame")
        if n - s < 5:
            return False
        fhd = buf[s + 4]
        fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
        if fhd & 0x08:
            raise NotSplittable("reserved bit set")
        if fhd & 0x03:
            raise NotSplittable("frame needs a dictionary")
        fcs_len = 1 if (fcs_flag == 0 and single) else _FCS_BYTES[fcs_flag]
        if not fcs_len:
            raise NotSplittable("no content size")
        pos = s + 5 + (0 if single else 1) + _DICT_BYTES[fhd & 3]
        if n < pos + fcs_len:
            return False
        size = int.from_bytes(buf[pos:pos + fcs_len], "little") + (256 if fcs_len == 2 else 0)
        if size > self.max_size:
            raise NotSplittable("frame content larger than the limit")
        self._size = size
        self._checksum = 4 if fhd & 0x04 else 0
        self._pos = pos + fcs_len
        return True


def split_frames(data: bytes, max_size: int = 1 << 62, max_bytes: int = 1 << 62) -> list[Frame]:
    """Every frame of a whole zstd stream in memory (tools and tests); raises
    :class:`NotSplittable` where one is not accepted, ValueError when the data ends inside
    a frame."""
    out = []
    start = 0
    while start < len(data):
        frame = FrameScan(start, max_size, max_bytes).feed(data)
        if frame is None:
            raise ValueError(f"the zstd stream ends inside the frame at offset {start}")
        out.append(frame)
        start = frame.end
    return out
