"""The extraction fuzz harness: mutated archives through reader, checker and writers.

Seeds are slices of a real venv's archive (every tar format) and every hostile shape the
tests know; mutations rewrite header fields (names, link targets, types, numbers in octal,
base-256 and negative forms, the prefix field under either magic), insert pax, global pax
and GNU long-name headers (some declaring gigabytes), duplicate, drop and reorder members,
flip bytes and truncate. Each case is extracted into ``dst`` inside a sandbox whose other
entries are canaries (and the symlink targets the mutations aim at); after each case:

- nothing outside ``dst`` changed (names, content, modes, mtimes);
- the only exception is ezpz's own (EzpzError): a message, never a traceback;
- the peak resident memory grew by less than ``RSS_CAP`` over the case (``/proc/self/
  clear_refs`` resets the peak before it).

Used by tests/test_fuzz_extract.py (a bounded run, hypothesis drives the choices) and by
benchmarks/fuzz_extract.py (a long run, random choices).
"""

from __future__ import annotations

import io
import os
import random
import stat
import subprocess
import sys
import tarfile
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import tarbuild as tb
from ezpz.errors import EzpzError
from ezpz.formats.tarread import TarReader

RSS_CAP = 96 << 20
TYPES = [b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"x", b"g", b"L", b"K", b"S",
         b"D", b"V", b"M", b"Z"]


