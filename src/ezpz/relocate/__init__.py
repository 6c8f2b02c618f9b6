"""Make a venv or conda environment work at its new prefix.

An environment unpacked somewhere else still names its old absolute prefix in activate
scripts, script shebangs, ``pyvenv.cfg``, conda's text files and some binaries. Without a
rewrite ``/tmp/env/bin/pip`` silently runs the interpreter on the shared filesystem.

:func:`relocate` rewrites the old prefix to the new one:

- text files: plain replacement of the prefix (only where it ends a path component, so
  ``/a/env`` never matches inside ``/a/env2``); shebangs are rebuilt the way pip writes
  them: ``#!<python>`` when it fits the kernel's 127-byte limit and has no whitespace,
  else the ``#!/bin/sh`` + ``'''exec'`` trampoline, whichever the new path needs;
- binary files: conda's rule — each NUL-terminated string holding the prefix is rewritten
  in place and padded with NULs so that the file keeps its length; a new prefix longer than
  the old one cannot fit and is refused before any file is touched;
- ``conda-meta/*.json``: path records, leaving the packages' ``prefix_placeholder`` alone;
- symlinks whose absolute target lies under the old prefix become relative links;
- an interpreter bundled under ``.ezpz/python`` (``bundle_python=true`` in tar-env): the
  venv's ``home``/``executable`` keys and ``bin/python*`` links are pointed at it, and its
  absolute library run path is replaced by an ``$ORIGIN``-relative one.

Every file is reached through the tree's anchor (:mod:`ezpz.anchored`): nothing is read,
written or re-pointed through a symlink (a path with a link on the way is refused, a listed
file that is a link is left as it is), walks are iterative, and files are rewritten from
descriptor to descriptor in bounded memory (:mod:`.stream`). Every changed file is first
written next to itself under a temporary name (mode kept); only when all of them are written
are they renamed into place, so an error leaves the tree as it was. The transfer worker calls this on each node's staging directory with ``new_prefix`` set
to the final destination, before the atomic rename.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

from ..anchored import Anchor
from ..envkind import activation_hint
from ..errors import RelocateError
from ..formats.manifest import BUNDLED_PYTHON_RELPATH, MANIFEST_RELPATH, Manifest
from ..formats.prefix import PrefixHints
from ..log import get_logger
from .detect import detect_env, scan_prefix_files
from .plan import Plan
from .rewrite import FORBIDDEN_IN_PREFIX

log = get_logger(__name__)

__all__ = ["RelocateReport", "relocate", "detect_env", "activation_hint"]


@dataclass
class RelocateReport:
    """What :func:`relocate` did."""

    kind: str  # venv | conda | data
    old_prefix: str | None
    new_prefix: str
    files_rewritten: int
    seconds: float
    scanned: bool  # True when there was no manifest and the tree was scanned for the prefix
    links_repointed: int = 0
    #: True when the files to rewrite came from the extraction's hints (no scan)
    hinted: bool = False


# --------------------------------------------------------------------------------------------


def relocate(root: str | os.PathLike[str], new_prefix: str | os.PathLike[str] | None = None,
             manifest: Manifest | None = None, *, old_prefix: str | None = None,
             hints: PrefixHints | None = None) -> RelocateReport:
    """Rewrite the environment unpacked at ``root`` so that it works at ``new_prefix``.

    ``root`` is where the tree is now; ``new_prefix`` where it will be used (default: ``root``).
    ``manifest`` defaults to ``<root>/.ezpz/manifest.json``; without one the kind and old
    prefix are detected (or taken from ``old_prefix``) and the tree is scanned, which reads
    every file and is slower, unless ``hints`` from the extraction that wrote the tree (a
    fresh tree, paths relative to ``root``) name the only files that can hold it (see
    :mod:`ezpz.extract.hints`). Raises :class:`RelocateError` with nothing changed when the
    environment cannot be relocated.
    """
    t0 = time.perf_counter()
    root_s = os.fspath(root)
    if not os.path.isdir(root_s):
        raise RelocateError(f"cannot relocate {root_s}: not a directory")
    new = os.path.normpath(os.path.abspath(os.fspath(new_prefix) if new_prefix is not None
                                           else root_s))
    _check_new_prefix(new)
    try:
        anchor = Anchor(os.path.abspath(root_s))
    except OSError as exc:
        raise RelocateError(f"cannot relocate {root_s}: {exc.strerror or exc}") from None
    with anchor:
        return _relocate(anchor, new, manifest, old_prefix, t0, hints)


def _relocate(root: Anchor, new: str, manifest: Manifest | None, old_prefix: str | None,
              t0: float, hints: PrefixHints | None = None) -> RelocateReport:
    where = root.path
    if manifest is None:
        try:
            manifest = Manifest.load(where)
        except (OSError, ValueError, TypeError) as exc:
            raise RelocateError(f"cannot read {os.path.join(where, MANIFEST_RELPATH)}: "
                                f"{exc}") from None

    scanned = False
    bundled: str | None = None
    old: str | None
    if manifest is not None:
        kind, old = manifest.kind, old_prefix or manifest.prefix
        bundled = manifest.bundled_python_prefix
        entries = [(p.path, p.mode) for p in manifest.prefix_files]
    else:
        kind, found = detect_env(root)
        old = old_prefix or found
        entries = []
    if kind not in ("venv", "conda", "data"):
        raise RelocateError(f"cannot relocate {where}: unknown environment kind {kind!r}")
    if kind == "data":
        return RelocateReport(kind, old, new, 0, time.perf_counter() - t0, False)
    if not old:
        raise RelocateError(f"cannot relocate {where}: no manifest and no old prefix found in "
                            "bin/activate, pyvenv.cfg or script shebangs; pass --from OLD_PREFIX")
    old = os.path.normpath(old)
    if not os.path.isabs(old) or old == os.sep:
        raise RelocateError(f"cannot relocate {where}: old prefix {old!r} is not an absolute "
                            "path below /")
    if bundled:
        bundled = os.path.normpath(bundled)
        if root.kind(BUNDLED_PYTHON_RELPATH) != "dir":
            raise RelocateError(f"cannot relocate {where}: the manifest names a bundled "
                                f"interpreter but {BUNDLED_PYTHON_RELPATH}/ is missing")

    links: list[str] | None = None
    hinted = False
    if manifest is None:
        scanned = True
        why = hints.usable(old) if hints is not None else ""
        if hints is not None and not why:
            hinted = True
            entries = scan_prefix_files(root, old, hints.files)
            links = hints.links
        else:
            log.info("%s has no manifest%s: scanning every file for %s (slower than an archive "
                     "made by ezpz-tar-env)", where, f" and {why}" if why else "", old)
            entries = scan_prefix_files(root, old)

    plan = Plan(root, old, new, bundled)
    plan.add_entries(entries)
    if kind == "venv":
        plan.add_venv_extras()
    if bundled:
        plan.add_bundled_extras()
    plan.add_links(full_walk=scanned, only=links)
    if manifest is not None and root.kind(MANIFEST_RELPATH) == "file":
        # The manifest now describes the tree where it lives, so relocating again works. The
        # packer's facts about the original tree (paths, mtimes) do not describe this copy.
        moved = dataclasses.replace(manifest, prefix=new,
                                    bundled_python_prefix=plan.bundled_new if bundled else None,
                                    source={})
        plan.writes[MANIFEST_RELPATH] = moved.to_json().encode()
    rewritten, nlinks = plan.execute()

    seconds = time.perf_counter() - t0
    log.info("relocated %s %s -> %s: %d files, %d links in %.3fs%s", kind, old, new, rewritten,
             nlinks, seconds, " (files found while extracting)" if hinted else
             " (scanned)" if scanned else "")
    if kind == "venv" and not bundled:
        _warn_missing_home(root)
    return RelocateReport(kind, old, new, rewritten, seconds, scanned, nlinks, hinted)


def _check_new_prefix(new: str) -> None:
    for ch, what in FORBIDDEN_IN_PREFIX.items():
        if ch in new:
            raise RelocateError(f"cannot relocate to {new!r}: the path contains {what}, which "
                                "activate scripts cannot hold; choose a path without quotes, "
                                "backslashes, '$', '`' or line breaks")


def _warn_missing_home(root: Anchor) -> None:
    try:
        lines = root.read_bytes("pyvenv.cfg", 1 << 20).decode(errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home" and not os.path.isdir(value.strip()):
            log.warning("pyvenv.cfg: home = %s does not exist on this node; the venv needs that "
                        "interpreter (pack with env.bundle_python=true to carry it along)",
                        value.strip())


