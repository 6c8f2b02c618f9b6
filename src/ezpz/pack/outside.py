"""What an environment still reads from outside itself once it is packed and delivered.

Two things pack silently and then make every node read the shared filesystem anyway:

- a venv made with ``--system-site-packages`` (``include-system-site-packages = true`` in
  ``pyvenv.cfg``): its interpreter adds the base's site-packages to ``sys.path``;
- editable installs (``pip install -e``): ``direct_url.json`` with ``"editable": true``,
  setuptools' ``__editable__`` path files and finders, ``.egg-link`` files, and any path
  file that names a directory outside the environment; the code stays in the source tree.

:func:`inspect` finds both; :func:`system_site_files` makes the few files that let a packed
copy of the base's site-packages (under ``.ezpz/system-site/<i>``) take their place, behind the
environment's own packages, as the base's would have been.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..config import EnvSpec
from ..errors import ConfigError
from ..log import get_logger
from .tree import Entry

log = get_logger(__name__)

#: Where the base's site-packages go in the archive, relative to the environment's top.
SYSTEM_SITE_RELPATH = ".ezpz/system-site"
#: The module (and its path file) that adds them to ``sys.path`` on the node.
SYSTEM_SITE_MODULE = "_ezpz_system_site"

_SITE_PROBE = "import json, site; print(json.dumps(site.getsitepackages()))"


@dataclass
class Editable:
    """An editable install: its name and the source directory the nodes would read."""

    name: str
    source: str
    #: How it was found: ``direct_url.json``, ``.pth`` or ``.egg-link``.
    how: str


@dataclass
class Outside:
    """What the environment reads from outside itself."""

    #: The venv has ``include-system-site-packages = true``.
    system_site: bool = False
    #: The base's site-packages directories it then reads (existing ones, in sys.path order).
    system_site_dirs: list[str] = field(default_factory=list)
    editables: list[Editable] = field(default_factory=list)


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def env_site_dirs(prefix: Path) -> list[Path]:
    """The environment's own site-packages directories (``lib*/python*/site-packages``)."""
    out: list[Path] = []
    for lib in ("lib", "lib64"):
        for d in sorted((prefix / lib).glob("python*/site-packages")):
            if d.is_dir() and not d.is_symlink() and not any(d.samefile(o) for o in out):
                out.append(d)
    return out


