"""Pack a venv, a conda environment or any directory into one archive (``ezpz-tar-env``).

``pack()`` is the library function behind the CLI. It

- finds the environment (``env.prefix`` or the running interpreter's) and what kind it is
  (conda: ``conda-meta/``; venv: ``pyvenv.cfg``; anything else is packed as plain data);
- reuses an archive whose manifest says it is up to date with the environment;
- streams the tree into a temporary file next to the archive (``writer.write_archive``:
  manifest first, prefix scan while compressing) and renames it into place on success, so an
  interrupted run never leaves a truncated archive under the final name.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import ArchiveSpec, EnvSpec, TarEnvConfig, format_size
from ..envkind import detect_kind
from ..errors import ArchiveError, ConfigError
from ..formats import codecs
from ..formats.manifest import (
    BUNDLED_PYTHON_RELPATH,
    MANIFEST_RELPATH,
    MARKER_RELPATH,
    Manifest,
    read_manifest,
)
from ..log import get_logger
from ..ownership import lstat_or_none, owner_name
from . import bundle, outside
from . import tree as archive_tree
from . import writer as archive
from .sinks import default_level

logger = get_logger(__name__)

#: Interpreter prefixes that are part of the node image, not of the shared filesystem.
SYSTEM_PREFIXES = ("/", "/usr", "/usr/local")
_ENV_KEYS = {f.name for f in dataclasses.fields(EnvSpec)}
_ARCHIVE_KEYS = {f.name for f in dataclasses.fields(ArchiveSpec)}
_TOP_KEYS = {"exclude", "overwrite", "skip_unreadable"}


# --------------------------------------------------------------------------------------
# the environment
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class PythonFacts:
    version: str | None = None
    implementation: str | None = None
    #: The interpreter's own prefix (sys.base_prefix as the venv sees it).
    base_prefix: str | None = None


_PROBE = ("import platform, sys; print(platform.python_version()); "
          "print(platform.python_implementation()); print(sys.base_prefix)")


def python_facts(prefix: str | os.PathLike[str], kind: str) -> PythonFacts:
    """Version, implementation and base prefix of the environment's interpreter.

    Asks the interpreter itself (``bin/python``) and falls back to ``pyvenv.cfg`` (venv) or
    ``conda-meta/python-*.json`` (conda) when it cannot run.
    """
    facts = PythonFacts()
    if kind == "data":
        return facts
    prefix = Path(prefix)
    exe = next((prefix / "bin" / n for n in ("python", "python3") if (prefix / "bin" / n).exists()),
               None)
    if exe is not None:
        try:
            p = subprocess.run([str(exe), "-I", "-c", _PROBE], capture_output=True, text=True,
                               timeout=60)
            lines = p.stdout.splitlines()
            if p.returncode == 0 and len(lines) >= 3:
                facts = PythonFacts(lines[0], lines[1], lines[2])
        except (OSError, subprocess.SubprocessError):
            pass
    if kind == "venv":
        cfg = outside.read_pyvenv_cfg(Path(prefix))
        home = cfg.get("home")
        if facts.base_prefix is None and home:
            home_path = Path(home)
            facts.base_prefix = str(home_path.parent if home_path.name == "bin" else home_path)
        if facts.version is None:
            facts.version = cfg.get("version_info") or cfg.get("version")
            if facts.version and home:
                facts.implementation = "CPython"
    elif kind == "conda" and facts.version is None:
        for meta in sorted((prefix / "conda-meta").glob("python-[0-9]*.json")):
            facts.version = meta.name[len("python-"):].split("-")[0]
            facts.implementation = "CPython"
            break
        facts.base_prefix = str(prefix)
    return facts


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_prefix(prefix: str | None) -> Path:
    """The environment directory as an absolute path (symlinks kept, as files record it)."""
    if prefix is None:
        return Path(os.path.abspath(sys.prefix))
    p = Path(os.path.abspath(os.path.expanduser(prefix)))
    if not p.exists():
        raise ConfigError(f"env.prefix: {p} does not exist; give the directory of a venv or "
                          "conda environment")
    if not p.is_dir():
        raise ConfigError(f"env.prefix: {p} is not a directory; give the environment's "
                          "top directory (the one holding bin/)")
    if p == Path(p.anchor):
        raise ConfigError("env.prefix: refusing to pack the filesystem root")
    return p


# --------------------------------------------------------------------------------------
# the archive path
# --------------------------------------------------------------------------------------
def default_archive_path(prefix: str | os.PathLike[str], codec: str = "zstd") -> Path:
    """``<env-parent>/<env-name>.tar.<ext>`` (``.tar.zst``, ``.tar.gz`` or ``.tar``)."""
    p = Path(os.path.abspath(prefix))
    return p.parent / (p.name + codecs.suffix(codec))


def resolve_output(path: str | None, prefix: Path, codec: str) -> Path:
    """Where the archive goes; raises ConfigError when that directory cannot take it."""
    if path is None:
        out = default_archive_path(prefix, codec)
        if not os.access(out.parent, os.W_OK | os.X_OK):
            fallback = Path.cwd() / out.name
            logger.warning("%s is not writable: writing the archive to the current directory "
                           "(%s) instead; archive.path=... chooses another place",
                           out.parent, fallback)
            out = fallback
            key = "archive.path (default: the current directory)"
        else:
            key = "archive.path (default: next to the environment)"
    else:
        out = Path(os.path.abspath(os.path.expanduser(path)))
        key = "archive.path"
    parent = out.parent
    if not parent.is_dir():
        raise ConfigError(f"{key}: directory {parent} does not exist; create it or choose "
                          "another archive.path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: directory {parent} is not writable; choose another "
                          "archive.path")
    if out.is_dir():
        raise ConfigError(f"{key}: {out} is a directory; give a file name such as "
                          f"{out / (prefix.name + codecs.suffix(codec))}")
    if _inside(str(out), str(prefix)):
        raise ConfigError(f"{key}: {out} is inside the environment being packed; choose a "
                          "path outside it")
    why = _not_replaceable(out)
    if why:
        raise ConfigError(f"{key}: {out} exists and is not an ezpz archive of yours ({why}); "
                          "ezpz never replaces it, whatever overwrite says: choose another "
                          "archive.path, or remove it yourself")
    return out


def _not_replaceable(out: Path) -> str | None:
    """Why the existing ``out`` is not an archive ezpz may replace (None: it may, or it does
    not exist): it must be a regular file of the running user with an ezpz manifest."""
    st = lstat_or_none(str(out))
    if st is None:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if os.path.ismount(out):
        return "it is a mount point"
    if st.st_uid != os.geteuid():
        return f"it belongs to {owner_name(st.st_uid)}"
    try:
        found = read_manifest(out)
    except ArchiveError:
        found = None
    return None if found is not None else "it holds no ezpz manifest"


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------
def _settings(cfg: TarEnvConfig | None, overrides: dict[str, Any]) -> TarEnvConfig:
    cfg = cfg if cfg is not None else TarEnvConfig()
    env_kw = {k: v for k, v in overrides.items() if k in _ENV_KEYS}
    arc_kw = {k: v for k, v in overrides.items() if k in _ARCHIVE_KEYS}
    top_kw = {k: v for k, v in overrides.items() if k in _TOP_KEYS}
    unknown = set(overrides) - set(env_kw) - set(arc_kw) - set(top_kw)
    if unknown:
        raise ConfigError(f"pack(): unknown option(s) {', '.join(sorted(unknown))}; valid: "
                          f"{', '.join(sorted(_ENV_KEYS | _ARCHIVE_KEYS | _TOP_KEYS))}")
    if "path" in arc_kw and arc_kw["path"] is not None:
        arc_kw["path"] = os.fspath(arc_kw["path"])
    if "prefix" in env_kw and env_kw["prefix"] is not None:
        env_kw["prefix"] = os.fspath(env_kw["prefix"])
    if "exclude" in top_kw:
        top_kw["exclude"] = list(top_kw["exclude"])
    # replace() re-runs __post_init__, so a codec/level given here is validated too.
    return dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, **env_kw),
                               archive=dataclasses.replace(cfg.archive, **arc_kw), **top_kw)


# --------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------
class Progress:
    """A tqdm bar (bytes) on a terminal, a log line every ``every`` seconds otherwise."""

    def __init__(self, total: int, label: str, every: float = 10.0) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.every = every
        self.start = self.last = time.monotonic()
        self.label = label
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=label, file=sys.stderr, leave=False)

    def __call__(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            logger.info("%s: %s of %s (%.0f%%, %s/s)", self.label, format_size(self.done),
                        format_size(self.total), 100 * min(self.done / self.total, 1.0),
                        format_size(rate))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------
# pack
# --------------------------------------------------------------------------------------
def _tree_digest(tree: archive_tree.Tree) -> str:
    import xxhash

    h = xxhash.xxh3_64()
    for e in tree.entries:
        st = e.st
        h.update(os.fsencode(e.arcname))
        h.update(b"\0%o\0%d\0%d\0" % (st.st_mode, st.st_size, st.st_mtime_ns))
    return h.hexdigest()


class _Terminated(Exception):
    pass


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def pack(cfg: TarEnvConfig | None = None, **overrides: Any) -> Path:
    """Pack an environment; returns the archive path (an up-to-date archive is reused).

    ``overrides`` replace fields of ``cfg`` by name: ``prefix``, ``bundle_python`` (env),
    ``path``, ``codec``, ``level``, ``threads`` (archive), ``exclude``, ``overwrite``,
    ``skip_unreadable``.
    """
    t0 = time.monotonic()
    cfg = _settings(cfg, overrides)
    codec = cfg.archive.codec
    level = default_level(codec) if cfg.archive.level is None else cfg.archive.level
    prefix = resolve_prefix(cfg.env.prefix)
    kind = detect_kind(prefix)
    name = prefix.name
    out = resolve_output(cfg.archive.path, prefix, codec)
    excluded = archive_tree.compile_excludes(cfg.exclude)
    if kind == "data":
        logger.info("%s is neither a venv nor a conda environment: packing it as plain data "
                    "(no relocation metadata)", prefix)
    facts = python_facts(prefix, kind)
    bundle_root = _check_interpreter(prefix, kind, facts, cfg.env.bundle_python)
    system_dirs = outside.check(outside.inspect(prefix, kind, facts.base_prefix), prefix,
                                cfg.env)

    # The manifest of an environment that was itself unpacked from an ezpz archive is
    # replaced by the new one, never duplicated; its install marker stays behind (a name
    # extraction refuses in an archive).
    tree = archive_tree.walk_tree(str(prefix), name, excluded,
                                  skip={MANIFEST_RELPATH, MARKER_RELPATH})
    bundled = None
    if bundle_root is not None:
        bundled = archive_tree.walk_tree(bundle_root, f"{name}/{BUNDLED_PYTHON_RELPATH}",
                                         bundle.EXCLUDES, record=False)
        bundle.log_bundle(bundle_root, bundled)
    system = [archive_tree.walk_tree(d, f"{name}/{outside.SYSTEM_SITE_RELPATH}/{i}", excluded,
                                     record=False) for i, d in enumerate(system_dirs)]
    extras = ([bundled] if bundled else []) + system
    _check_readable(tree, extras, cfg.skip_unreadable)
    for special in tree.skipped_special + [p for t in extras for p in t.skipped_special]:
        logger.warning("skipping %s: sockets, FIFOs and devices are not packed", special)

    source = {
        "prefix": str(prefix),
        "realpath": os.path.realpath(prefix),
        "tree": _tree_digest(tree),
        "entries": len(tree.entries),
        "bundled_tree": _tree_digest(bundled) if bundled else None,
        "system_site": [_tree_digest(t) for t in system] or None,
        "codec": codec,
        "level": level,
        "excludes": list(cfg.exclude),
        "skip_unreadable": cfg.skip_unreadable,
    }
    if _reusable(out, source, cfg.overwrite):
        return out

    generated = tempfile.mkdtemp(prefix="ezpz-pack-") if system else None
    try:
        return _write(cfg, prefix, kind, name, out, codec, level, facts, bundle_root, source,
                      tree.entries + [e for t in extras for e in t.entries],
                      outside.generated_entries(generated, prefix, name, len(system)), t0)
    finally:
        if generated:
            shutil.rmtree(generated, ignore_errors=True)


def _write(cfg: TarEnvConfig, prefix: Path, kind: str, name: str, out: Path, codec: str,
           level: int, facts: PythonFacts, bundle_root: str | None, source: dict[str, Any],
           entries: list[archive_tree.Entry], generated: dict[str, archive_tree.Entry],
           t0: float) -> Path:
    if generated:  # files made for the archive take the place of the environment's own
        entries = [generated.pop(e.relname, e) if e.relname is not None else e
                   for e in entries] + list(generated.values())
    total = sum(e.st.st_size for e in entries if stat.S_ISREG(e.st.st_mode))
    logger.info("packing %s (%s, %d entries, %s) into %s", prefix, kind, len(entries),
                format_size(total), out)

    def make_manifest(stats: archive.BodyStats) -> Manifest:
        return Manifest(
            kind=kind, name=name, prefix=str(prefix),
            python_version=facts.version, python_implementation=facts.implementation,
            files=stats.files, dirs=stats.dirs, symlinks=stats.symlinks,
            total_bytes=stats.total_bytes, prefix_files=stats.prefix_files,
            bundled_python_prefix=bundle_root, codec=codec,
            created_host=socket.gethostname(),
            created_time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            ezpz_version=__version__, excludes=list(cfg.exclude), source=source)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    spill_path = out.parent / f".{out.name}.tmp2-{os.getpid()}"
    spilled: list[Any] = []

    def spill() -> Any:
        fh2 = open(spill_path, "xb")
        spilled.append(fh2)
        return fh2

    reserve = archive.reserve_size(codec, entries, name)
    progress = Progress(total + 512 * len(entries), f"packing {name}")
    old_handler = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        old_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    fh = None
    try:
        fh = open(tmp, "x+b")
        manifest, stats, how = archive.write_archive(
            fh, codec, level, cfg.archive.threads, entries, reserve, make_manifest,
            prefix=os.fsencode(str(prefix)) if kind != "data" else None, progress=progress,
            skip_unreadable=cfg.skip_unreadable, spill=spill)
        fh.close()
        final_tmp = tmp
        if spilled:
            spilled[0].close()
            os.unlink(tmp)
            final_tmp = spill_path
        os.replace(final_tmp, out)
    except BaseException as exc:
        for f in [fh, *spilled]:
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        for p in (tmp, spill_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        if isinstance(exc, _Terminated):
            raise ArchiveError(f"terminated: {out} was not written") from None
        if isinstance(exc, OSError) and not isinstance(exc, ArchiveError):
            raise ArchiveError(f"{out}: writing failed ({exc.strerror or exc}); nothing was "
                               "left behind (the temporary file was removed)") from exc
        raise
    finally:
        progress.close()
        if in_main and old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)

    size = out.stat().st_size
    elapsed = time.monotonic() - t0
    logger.info("wrote %s: %s from %s (ratio %.2f), %d files, %d dirs, %d symlinks, "
                "%d files contain the prefix, %s, %.1f s", out, format_size(size),
                format_size(stats.total_bytes), stats.total_bytes / max(size, 1), stats.files,
                stats.dirs, stats.symlinks, len(manifest.prefix_files), how, elapsed)
    return out


def _check_interpreter(prefix: Path, kind: str, facts: PythonFacts,
                       bundle: bool) -> str | None:
    """Warn about an interpreter outside the venv; the root to bundle when asked to."""
    base = facts.base_prefix
    outside = kind == "venv" and base is not None and not _inside(base, str(prefix))
    if bundle and kind != "venv":
        logger.info("env.bundle_python=true has no effect: a %s environment carries its own "
                    "interpreter", kind)
        return None
    if not outside or base is None:
        return None
    system = os.path.realpath(base) in SYSTEM_PREFIXES
    if bundle:
        if system:
            raise ConfigError(f"env.bundle_python: the venv's interpreter is the system Python "
                              f"under {base}, which every node already has; leave "
                              "env.bundle_python=false")
        if not os.path.isdir(base):
            raise ConfigError(f"env.bundle_python: the venv's interpreter prefix {base} (from "
                              "pyvenv.cfg) does not exist")
        logger.info("bundling the interpreter at %s under %s", base, BUNDLED_PYTHON_RELPATH)
        return os.path.abspath(base)
    if not system:
        logger.warning("the venv's interpreter lives outside the environment, at %s: nodes "
                       "will still read the standard library from there (the shared "
                       "filesystem). Pass env.bundle_python=true to pack it alongside.", base)
    return None


def _check_readable(tree: archive_tree.Tree, extras: list[archive_tree.Tree],
                    skip: bool) -> None:
    bad = tree.unreadable + [p for t in extras for p in t.unreadable]
    if not bad:
        return
    shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
    if skip:
        logger.warning("skipping %d unreadable path(s): %s", len(bad), shown)
        return
    raise ArchiveError(f"{len(bad)} unreadable path(s) in the environment: {shown}; fix their "
                       "permissions or pass skip_unreadable=true to leave them out")


def _reusable(out: Path, source: dict[str, Any], overwrite: bool) -> bool:
    """True when ``out`` is an up-to-date archive to reuse; raises for a foreign file."""
    if not out.exists():
        return False
    try:
        found = read_manifest(out)
    except ArchiveError:
        found = None
    if found is None:
        if not overwrite:
            raise ArchiveError(f"{out} exists and is not an ezpz archive; choose another "
                               "archive.path or pass overwrite=true to replace it")
        logger.info("replacing %s (overwrite=true)", out)
        return False
    if overwrite:
        logger.info("rebuilding %s (overwrite=true)", out)
        return False
    if found.source == source:
        logger.info("%s is up to date with %s: reusing it (overwrite=true rebuilds)", out,
                    source["prefix"])
        return True
    logger.info("%s is out of date with %s: rebuilding it", out, source["prefix"])
    return False


# --------------------------------------------------------------------------------------
# the original ezpz names
# --------------------------------------------------------------------------------------
def check_for_tarball(env_prefix: str | os.PathLike[str] | None = None,
                      overwrite: bool = False, **overrides: Any) -> Path:
    """The archive of ``env_prefix`` (default: the running environment), built if needed."""
    return pack(prefix=None if env_prefix is None else os.fspath(env_prefix),
                overwrite=overwrite, **overrides)


def make_tarfile(output_filename: str | os.PathLike[str],
                 source_dir: str | os.PathLike[str], **overrides: Any) -> Path:
    """Pack ``source_dir`` into ``output_filename`` (codec from the suffix unless given)."""
    if "codec" not in overrides:
        lower = os.fspath(output_filename).lower()
        overrides["codec"] = ("gzip" if lower.endswith((".gz", ".tgz")) else
                              "none" if lower.endswith(".tar") else "zstd")
    return pack(prefix=os.fspath(source_dir), path=os.fspath(output_filename), **overrides)


def create_tarball(env_prefix: str | os.PathLike[str] | None = None,
                   overwrite: bool = False, **overrides: Any) -> Path:
    """Pack ``env_prefix`` (default: the running environment) next to it."""
    return pack(prefix=None if env_prefix is None else os.fspath(env_prefix),
                overwrite=overwrite, **overrides)


__all__ = ["pack", "default_archive_path", "detect_kind", "python_facts", "resolve_output",
           "check_for_tarball", "make_tarfile", "create_tarball", "Progress"]
