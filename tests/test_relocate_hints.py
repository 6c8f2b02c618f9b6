"""Relocation of trees from plain archives (no manifest) without a second pass.

The extraction notes which files held the archive's top directory name as their data passed
(ezpz.extract.hints); relocation then reads only those. The result must be the tree the full
scan makes, byte for byte: real venvs packed by real ``tar`` (plain, gzip, zstd), with and
without the C writer, conda-like trees whose binaries hold the prefix, prefixes cut across
block boundaries, and every fallback (no top directory, a top that is not the prefix's name,
the bounds) ending as the full scan does and saying why in one line.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest

from ezpz.extract import SafeExtractor, extract_stream
from ezpz.extract import hints as hints_mod
from ezpz.formats.codecs import open_decoder
from ezpz.relocate import relocate
from test_relocate import conda_tree
from trees import tree as snapshot


def _tar(argv: list[str], out: Path) -> Path:
    subprocess.run(argv, check=True)
    return out


@pytest.fixture(scope="module")
def venv_archives(tmp_path_factory) -> dict:
    """A real venv (with pip) packed by tar three ways, then its directory renamed away."""
    base = tmp_path_factory.mktemp("hvenv")
    old = base / "site" / "proj-env"
    old.parent.mkdir()
    p = subprocess.run([sys.executable, "-m", "venv", str(old)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (old / "share").mkdir(exist_ok=True)
    os.symlink(str(old / "bin" / "python"), old / "share" / "py-abs")  # absolute, inside
    os.link(old / "bin" / "activate", old / "share" / "activate-hardlink")
    out = {"old": str(old)}
    out["tar"] = _tar(["tar", "-C", str(old.parent), "-cf", str(base / "e.tar"), old.name],
                      base / "e.tar")
    out["gzip"] = _tar(["tar", "-C", str(old.parent), "-czf", str(base / "e.tgz"), old.name],
                       base / "e.tgz")
    if shutil.which("zstd"):
        out["zstd"] = _tar(["tar", "-C", str(old.parent), "--zstd", "-cf",
                            str(base / "e.tar.zst"), old.name], base / "e.tar.zst")
    out["inside-tar"] = _tar(["tar", "-C", str(old), "-cf", str(base / "in.tar"), "."],
                             base / "in.tar")
    out["inside-gzip"] = _tar(["tar", "-C", str(old), "-czf", str(base / "in.tgz"), "."],
                              base / "in.tgz")
    if shutil.which("zstd"):
        out["inside-zstd"] = _tar(["tar", "-C", str(old), "--zstd", "-cf",
                                   str(base / "in.tar.zst"), "."], base / "in.tar.zst")
    old.parent.rename(base / "gone")
    return out


class Trickle:
    """A decoded stream handing out at most ``n`` bytes per read: tiny blocks, so that the
    prefix is cut across block boundaries everywhere."""

    def __init__(self, f: BinaryIO, n: int) -> None:
        self.f, self.n = f, n

    def read(self, size: int = -1) -> bytes:
        return self.f.read(self.n if size < 0 else min(size, self.n))


def extract(archive: Path, dest: Path, *, hints: bool, trickle: int = 0):
    dest.mkdir(parents=True)
    codec = {".tgz": "gzip", ".zst": "zstd"}.get(archive.suffix, "none")
    with open(archive, "rb") as f:
        decoded = open_decoder(f, codec)
        if trickle:
            decoded = Trickle(decoded, trickle)
        return SafeExtractor(str(dest), hints=hints).run(decoded, codec)


def both_ways(archive: Path, where: Path, new: str, trickle: int = 0):
    """The tree relocated the old way (full scan) and the new way (hints): both snapshots,
    and the new way's relocation report."""
    rep_old = extract(archive, where / "old", hints=False, trickle=trickle)
    rep_new = extract(archive, where / "new", hints=True, trickle=trickle)
    assert rep_old.hints is None and rep_new.hints is not None
    top = rep_new.top
    t_old = where / "old" / top if top else where / "old"
    t_new = where / "new" / top if top else where / "new"
    relocate(t_old, new_prefix=new)
    hints = rep_new.hints.below(top)
    rel = relocate(t_new, new_prefix=new, hints=hints)
    return snapshot(t_old), snapshot(t_new), rel, hints