def read_pyvenv_cfg(prefix: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = (prefix / "pyvenv.cfg").read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def system_site_enabled(prefix: Path) -> bool:
    return read_pyvenv_cfg(prefix).get("include-system-site-packages", "").lower() == "true"


def base_site_dirs(prefix: Path, base_prefix: str | None) -> list[str]:
    """The site-packages outside ``prefix`` that the venv's interpreter reads (asked of the
    interpreter itself; from ``base_prefix`` when it cannot run)."""
    exe = next((prefix / "bin" / n for n in ("python", "python3")
                if (prefix / "bin" / n).exists()), None)
    found: list[str] = []
    if exe is not None:
        try:
            p = subprocess.run([str(exe), "-c", _SITE_PROBE], capture_output=True, text=True,
                               timeout=60, env={k: v for k, v in os.environ.items()
                                                if not k.startswith("PYTHON")})
            if p.returncode == 0:
                found = [str(d) for d in json.loads(p.stdout.strip().splitlines()[-1])]
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            found = []
    if not found and base_prefix:
        found = [str(d) for d in sorted(Path(base_prefix).glob("lib/python*/site-packages"))]
    out: list[str] = []
    for d in found:
        if os.path.isdir(d) and not _inside(d, str(prefix)) and d not in out:
            out.append(d)
    return out


# --------------------------------------------------------------------------------------
# editable installs
# --------------------------------------------------------------------------------------
def _dist_name(dist_info: Path) -> str:
    try:
        for line in (dist_info / "METADATA").read_text(errors="replace").splitlines():
            if line.lower().startswith("name:"):
                return line.split(":", 1)[1].strip()
            if not line.strip():
                break
    except OSError:
        pass
    return dist_info.name.split("-")[0]


def _from_direct_url(site: Path) -> list[Editable]:
    out = []
    for path in sorted(site.glob("*.dist-info/direct_url.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not (data.get("dir_info") or {}).get("editable"):
            continue
        url = urlparse(str(data.get("url", "")))
        source = unquote(url.path) if url.scheme == "file" else str(data.get("url", ""))
        out.append(Editable(_dist_name(path.parent), source, "direct_url.json"))
    return out


_FINDER_MAPPING = re.compile(r"^MAPPING\s*(?::[^=]*)?=\s*(\{.*?\})\s*$", re.M | re.S)


def _pth_paths(pth: Path) -> list[str]:
    """Directories a path file adds (its plain lines; an ``__editable__`` finder's mapping)."""
    try:
        text = pth.read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("import ", "import\t")):
            m = re.match(r"import (__editable___[\w.]+_finder)", line)
            if m:
                out += _finder_paths(pth.parent / f"{m.group(1)}.py")
            continue
        out.append(line if os.path.isabs(line) else str(pth.parent / line))
    return out


def _finder_paths(finder: Path) -> list[str]:
    try:
        m = _FINDER_MAPPING.search(finder.read_text(errors="replace"))
    except OSError:
        return []
    if not m:
        return []
    return re.findall(r":\s*'([^']+)'", m.group(1)) + re.findall(r':\s*"([^"]+)"', m.group(1))


def find_editables(prefix: Path) -> list[Editable]:
    """Editable installs in the environment's site-packages, one per source directory."""
    found: list[Editable] = []
    for site in env_site_dirs(prefix):
        found += _from_direct_url(site)
        for pth in sorted(site.glob("*.pth")):
            name = pth.stem
            if name.startswith("__editable__."):
                name = name[len("__editable__."):].rsplit("-", 1)[0]
            for d in _pth_paths(pth):
                if os.path.isdir(d) and not _inside(d, str(prefix)):
                    found.append(Editable(name, os.path.normpath(d), ".pth"))
        for link in sorted(site.glob("*.egg-link")):
            try:
                first = link.read_text(errors="replace").splitlines()[0].strip()
            except (OSError, IndexError):
                continue
            if first and not _inside(first, str(prefix)):
                found.append(Editable(link.stem, first, ".egg-link"))
    out: list[Editable] = []
    for e in found:  # the first finding of a source wins (direct_url.json names it best)
        src = os.path.realpath(e.source) if os.path.isabs(e.source) else e.source
        if any(_same_or_below(src, o.source) or _same_or_below(o.source, src) for o in out):
            continue
        out.append(Editable(e.name, src, e.how))
    return out


def _same_or_below(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip("/") + "/")


def inspect(prefix: Path, kind: str, base_prefix: str | None, *,
            system_site: bool = True) -> Outside:
    """What the environment at ``prefix`` reads from outside itself (``system_site=False``:
    editable installs only, without running the interpreter)."""
    out = Outside()
    if kind == "data":
        return out
    if system_site and kind == "venv" and system_site_enabled(prefix):
        out.system_site = True
        out.system_site_dirs = base_site_dirs(prefix, base_prefix)
    out.editables = find_editables(prefix)
    return out


# --------------------------------------------------------------------------------------
# packing the base's site-packages
# --------------------------------------------------------------------------------------
def system_site_files(prefix: Path, ndirs: int) -> dict[str, str]:
    """The files (relative name → text) that make a delivered venv read the packed copies of
    the base's ``ndirs`` site-packages instead of the base's: ``pyvenv.cfg`` with
    ``include-system-site-packages = false``, and in the venv's site-packages a path file
    and a module that add ``.ezpz/system-site/<i>`` after the venv's own packages (path
    files in them are processed, as in the base)."""
    sites = env_site_dirs(prefix)
    if not sites:
        return {}
    site = sites[0]
    rel_site = os.path.relpath(site, prefix)
    up = os.path.relpath(prefix, site)
    cfg = (prefix / "pyvenv.cfg").read_text(errors="replace").splitlines()
    cfg = [("include-system-site-packages = false"
            if line.partition("=")[0].strip().lower() == "include-system-site-packages"
            else line) for line in cfg]
    module = (
        '"""Added by ezpz-tar-env (env.include_system_site=true): the base interpreter\'s\n'
        "site-packages, packed under .ezpz/system-site/, come after this environment's own\n"
        'packages, as the base\'s did."""\n'
        "import os as _os\n"
        "import site as _site\n\n"
        f"_root = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), {up!r},\n"
        f"                      {SYSTEM_SITE_RELPATH!r})\n"
        f"for _i in range({ndirs}):\n"
        "    _site.addsitedir(_os.path.normpath(_os.path.join(_root, str(_i))))\n")
    return {"pyvenv.cfg": "\n".join(cfg) + "\n",
            f"{rel_site}/{SYSTEM_SITE_MODULE}.pth": f"import {SYSTEM_SITE_MODULE}\n",
            f"{rel_site}/{SYSTEM_SITE_MODULE}.py": module}


def generated_entries(root: str | None, prefix: Path, name: str,
                      ndirs: int) -> dict[str, Entry]:
    """The files that make a --system-site-packages venv read its packed base packages,
    written under ``root``, as entries keyed by their name in the environment."""
    if root is None:
        return {}
    out: dict[str, Entry] = {}
    for rel, text in system_site_files(prefix, ndirs).items():
        path = Path(root) / rel.replace("/", "_")
        path.write_text(text)
        src = prefix / rel
        mode = stat.S_IMODE(src.stat().st_mode) if src.exists() else 0o644
        os.chmod(path, mode)
        out[rel] = Entry(str(path), f"{name}/{rel}", os.lstat(path), rel)
    return out


def refuse_editables(found: Outside, env: EnvSpec) -> None:
    """Editable installs without ``env.allow_editable=true``: one ConfigError naming the first
    package and its source directory."""
    if found.editables and not env.allow_editable:
        first = found.editables[0]
        more = (f" (and {len(found.editables) - 1} more: "
                f"{', '.join(e.name for e in found.editables[1:])})"
                if len(found.editables) > 1 else "")
        raise ConfigError(f"env.allow_editable: {first.name} is an editable install from "
                          f"{first.source}{more}: nodes would import it from there, not from "
                          "the archive; reinstall it without -e (pip install <dir>) or pass "
                          "env.allow_editable=true to pack it anyway")


def check(found: Outside, prefix: Path, env: EnvSpec) -> list[str]:
    """Refuse editable installs unless allowed; warn about what nodes will still read from
    the shared filesystem. Returns the base site-packages to pack (include_system_site)."""
    refuse_editables(found, env)
    for e in found.editables:
        log.warning("packing the editable install %s anyway (env.allow_editable=true): "
                    "nodes will import it from %s (the shared filesystem)", e.name, e.source)
    if env.include_system_site and not found.system_site:
        log.info("env.include_system_site=true has no effect: %s does not read the base's "
                 "site-packages (include-system-site-packages is not true)", prefix)
        return []
    if found.system_site and not found.system_site_dirs:
        return []
    if found.system_site and not env.include_system_site:
        log.warning("%s was made with --system-site-packages: nodes will still import the "
                    "base's packages from %s (the shared filesystem). Pass "
                    "env.include_system_site=true to pack them into the archive.", prefix,
                    ", ".join(found.system_site_dirs))
        return []
    if found.system_site:
        log.info("packing the base's site-packages %s under %s (the delivered venv reads "
                 "them from there, after its own)", ", ".join(found.system_site_dirs),
                 SYSTEM_SITE_RELPATH)
        return list(found.system_site_dirs)
    return []


__all__ = ["Editable", "Outside", "SYSTEM_SITE_RELPATH", "base_site_dirs", "check",
           "env_site_dirs", "find_editables", "generated_entries", "inspect", "refuse_editables",
           "system_site_enabled", "system_site_files"]
