"""What travels between ranks, byte for byte.

- The control block rank 0 broadcasts before every data chunk: length, flags, the chunk's
  offset in the archive, the digest at the end, and a message when the transfer is aborted.
  Fixed size, so a leader always knows how much to receive.
- Mail: small messages between rank 0 and one node leader (progress, status, the final word,
  and the recovery of the broadcast after a node is lost). Each message travels in frames of
  :data:`FRAME` bytes (a fixed size: every backend can post a receive for the next frame
  before knowing who sends it); a message longer than one frame is split and reassembled.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

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
    #: Offset of this chunk in the archive (a recovered broadcast may resend bytes).
    offset: int = 0

    def encode(self, buf: bytearray | None = None) -> bytearray:
        buf = bytearray(CONTROL_SIZE) if buf is None else buf
        raw = self.msg.encode()[: CONTROL_SIZE - _MSG_AT]
        buf[0:8] = self.nbytes.to_bytes(8, "little")
        buf[8:16] = int(self.flag).to_bytes(8, "little")
        buf[16:48] = self.digest.encode().ljust(32, b"\0")[:32]
        buf[48:56] = len(raw).to_bytes(8, "little")
        buf[56:64] = self.offset.to_bytes(8, "little")
        buf[_MSG_AT:_MSG_AT + len(raw)] = raw
        return buf

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> Control:
        n = int.from_bytes(buf[0:8], "little")
        try:
            flag = Flag(int.from_bytes(buf[8:16], "little"))
        except ValueError:
            return cls(0, Flag.ABORT, msg="a corrupt control block arrived from rank 0")
        digest = bytes(buf[16:48]).rstrip(b"\0").decode(errors="replace")
        ml = min(int.from_bytes(buf[48:56], "little"), CONTROL_SIZE - _MSG_AT)
        offset = int.from_bytes(buf[56:64], "little")
        return cls(n, flag, digest, bytes(buf[_MSG_AT:_MSG_AT + ml]).decode(errors="replace"),
                   offset)


# --------------------------------------------------------------------------------------
# mail
# --------------------------------------------------------------------------------------
class Kind(IntEnum):
    """What a mail message is (also its tag on the wire)."""

    #: leader -> root: {"recv": bytes received, "done": bytes extracted} (also a heartbeat)
    PROGRESS = 11
    #: leader -> root: the node received the end of the stream ({"pos": bytes})
    STREAM_DONE = 12
    #: leader -> root: the node's final :class:`~ezpz.transfer.spec.NodeStatus`
    STATUS = 13
    #: root -> leader: the run's outcome ({"status", "exit_code", "failed": [...]})
    FINAL = 14
    #: root -> leader: still alive, still waiting for the other nodes
    KEEPALIVE = 15
    #: leader -> root: the broadcast made no progress here ({"epoch", "pos"})
    STALL = 16
    #: root -> leader: the broadcast is being recovered: where are you? ({"epoch"})
    PROBE = 17
    #: leader -> root: answer to PROBE ({"epoch", "pos"})
    POSITION = 18
    #: root -> leader: new broadcast group ({"epoch", "members", "resume"})
    EPOCH = 19
    #: root -> leader: you were left out of the broadcast ({"epoch", "why"})
    DROP = 20
    #: leader -> root: the final word arrived; nothing more will come from this node
    BYE = 21


#: Bytes of one mail frame (header included).
FRAME = 4096
_HEAD = struct.Struct("<IIIII")  # kind, source node, message id, total length, offset
FRAME_PAYLOAD = FRAME - _HEAD.size
#: Longest message (a final word listing thousands of failed hosts fits easily).
MAX_MESSAGE = 64 << 20


def frames(kind: Kind, src: int, msg_id: int, obj: Any) -> list[bytearray]:
    """``obj`` as JSON, cut into the fixed-size frames of one message from node ``src``."""
    raw = json.dumps(obj, separators=(",", ":")).encode()
    out = []
    for off in range(0, max(len(raw), 1), FRAME_PAYLOAD):
        part = raw[off:off + FRAME_PAYLOAD]
        frame = bytearray(FRAME)
        _HEAD.pack_into(frame, 0, int(kind), src, msg_id & 0xFFFFFFFF, len(raw), off)
        frame[_HEAD.size:_HEAD.size + len(part)] = part
        out.append(frame)
    return out


class Assembler:
    """Puts frames back together, per sender; frames of one message arrive in order."""

    def __init__(self) -> None:
        self._parts: dict[tuple[int, int], bytearray] = {}

    def add(self, frame: bytes | bytearray | memoryview) -> tuple[int, Kind, Any] | None:
        """(source node, kind, message) when ``frame`` completes one, else None (also for a
        frame that makes no sense: mail is never trusted blindly)."""
        kind_no, src, msg_id, total, off = _HEAD.unpack_from(frame, 0)
        try:
            kind = Kind(kind_no)
        except ValueError:
            return None
        if total > MAX_MESSAGE or off > total:
            return None
        part = bytes(frame[_HEAD.size:_HEAD.size + min(FRAME_PAYLOAD, total - off)])
        if off == 0 and len(part) >= total:
            return _decoded(src, kind, part[:total])
        key = (src, msg_id)
        if off == 0:
            self._parts[key] = bytearray()
        buf = self._parts.get(key)
        if buf is None or len(buf) != off:  # a frame was lost or came out of order
            self._parts.pop(key, None)
            return None
        buf += part
        if len(buf) < total:
            return None
        del self._parts[key]
        return _decoded(src, kind, bytes(buf))


def _decoded(src: int, kind: Kind, raw: bytes) -> tuple[int, Kind, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return (src, kind, obj) if isinstance(obj, dict) else None