class Sandbox:
    """``dst`` and canaries around it; ``OUT`` is the outside directory mutations aim at."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dst = root / "dst"
        self.out = root / "out"
        self.dst.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(exist_ok=True)
        (self.out / "canary").write_text("canary")
        (root / "flag").write_text("flag")
        os.symlink("out/canary", root / "link-to-canary")
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            if dirpath == str(self.root):
                dirnames[:] = [d for d in dirnames if d != "dst"]
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                body = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else \
                    os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
                out[os.path.relpath(p, self.root)] = (st.st_mode, st.st_mtime_ns, body)
        return out

    def reset(self) -> None:
        from ezpz.fsutil import remove

        remove(str(self.dst))
        self.dst.mkdir()


# -- seeds --------------------------------------------------------------------------------
def _slices(data: bytes, rnd: random.Random, count: int) -> list[bytes]:
    """Raw byte ranges of consecutive members of ``data`` (their own encodings kept)."""
    r = TarReader(io.BytesIO(data))
    spans = []
    while True:
        m = r.next()
        if m is None:
            break
        data_blocks = 0 if m.type in (b"1", b"2", b"3", b"4", b"5", b"6") else \
            (m.size + 511) // 512 * 512
        spans.append((m.offset, m.offset_data + data_blocks))
    out = []
    for _ in range(count):
        i = rnd.randrange(len(spans))
        j = min(len(spans), i + rnd.randint(1, 12))
        out.append(data[spans[i][0]:spans[j - 1][1]] + tb.end())
    return out


def venv_archives(work: Path) -> list[bytes]:
    env = work / "venv"
    if not env.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
        (env / ("long-" + "n" * 120)).write_text("long name")
        os.symlink("long-" + "n" * 120, env / "to-long")
    out = []
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            tf.add(env, arcname="venv", filter=lambda ti, fmt=fmt: None
                   if fmt == tarfile.USTAR_FORMAT and "n" * 120 in ti.name + ti.linkname
                   else ti)
        out.append(buf.getvalue())
    return out


def hostile(box: Sandbox) -> list[bytes]:
    o = str(box.out)
    D, S, H = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    shapes = [
        [dict(name="l", type=S, linkname=o), dict(name="l/canary", data=b"x")],
        [dict(name="d", type=D), dict(name="d/u", type=S, linkname="../.."),
         dict(name="d/u/out/canary", data=b"x")],
        [dict(name="s", type=S, linkname=o + "/canary"), dict(name="h", type=H, linkname="s")],
        [dict(name="a", type=S, linkname="b"), dict(name="b", type=S, linkname=".."),
         dict(name="a/flag", data=b"x")],
        [dict(name="f", data=b"1"), dict(name="f", type=S, linkname=o),
         dict(name="f/canary", data=b"2")],
        [dict(name="v/.ezpz/installed.json", data=b"{}")],
        [dict(name="x", type=S, linkname=o), dict(name="x", type=D, mode=0o777)],
        [dict(name="../flag", data=b"x")],
        [dict(name=o + "/canary", data=b"x")],
        [dict(name="d", type=D, mode=0), dict(name="d/f", data=b"x")],
    ]
    out = [tb.with_tarfile(s, fmt=f) for s in shapes for f in (tarfile.GNU_FORMAT,
                                                                  tarfile.PAX_FORMAT)]
    out += [
        tb.header(b"tool", mode=0o4755, size=1, magic=tb.GNU_MAGIC, prefix=b"../x") +
        tb.pad(b"x") + tb.end(),
        tb.pax({b"path": b"p"}, declared=1 << 31) + tb.member("p", b"1") + tb.end(),
        tb.gnu_long(b"g" * 5000) + tb.member("x", b"1") + tb.end(),
        tb.member("neg", b"", size_field=tb.base256(-1, 12)) + tb.end(),
        tb.pax({b"mtime": b"1"}, typ=b"g") + tb.member("a", b"1") + tb.end(),
    ]
    return out


# -- mutations ----------------------------------------------------------------------------
def _headers(data: bytes) -> list[int]:
    """Offsets of blocks that look like headers (a valid ustar magic or a checksum field)."""
    return [i for i in range(0, len(data) - 511, 512)
            if data[i + 257:i + 262] == b"ustar" or data[i + 148:i + 154].isdigit()]


def _rechecksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % (sum(block) % (8 ** 6))


def names(box: Sandbox) -> list[bytes]:
    o = str(box.out).encode()
    return [b"../flag", o + b"/canary", b"a/../../flag", b".ezpz/installed.json",
            b"v/.ezpz/x", b"", b".", b"./", b"a" * 300, b"d/" * 2100, b"x\0y", b"\\abs",
            b"link-to-canary", b"l/canary", b"venv/bin/python", b"venv/lib64/x", b"h"]


def targets(box: Sandbox) -> list[bytes]:
    o = str(box.out).encode()
    return [o, o + b"/canary", b"../..", b"../../out", b"", b"venv/bin/python",
            b"venv", b"l" * 5000, b".", b"..", b"/", b"s"]


def mutate(data: bytes, rnd: random.Random, box: Sandbox) -> bytes:
    buf = bytearray(data)
    heads = _headers(bytes(buf)) or [0]
    op = rnd.randrange(12)
    h = rnd.choice(heads)
    block = bytearray(buf[h:h + 512].ljust(512, b"\0"))
    fixsum = rnd.random() < 0.9
    if op == 0:  # the name
        n = rnd.choice(names(box))
        if len(n) > 100 or rnd.random() < 0.3:
            ins = tb.pax({b"path": n}) if rnd.random() < 0.5 else tb.gnu_long(n)
            return bytes(buf[:h]) + ins + bytes(buf[h:])
        block[0:100] = n[:100].ljust(100, b"\0")
    elif op == 1:  # the link target
        t = rnd.choice(targets(box))
        if len(t) > 100 or rnd.random() < 0.3:
            ins = tb.pax({b"linkpath": t}) if rnd.random() < 0.5 else tb.gnu_long(t, typ=b"K")
            return bytes(buf[:h]) + ins + bytes(buf[h:])
        block[157:257] = t[:100].ljust(100, b"\0")
    elif op == 2:  # the type
        block[156:157] = rnd.choice(TYPES)
    elif op == 3:  # a number field
        start, width = rnd.choice([(100, 8), (124, 12), (136, 12)])
        v = rnd.choice([0, 1, 511, 512, 4097, 1 << 31, (1 << 63) - 1, -1, -512])
        form = rnd.randrange(3)
        if form == 0 and v >= 0:
            block[start:start + width] = (b"%0*o" % (width - 1, v))[-width + 1:] + b"\0"
        elif form == 1:
            v = max(min(v, (1 << (8 * (width - 1))) - 1), -(1 << (8 * (width - 1))))
            block[start:start + width] = tb.base256(v, width)
        else:
            block[start:start + width] = bytes(rnd.randrange(256) for _ in range(width))
    elif op == 4:  # the prefix field and the magic
        block[345:500] = rnd.choice([b"../..", b"out", str(box.out).encode(), b"a" * 155])[
            :155].ljust(155, b"\0")
        block[257:265] = rnd.choice([tb.GNU_MAGIC, tb.POSIX_MAGIC, b"\0" * 8])
    elif op == 5:  # an extended header before a member
        recs = {rnd.choice([b"path", b"linkpath", b"size", b"mtime", b"GNU.sparse.major",
                            b"uid", b"hdrcharset", b"x" * 40]):
                rnd.choice([b"", b"-1", b"99999999999999999999", b"1e9", b"a/../b", b"x" * 200,
                            str(box.out).encode()]) for _ in range(rnd.randint(1, 3))}
        declared = rnd.choice([None, None, 0, 1 << 31, 70_000])
        ins = tb.pax(recs, typ=rnd.choice([b"x", b"g"]), declared=declared)
        return bytes(buf[:h]) + ins + bytes(buf[h:])
    elif op == 6:  # duplicate a range of blocks
        a = rnd.randrange(0, max(1, len(buf) // 512)) * 512
        b = min(len(buf), a + rnd.randint(1, 8) * 512)
        return bytes(buf[:b]) + bytes(buf[a:b]) + bytes(buf[b:])
    elif op == 7:  # drop a range of blocks
        a = rnd.randrange(0, max(1, len(buf) // 512)) * 512
        return bytes(buf[:a]) + bytes(buf[a + rnd.randint(1, 4) * 512:])
    elif op == 8:  # truncate
        return bytes(buf[:rnd.randrange(0, len(buf) + 1)])
    elif op == 9:  # flip bytes anywhere
        for _ in range(rnd.randint(1, 8)):
            if buf:
                buf[rnd.randrange(len(buf))] ^= 1 << rnd.randrange(8)
        return bytes(buf)
    elif op == 10:  # the mode
        block[100:108] = b"%07o\0" % rnd.choice([0, 0o4755, 0o2775, 0o7777, 0o777, 0o555])
    else:  # another archive's members appended before the end
        return bytes(buf.rstrip(b"\0")) + bytes(-len(buf.rstrip(b"\0")) % 512) + \
            tb.member(rnd.choice(names(box)[:4]).decode(errors="replace"), b"z") + tb.end()
    if fixsum:
        _rechecksum(block)
    buf[h:h + 512] = block
    return bytes(buf)


# -- one case -----------------------------------------------------------------------------
def _rss() -> tuple[int, int]:
    with open("/proc/self/status") as fh:
        vals = {ln.split(":")[0]: int(ln.split()[1]) << 10 for ln in fh
                if ln.startswith(("VmRSS", "VmHWM"))}
    return vals["VmRSS"], vals["VmHWM"]


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


@dataclass
class Findings:
    cases: int = 0
    refused: int = 0
    extracted: int = 0
    problems: list[str] = field(default_factory=list)


def run_case(data: bytes, engine: str, box: Sandbox, findings: Findings,
             save: Path | None = None) -> None:
    """Extract ``data`` into the sandbox; record any broken invariant."""
    from ezpz.extract import extract_stream

    box.reset()
    before_rss, _ = _rss()
    _reset_peak()
    problem = None
    try:
        extract_stream(io.BytesIO(data), str(box.dst), codec="none", engine=engine,
                       label="fuzz")
        findings.extracted += 1
    except EzpzError as exc:
        findings.refused += 1
        if "\n" in str(exc):
            problem = f"multi-line error: {str(exc)[:200]!r}"
    except Exception:  # noqa: BLE001 - recorded as a finding
        problem = "exception: " + traceback.format_exc(limit=4).strip().splitlines()[-1]
    _, peak = _rss()
    if peak - before_rss > RSS_CAP:
        problem = f"peak RSS grew by {(peak - before_rss) >> 20} MB"
    if box.snapshot() != box.before:
        problem = "something outside dst changed"
    findings.cases += 1
    if problem is not None:
        findings.problems.append(f"{engine}: {problem}")
        if save is not None:
            fd, path = tempfile.mkstemp(prefix="finding-", suffix=".tar", dir=save)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        # repair the sandbox so that later cases are judged on their own
        from ezpz.fsutil import remove

        remove(str(box.root))
        box.__init__(box.root)  # type: ignore[misc]