@pytest.mark.parametrize("fast", ["1", "0"])
@pytest.mark.parametrize("kind", ["tar", "gzip", "zstd"])
def test_real_venv_same_tree_as_the_full_scan(venv_archives, tmp_path, monkeypatch, kind, fast):
    if kind not in venv_archives:
        pytest.skip("zstd is not installed")
    monkeypatch.setenv("EZPZ_EXTRACT_C", fast)
    old_snap, new_snap, rep, hints = both_ways(venv_archives[kind], tmp_path, "/opt/new/env")
    assert rep.hinted and rep.scanned and rep.kind == "venv"
    assert rep.old_prefix == venv_archives["old"]
    assert hints.needle == b"/proj-env" and not hints.why
    assert new_snap == old_snap
    # the relocation did something, and only the listed files were candidates
    assert rep.files_rewritten >= 3 and rep.links_repointed == 1
    assert new_snap["share/py-abs"] == ("link", "../bin/python")
    assert b"/opt/new/env" in new_snap["share/activate-hardlink"][-1]
    assert not any(p.endswith(".pyc") for p in hints.files)
    assert "bin/activate" in hints.files and "share/activate-hardlink" in hints.files


@pytest.mark.parametrize("fast", ["1", "0"])
@pytest.mark.parametrize("block", [7, 61, 4096])
def test_prefix_across_block_boundaries(tmp_path, monkeypatch, block, fast):
    """A conda-like tree (text, padded binary, conda-meta records, a hardlink) read in tiny
    blocks: every occurrence cut across a boundary is still found."""
    monkeypatch.setenv("EZPZ_EXTRACT_C", fast)
    old = "/build/conda/envs/cenv-" + "q" * 40
    src = tmp_path / "src"
    top = src / ("cenv-" + "q" * 40)
    conda_tree(top, old)
    os.link(top / "lib" / "libdemo.so", top / "lib" / "libdemo.so.1")
    (top / "lib" / "big.bin").write_bytes(os.urandom(30000) + old.encode() + b"\0"
                                          + os.urandom(20000))
    archive = tmp_path / "c.tar"
    subprocess.run(["tar", "-C", str(src), "-cf", str(archive), top.name], check=True)
    old_snap, new_snap, rep, hints = both_ways(archive, tmp_path / "x", "/tmp/c", block)
    assert rep.hinted and rep.kind == "conda" and rep.old_prefix == old
    assert new_snap == old_snap
    assert sorted(hints.files) == ["bin/tool", "conda-meta/demo-1.0-0.json",
                                   "conda-meta/history", "etc/conf.d/site.cfg", "lib/big.bin",
                                   "lib/libdemo.so", "lib/libdemo.so.1"]
    assert new_snap["lib/big.bin"][-1].count(b"/tmp/c\0") == 1


def _files_archive(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """A tar of (name, data, symlink target) members, in this order."""
    with tarfile.open(path, "w") as tf:
        for name, data, target in members:
            info = tarfile.TarInfo(name)
            if target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
    return path


def _venv_members(top: str, old: str) -> list[tuple[str, bytes | None, str | None]]:
    o = old.encode()
    return [(top, None, None), (f"{top}/bin", None, None),
            (f"{top}/pyvenv.cfg", b"home = /usr/bin\ncommand = /usr/bin/python3 -m venv " + o
             + b"\n", None),
            (f"{top}/bin/activate", b"VIRTUAL_ENV=" + o + b"\nexport VIRTUAL_ENV\n", None),
            (f"{top}/bin/tool", b"#!" + o + b"/bin/python\nprint(1)\n", None),
            (f"{top}/data.txt", b"x" * 5000 + o + b"/share\n", None)]


def test_a_file_replaced_by_a_link_out_of_the_tree_is_not_followed(tmp_path):
    """A hinted file later replaced by a symlink to a file outside that holds the prefix:
    relocation reads nothing through it and writes nothing outside."""
    old = "/srv/envs/henv"
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret " + old.encode() + b"\n")
    members = _venv_members("henv", old) + [("henv/data.txt", None, str(outside))]
    archive = _files_archive(tmp_path / "h.tar", members)
    old_snap, new_snap, rep, hints = both_ways(archive, tmp_path / "x", "/tmp/h")
    assert "data.txt" in hints.files and "data.txt" in hints.links
    assert rep.hinted and new_snap == old_snap
    assert new_snap["data.txt"] == ("link", str(outside))
    assert outside.read_bytes() == b"secret " + old.encode() + b"\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.tar", "outside.txt", "x"]


