"""Sweep reports: read ``results.json`` files, group repeats into points, write a summary.

A transfer run (``ezpz-yeet-env``) writes ``results.json`` into its Hydra output directory; a
multirun writes one job directory per run under the sweep directory, each with the task's
overrides in ``.hydra/overrides.yaml``. This module turns such directories into:

- ``summary.csv`` and ``summary.md``: one row per point (the swept values, status, median
  total seconds, median MB/s, median seconds per phase);
- ``summary.png``: throughput against the swept value, one line per combination of the other
  swept keys, with a per-phase breakdown (needs matplotlib, the ``plot`` extra).

Runs that repeat a point (``transfer.repeat_index``) are grouped; medians are taken over the
runs of a point that finished (status ``ok`` or ``partial``). A job directory without
``results.json`` (the job failed before the transfer ran) counts as a failed run.

Everything here takes plain values (paths, lists, dicts): no Hydra, no OmegaConf.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import format_size, parse_size
from ..errors import ConfigError, EzpzError

RESULTS_FILE = "results.json"
OVERRIDES_FILE = os.path.join(".hydra", "overrides.yaml")
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_PNG = "summary.png"
#: The override that numbers repeats of one point; it groups runs, it is not a swept value.
REPEAT_KEY = "transfer.repeat_index"
PHASES = ("read", "broadcast", "extract", "verify", "relocate")
#: Run statuses whose timings count towards a point's medians.
TIMED_STATUSES = ("ok", "partial")
PLOT_HINT = "pip install 'ezpz-hpc[plot]'"


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
@dataclass
class Run:
    """One job: its directory, what was overridden, and what its results.json says."""

    #: The job directory relative to the directory the report was asked for ("." for itself).
    label: str
    path: str
    #: Task overrides (key → value as typed), without the repeat index.
    overrides: dict[str, str]
    repeat_index: int | None = None
    status: str = "failed"
    exit_code: int | None = None
    total_s: float | None = None
    mb_s: float | None = None
    phases: dict[str, float | None] = field(default_factory=dict)
    nodes: int | None = None
    archive_bytes: int | None = None
    codec: str | None = None
    failed_hosts: list[str] = field(default_factory=list)
    error: str = ""
    #: The parsed results.json (None when the job has none).
    results: dict[str, Any] | None = None

    @property
    def timed(self) -> bool:
        return self.status in TIMED_STATUSES and self.total_s is not None


@dataclass
class Point:
    """One sweep point: the swept values and the runs that repeated it."""

    values: dict[str, str]
    runs: list[Run]
    status: str = "failed"
    total_s: float | None = None
    mb_s: float | None = None
    mb_s_min: float | None = None
    mb_s_max: float | None = None
    phases: dict[str, float | None] = field(default_factory=dict)

    @property
    def ok_runs(self) -> int:
        return sum(1 for r in self.runs if r.status == "ok")

    def label(self, keys: Sequence[str] | None = None) -> str:
        keys = list(self.values) if keys is None else keys
        return " ".join(f"{k}={self.values[k]}" for k in keys) or "(single point)"


@dataclass
class Summary:
    """Points in sweep order (each swept key sorted numerically where it can be)."""

    keys: list[str]
    points: list[Point]
    best: Point | None
    #: The swept key on the plot's x axis (None when nothing was swept).
    x_key: str | None

    @property
    def runs(self) -> list[Run]:
        return [r for p in self.points for r in p.runs]


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read ({reason})") from exc


def load_results(path: str) -> dict[str, Any]:
    """Parse one results.json; ConfigError naming the file if it is unreadable or not one."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        raise ConfigError(f"{path}: not a results.json of ezpz-yeet-env (no 'status' field)")
    return data


