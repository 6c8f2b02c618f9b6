"""The control block rank 0 broadcasts before every data chunk: length, flags, the digest at
the end, and a message when the transfer is aborted. Fixed size, so a leader always knows
how much to receive."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

#: Bytes of one control block.
CONTROL_SIZE = 1024
_MSG_AT = 64


class Flag(IntEnum):
    DATA = 0
    END = 1
    ABORT = 2


@dataclass(frozen=True)
class Control:
    nbytes: int
    flag: Flag
    digest: str = ""
    msg: str = ""

    def encode(self, buf: bytearray | None = None) -> bytearray:
        buf = bytearray(CONTROL_SIZE) if buf is None else buf
        raw = self.msg.encode()[: CONTROL_SIZE - _MSG_AT]
        buf[0:8] = self.nbytes.to_bytes(8, "little")
        buf[8:16] = int(self.flag).to_bytes(8, "little")
        buf[16:48] = self.digest.encode().ljust(32, b"\0")[:32]
        buf[48:56] = len(raw).to_bytes(8, "little")
        buf[_MSG_AT:_MSG_AT + len(raw)] = raw
        return buf

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> Control:
        n = int.from_bytes(buf[0:8], "little")
        try:
            flag = Flag(int.from_bytes(buf[8:16], "little"))
        except ValueError:
            return cls(0, Flag.ABORT, msg="a corrupt control block arrived from rank 0")
        digest = bytes(buf[16:48]).rstrip(b"\0").decode()
        ml = min(int.from_bytes(buf[48:56], "little"), CONTROL_SIZE - _MSG_AT)
        return cls(n, flag, digest, bytes(buf[_MSG_AT:_MSG_AT + ml]).decode(errors="replace"))