@pytest.mark.parametrize("case", ["nameless", "renamed", "bound", "common", "seek-bound"])
def test_fallbacks_scan_the_tree_and_say_why_once(venv_archives, tmp_path, monkeypatch, caplog,
                                                  case):
    old = "/srv/envs/henv"
    if case == "nameless":  # from inside, and no member names the prefix (an older
        # pyvenv.cfg without command, no activate: relocation finds it in the shebangs)
        members = [(n[len("henv/"):] or ".", b"home = /usr/bin\n" if n.endswith(".cfg") else d,
                    t) for n, d, t in _venv_members("henv", old) if not n.endswith("activate")]
        archive = _files_archive(tmp_path / "n.tar", members)
    elif case == "seek-bound":  # from inside, more files before the namer than are kept
        archive = _files_archive(tmp_path / "s.tar", _inside_members(old, namer_last=True))
        monkeypatch.setattr(hints_mod, "MAX_PATHS", 2)
    if case == "renamed":  # the top directory is not the prefix's name
        archive = _files_archive(tmp_path / "r.tar", _venv_members("other", old))
    elif case in ("bound", "common"):
        archive = _files_archive(tmp_path / "b.tar", _venv_members("henv", old))
        monkeypatch.setattr(hints_mod, "MAX_PATHS" if case == "bound" else "MAX_HITS_PER_BLOCK",
                            1)
    caplog.set_level(logging.INFO, logger="ezpz")
    old_snap, new_snap, rep, hints = both_ways(archive, tmp_path / "x", "/tmp/f")
    assert not rep.hinted and rep.scanned
    assert new_snap == old_snap
    why = {"nameless": "none named its prefix", "renamed": "does not contain '/other'",
           "bound": "more than 1 files and links", "common": "more than 1 times",
           "seek-bound": "more than 2 files passed before a member named"}[case]
    lines = [r.getMessage() for r in caplog.records if "scanning every file" in r.getMessage()]
    assert len(lines) == 2, lines  # the old way and the new way, one line each
    assert why in lines[1] and "\n" not in lines[1]
    assert hints.files == [] and hints.links == []


def test_not_empty_destination_gives_no_hints(tmp_path):
    old = "/srv/envs/henv"
    archive = _files_archive(tmp_path / "e.tar", _venv_members("henv", old))
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "stray.txt").write_bytes(old.encode())
    with open(archive, "rb") as f:
        rep = SafeExtractor(str(dest), hints=True).run(f, "none")
    assert rep.hints is not None and "was not empty" in rep.hints.why
    assert rep.hints.usable(old) == rep.hints.why


def test_tar_engine_collects_the_same_hints(tmp_path):
    old = "/srv/envs/henv"
    archive = _files_archive(tmp_path / "t.tar", _venv_members("henv", old))
    got = {}
    for engine in ("python", "tar"):
        dest = tmp_path / engine
        dest.mkdir()
        with open(archive, "rb") as f:
            got[engine] = SafeExtractor(str(dest), engine=engine, hints=True).run(f, "none").hints
    assert got["python"] == got["tar"]
    assert sorted(got["tar"].files) == ["henv/bin/activate", "henv/bin/tool", "henv/data.txt",
                                        "henv/pyvenv.cfg"]


def test_without_hints_nothing_is_collected(tmp_path):
    archive = _files_archive(tmp_path / "n.tar", _venv_members("henv", "/srv/envs/henv"))
    dest = tmp_path / "n"
    dest.mkdir()
    with open(archive, "rb") as f:
        rep = extract_stream(f, str(dest))
    assert rep.hints is None
    assert rep.files == 4


# --------------------------------------------------------------------------------------
# archives made from inside the environment (no top directory): the prefix is read from
# the member that names it as it passes
# --------------------------------------------------------------------------------------
def _inside_members(old: str, *, namer_last: bool = False
                    ) -> list[tuple[str, bytes | None, str | None]]:
    """A venv archived from inside (``./`` members), with files that hold the prefix before
    and after pyvenv.cfg, and a file that does not."""
    members = [(n[len("henv/"):] or ".", d, t) for n, d, t in _venv_members("henv", old)]
    o = old.encode()
    early = [("lib", None, None), ("lib/early.txt", b"y" * 3000 + o + b"/lib\n", None),
             ("lib/plain.txt", b"nothing here\n", None)]
    cfg = [m for m in members if m[0] == "pyvenv.cfg"]
    rest = [m for m in members if m[0] != "pyvenv.cfg"]
    if namer_last:
        return rest[:1] + early + [m for m in rest[1:] if m[0] != "bin/activate"] + cfg
    return rest[:1] + early + cfg + rest[1:]