def load_overrides(job_dir: str) -> list[str] | None:
    """The task overrides Hydra saved for a job (``.hydra/overrides.yaml``), or None."""
    path = os.path.join(job_dir, OVERRIDES_FILE)
    if not os.path.exists(path):
        return None
    import yaml  # PyYAML: a dependency of omegaconf, always present with ezpz

    text = _read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ConfigError(f"{path}: expected a list of overrides (key=value)")
    return data


def split_override(text: str) -> tuple[str, str]:
    """``transfer.chunk_size=64MiB`` → (``transfer.chunk_size``, ``64MiB``); ``+``/``~`` dropped."""
    key, _, value = text.partition("=")
    return key.strip().lstrip("+~"), value.strip()


def _flatten(config: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(config, dict):
        for k, v in config.items():
            out.update(_flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
        return out
    return {prefix.rstrip("."): "null" if config is None else
            (str(config).lower() if isinstance(config, bool) else str(config))}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _int(value: Any) -> int | None:
    x = _number(value)
    return int(x) if x is not None else None


def last_logged_error(job_dir: str) -> str:
    """The message of the last error line (``[E]``/``[C]``) in the job's ``*.log`` files."""
    found = ""
    try:
        names = sorted(n for n in os.listdir(job_dir) if n.endswith(".log"))
    except OSError:
        return ""
    for name in names:
        try:
            with open(os.path.join(job_dir, name), encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if "][E][" in line or "][C][" in line:
                        found = line.split("] ", 1)[-1].strip()
        except OSError:
            continue
    return found


def read_run(job_dir: str, label: str) -> Run:
    """One job directory → Run (a failed Run when it has no results.json)."""
    overrides_list = load_overrides(job_dir)
    results_path = os.path.join(job_dir, RESULTS_FILE)
    results = load_results(results_path) if os.path.exists(results_path) else None
    if overrides_list is None:
        # Only results.json was kept: what varies between runs is in their configs.
        overrides = _flatten((results or {}).get("config") or {})
    else:
        overrides = dict(split_override(o) for o in overrides_list)
    repeat = overrides.pop(REPEAT_KEY, None)
    run = Run(label=label, path=job_dir, overrides=overrides, repeat_index=_int(repeat))
    if results is None:
        # The job's own last error line says why, when it logged one.
        run.error = last_logged_error(job_dir) or \
            f"no {RESULTS_FILE}: the job failed before the transfer ran (see its log)"
        return run
    run.results = results
    run.status = results["status"]
    run.exit_code = _int(results.get("exit_code"))
    phases_raw = results.get("phases")
    phases: dict[str, Any] = phases_raw if isinstance(phases_raw, dict) else {}
    run.phases = {p: _number(phases.get(p)) for p in PHASES}
    run.total_s = _number(phases.get("total"))
    run.mb_s = _number(results.get("throughput_mb_s"))
    run.nodes = _int(results.get("nodes"))
    archive_raw = results.get("archive")
    archive: dict[str, Any] = archive_raw if isinstance(archive_raw, dict) else {}
    run.archive_bytes = _int(archive.get("bytes"))
    run.codec = archive.get("codec") if isinstance(archive.get("codec"), str) else None
    hosts = results.get("failed_hosts")
    run.failed_hosts = [str(h) for h in hosts] if isinstance(hosts, list) else []
    errors = [str(row.get("error")) for row in results.get("per_node") or []
              if isinstance(row, dict) and row.get("error")]
    if errors:
        run.error = errors[0] if len(set(errors)) == 1 else f"{errors[0]} (+{len(errors) - 1} more)"
    return run


def _is_job_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RESULTS_FILE)) or \
        os.path.isfile(os.path.join(path, OVERRIDES_FILE))


def find_job_dirs(root: str) -> list[str]:
    """Job directories under ``root`` (itself if it is one): those with results.json or
    ``.hydra/overrides.yaml``. Job directories are not searched further."""
    if _is_job_dir(root):
        return [root]
    found: list[str] = []
    for dirpath, dirnames, _files in os.walk(root):
        dirnames.sort(key=_natural_key)
        keep = []
        for d in dirnames:
            if d.startswith("."):
                continue
            full = os.path.join(dirpath, d)
            if _is_job_dir(full):
                found.append(full)
            else:
                keep.append(d)
        dirnames[:] = keep
    return found


def _natural_key(name: str) -> tuple[Any, ...]:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def collect_runs(dirs: Sequence[str], require_results: bool = True) -> list[Run]:
    """Every job under ``dirs`` (sweep dirs or run dirs) as Runs, in directory order.

    Raises ConfigError (nothing read is kept) when a directory does not exist, holds no job,
    or (with ``require_results``) holds no results.json at all, or when a file is unreadable.
    """
    if not dirs:
        raise ConfigError("give at least one sweep directory or run directory")
    runs: list[Run] = []
    for root in dirs:
        if not os.path.isdir(root):
            what = "not a directory" if os.path.exists(root) else "no such directory"
            raise ConfigError(f"{root}: {what} (give a sweep directory or a run directory)")
        jobs = find_job_dirs(root)
        if not jobs:
            raise ConfigError(
                f"{root}: no {RESULTS_FILE} found (expected a run directory of ezpz-yeet-env "
                f"or a sweep directory of its job directories)")
        prefix = os.path.basename(os.path.normpath(os.path.abspath(root))) + "/" \
            if len(dirs) > 1 else ""
        root_runs = []
        for job in jobs:
            rel = os.path.relpath(job, root)
            root_runs.append(read_run(job, prefix + rel if rel != "." else prefix + "."))
        if require_results and all(r.results is None for r in root_runs):
            raise ConfigError(
                f"{root}: no {RESULTS_FILE} in any of its {len(root_runs)} job director"
                f"{'y' if len(root_runs) == 1 else 'ies'} (did the runs start?)")
        runs.extend(root_runs)
    return runs


# --------------------------------------------------------------------------------------
# summarising
# --------------------------------------------------------------------------------------
def value_sort_key(value: str) -> tuple[Any, ...]:
    """Numbers and sizes (``64KiB`` < ``1MiB``) sort by magnitude, anything else by text."""
    x = _number(value)
    if x is None:
        try:
            x = float(parse_size(value))
        except ConfigError:
            x = None
    return (0, x, value) if x is not None else (1, 0.0, value)


def _numeric(values: Iterable[str]) -> bool:
    return all(value_sort_key(v)[0] == 0 for v in values)


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Keys whose values differ between runs, in the order they were given."""
    keys: list[str] = []
    for r in runs:
        for k in r.overrides:
            if k not in keys:
                keys.append(k)
    return [k for k in keys if len({r.overrides.get(k, "") for r in runs}) > 1]


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _point_status(runs: Sequence[Run]) -> str:
    statuses = {r.status for r in runs}
    return statuses.pop() if len(statuses) == 1 else "mixed"


def choose_x_key(keys: Sequence[str], points: Sequence[Point]) -> str | None:
    """The numeric swept key with the most distinct values (else the first swept key)."""
    if not keys:
        return None
    best, best_n = None, 0
    for k in keys:
        vals = {p.values[k] for p in points}
        if _numeric(vals) and len(vals) > best_n:
            best, best_n = k, len(vals)
    return best or keys[0]


def summarize(runs: Sequence[Run], x_key: str | None = None) -> Summary:
    """Group runs into points (same swept values), take medians, pick the best point.

    The best point is the one with the highest median MB/s among points whose runs all
    succeeded (status ``ok``).
    """
    keys = swept_keys(runs)
    if x_key is not None and x_key not in keys:
        raise ConfigError(f"{x_key}: not a swept key (swept: {', '.join(keys) or 'none'})")
    groups: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(r.overrides.get(k, "") for k in keys), []).append(r)
    points = []
    for values, members in groups.items():
        members.sort(key=lambda r: (r.repeat_index is None, r.repeat_index or 0))
        timed = [r for r in members if r.timed]
        rates = [r.mb_s for r in timed if r.mb_s is not None]
        points.append(Point(
            values=dict(zip(keys, values)), runs=members, status=_point_status(members),
            total_s=_median([r.total_s for r in timed]), mb_s=_median(rates),
            mb_s_min=min(rates) if rates else None, mb_s_max=max(rates) if rates else None,
            phases={p: _median([r.phases.get(p) for r in timed]) for p in PHASES}))
    sortable = {k: _numeric(p.values[k] for p in points) for k in keys}
    points.sort(key=lambda p: tuple(value_sort_key(p.values[k]) if sortable[k]
                                    else (1, 0.0, p.values[k]) for k in keys))
    candidates = [p for p in points if p.status == "ok" and p.mb_s is not None]
    best = max(candidates, key=lambda p: p.mb_s or 0.0) if candidates else None
    return Summary(keys=keys, points=points, best=best,
                   x_key=x_key or choose_x_key(keys, points))


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
COLUMNS = ("status", "runs", "ok_runs", "total_s", "mb_s", "mb_s_min", "mb_s_max",
           *(f"{p}_s" for p in PHASES), "nodes", "archive_bytes", "codec", "jobs", "error")


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _fmt_rate(value: float | None) -> str:
    """MB/s for people: 3 significant digits for small rates, one decimal from 100 up."""
    if value is None:
        return ""
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"


def _common(runs: Sequence[Run], attr: str) -> str:
    vals = {getattr(r, attr) for r in runs if getattr(r, attr) is not None}
    return ",".join(str(v) for v in sorted(vals, key=str))


def _point_error(p: Point) -> str:
    errors = [r.error for r in p.runs if r.error and r.status not in ("ok",)]
    return errors[0] if errors else ""


def rows(summary: Summary) -> list[dict[str, str]]:
    """One dict per point: the swept keys then COLUMNS, all as text (CSV-ready)."""
    out = []
    for p in summary.points:
        row = {k: p.values[k] for k in summary.keys}
        row.update({
            "status": p.status, "runs": str(len(p.runs)), "ok_runs": str(p.ok_runs),
            "total_s": _fmt(p.total_s, 3), "mb_s": _fmt(p.mb_s, 3),
            "mb_s_min": _fmt(p.mb_s_min, 3), "mb_s_max": _fmt(p.mb_s_max, 3),
            **{f"{ph}_s": _fmt(p.phases.get(ph), 3) for ph in PHASES},
            "nodes": _common(p.runs, "nodes"), "archive_bytes": _common(p.runs, "archive_bytes"),
            "codec": _common(p.runs, "codec"), "jobs": " ".join(r.label for r in p.runs),
            "error": _point_error(p),
        })
        out.append(row)
    return out


def to_csv(summary: Summary) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*summary.keys, *COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(summary))
    return buf.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def best_line(summary: Summary) -> str:
    b = summary.best
    if b is None:
        return "Best: none (no point succeeded on all its runs)"
    return (f"Best: {b.label(summary.keys)}: {_fmt_rate(b.mb_s)} MB/s, {b.total_s:.3f} s total "
            f"(median of {len(b.runs)} run{'s' if len(b.runs) != 1 else ''})")


def to_markdown(summary: Summary) -> str:
    """The summary as a Markdown table (one row per point) with a header and the best point."""
    runs = summary.runs
    nodes = _common(runs, "nodes") or "?"
    sizes = {r.archive_bytes for r in runs if r.archive_bytes is not None}
    codecs = _common(runs, "codec")
    archive = ", ".join(format_size(s) for s in sorted(sizes)) or "?"
    lines = ["# ezpz transfer sweep", "",
             f"{len(summary.points)} point{'s' if len(summary.points) != 1 else ''}, "
             f"{len(runs)} run{'s' if len(runs) != 1 else ''}; nodes: {nodes}; "
             f"archive: {archive}{' ' + codecs if codecs else ''}. "
             "Times are medians over the runs of a point that finished (ok or partial).", ""]
    head = [*summary.keys, "status", "runs ok", "total s", "MB/s",
            *(f"{p} s" for p in PHASES), "error"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---:" if h.endswith((" s", "MB/s", "ok")) else "---"
                                for h in head) + "|")
    for p, row in zip(summary.points, rows(summary)):
        mark = " **(best)**" if p is summary.best else ""
        cells = [*(row[k] for k in summary.keys), row["status"] + mark,
                 f"{row['ok_runs']}/{row['runs']}", row["total_s"], _fmt_rate(p.mb_s),
                 *(row[f"{ph}_s"] for ph in PHASES), row["error"]]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    lines += ["", best_line(summary), ""]
    return "\n".join(lines)


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``path`` through a temporary file and a rename, with the umask's usual mode
    (not mkstemp's 0600: summaries live in shared sweep directories)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        raise EzpzError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plot_summary(summary: Summary, path: Any, title: str = "ezpz transfer sweep") -> None:
    """Write the summary plot as PNG to ``path`` (see :mod:`ezpz.report.plot`; needs
    matplotlib, ImportError without it)."""
    from .plot import plot_summary as plot

    plot(summary, path, title)


# --------------------------------------------------------------------------------------
# all together
# --------------------------------------------------------------------------------------
@dataclass
class Written:
    """What write_summary produced: paths written, and lines for the user (e.g. no plot)."""

    paths: list[str]
    notes: list[str]


def write_summary(summary: Summary, out_dir: str, plot: bool = True) -> Written:
    """Write summary.csv, summary.md and (with matplotlib) summary.png into ``out_dir``."""
    if not os.path.isdir(out_dir):
        raise ConfigError(f"{out_dir}: no such directory for the summary")
    paths, notes = [], []
    for name, text in ((SUMMARY_CSV, to_csv(summary)), (SUMMARY_MD, to_markdown(summary))):
        path = os.path.join(out_dir, name)
        _write_atomic(path, text.encode())
        paths.append(path)
    if plot:
        png = os.path.join(out_dir, SUMMARY_PNG)
        try:
            buf = io.BytesIO()
            plot_summary(summary, buf)
        except ImportError:
            notes.append(f"{SUMMARY_PNG} not written: matplotlib is not installed "
                         f"({PLOT_HINT})")
        else:
            _write_atomic(png, buf.getvalue())
            paths.append(png)
    return Written(paths, notes)


def build_report(dirs: Sequence[str], out_dir: str | None = None, *, x_key: str | None = None,
                 plot: bool = True, require_results: bool = True) -> tuple[Summary, Written]:
    """Read every job under ``dirs``, summarise, write into ``out_dir`` (default: the one dir).

    All input is read and checked before anything is written.
    """
    if out_dir is None:
        if len(dirs) != 1:
            raise ConfigError("several directories given: say where the summary goes (--out DIR)")
        out_dir = dirs[0]
    runs = collect_runs(dirs, require_results=require_results)
    summary = summarize(runs, x_key=x_key)
    make_out_dir(out_dir)
    return summary, write_summary(summary, out_dir, plot=plot)


def make_out_dir(out_dir: str) -> None:
    """Create the summary's directory (and its parents) once every input has been read;
    a path that is a file, or a directory that cannot be made, is one ConfigError."""
    if os.path.isdir(out_dir):
        return
    if os.path.lexists(out_dir):
        raise ConfigError(f"--out {out_dir}: exists and is not a directory; give a directory")
    try:
        os.makedirs(out_dir)
    except OSError as exc:
        raise ConfigError(f"--out {out_dir}: cannot create it ({exc.strerror or exc}); give "
                          "a directory you can write") from None