@pytest.mark.parametrize("kind", ["tar", "gzip", "zstd"])
def test_real_venv_from_inside_relocates_from_hints(venv_archives, tmp_path, kind):
    """``tar -C env -cf - .`` of a real venv: the needle is the old prefix, read from
    pyvenv.cfg or bin/activate as it passes; the tree is the one the full scan makes."""
    if kind not in venv_archives:
        pytest.skip("zstd is not installed")
    old_snap, new_snap, rep, hints = both_ways(venv_archives[f"inside-{kind}"], tmp_path,
                                               "/opt/new/env")
    assert rep.hinted and rep.kind == "venv" and rep.old_prefix == venv_archives["old"]
    assert hints.needle == os.fsencode(venv_archives["old"]) and not hints.why
    assert new_snap == old_snap
    assert "bin/activate" in hints.files and "share/activate-hardlink" in hints.files
    assert rep.files_rewritten >= 3 and rep.links_repointed == 1


@pytest.mark.parametrize("held", [0, 64 << 20])
@pytest.mark.parametrize("trickle", [0, 7, 700])
def test_from_inside_files_before_the_namer_are_found_or_listed(tmp_path, monkeypatch, held,
                                                                trickle):
    """Files whose data passed before pyvenv.cfg: found in the blocks held meanwhile, or,
    beyond the bound on what is held, listed as they are (relocation reads them); either way
    the tree is the full scan's. The prefix may be cut across tiny blocks anywhere."""
    if held == 0:
        monkeypatch.setattr(hints_mod, "MAX_SEEK_HELD", 1)
    old = "/srv/envs/henv"
    archive = _files_archive(tmp_path / "i.tar", _inside_members(old))
    old_snap, new_snap, rep, hints = both_ways(archive, tmp_path / "x", "/tmp/i", trickle)
    assert rep.hinted and rep.old_prefix == old and hints.needle == old.encode()
    assert new_snap == old_snap
    assert b"/tmp/i/lib" in new_snap["lib/early.txt"][-1]
    held_all = held != 0
    assert ("lib/plain.txt" in hints.files) is not held_all  # listed unread, or not at all
    assert {"lib/early.txt", "pyvenv.cfg", "bin/activate", "bin/tool", "data.txt"} <= \
        set(hints.files)


def test_from_inside_the_activate_script_names_the_prefix_too(tmp_path):
    old = "/srv/envs/henv"
    members = [m for m in _inside_members(old) if m[0] != "pyvenv.cfg"]
    archive = _files_archive(tmp_path / "a.tar", members)
    dest = tmp_path / "d"
    dest.mkdir()
    with open(archive, "rb") as f:
        rep = SafeExtractor(str(dest), hints=True).run(f, "none")
    assert rep.hints.needle == old.encode() and not rep.hints.why
    assert sorted(rep.hints.files) == ["bin/activate", "bin/tool", "data.txt", "lib/early.txt"]


@pytest.mark.parametrize("cfg", [
    b"command = /usr/bin/python3 -m venv /\n",  # names the root
    b"command = /usr/bin/python3 -m venv 'unterminated\n",  # not shell words
    b"command = /usr/bin/python3 -m venv relative/env\n",  # not absolute
    b"command = " + b"/x" * 40000 + b"\n",  # longer than what a namer may be
    b"command = /usr/bin/python3 -m venv /srv/envs/other\n",  # not the activate's prefix
    b"\xff\xfe\x00 command = /srv\n",  # binary
])
def test_from_inside_a_lying_or_broken_namer_ends_as_the_full_scan(tmp_path, cfg):
    """Whatever pyvenv.cfg says, the tree is the full scan's: a prefix that is not the one
    relocation detects is refused by the hints (one line), a name not read is sought on."""
    old = "/srv/envs/henv"
    members = [(n, cfg if n == "pyvenv.cfg" else d, t) for n, d, t in _inside_members(old)]
    archive = _files_archive(tmp_path / "l.tar", members)
    old_snap, new_snap, rep, hints = both_ways(archive, tmp_path / "x", "/tmp/l", 61)
    assert new_snap == old_snap
    assert rep.old_prefix == old
    why = hints.usable(old)
    if rep.hinted:  # bin/activate, after pyvenv.cfg, named the prefix
        assert hints.needle == old.encode() and not why
    else:
        assert why and "\n" not in why
