"""The sweep summary's plot (``summary.png``): throughput against the swept value next to the
time of each phase. matplotlib is imported inside :func:`plot_summary`, so it stays optional.

Labels are the swept values as typed: math text is off, so a ``$`` in a path or an override
is drawn as a ``$``. A point whose runs were all skipped (``dst`` already held the archive)
is drawn as skipped, not as failed.
"""

from __future__ import annotations

import math
from typing import Any

from ..config import format_size
from . import PHASES, Point, Summary, _common, _numeric, value_sort_key


def _x_positions(summary: Summary) -> tuple[dict[str, float], bool, list[str]]:
    """x value per distinct x-key value, whether to use a log axis, and tick labels."""
    key = summary.x_key
    if key is None:
        return {"": 0.0}, False, [""]
    values = sorted({p.values[key] for p in summary.points}, key=value_sort_key)
    if _numeric(values):
        nums = [value_sort_key(v)[1] for v in values]
        sized = any(any(c.isalpha() for c in v) for v in values)
        log = all(n > 0 for n in nums) and (sized or (max(nums) / min(nums) >= 10))
        return dict(zip(values, nums)), log, values
    return {v: float(i) for i, v in enumerate(values)}, False, values


def plot_summary(summary: Summary, path: Any, title: str = "ezpz transfer sweep") -> None:
    """Write the summary plot as PNG to ``path`` (a file name or a binary file object).

    matplotlib is imported here, so it stays optional; ImportError when it is missing.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"text.parse_math": False}):
        fig = make_figure(summary, title)
        try:
            fig.savefig(path, dpi=110, format="png")
        finally:
            plt.close(fig)


def point_state(p: Point) -> str:
    """How a point is drawn: ``timed`` (it has a median), ``skipped`` (every run found dst
    already holding the archive) or ``failed``."""
    if p.mb_s is not None:
        return "timed"
    return "skipped" if p.runs and all(r.status == "skipped" for r in p.runs) else "failed"


def make_figure(summary: Summary, title: str = "ezpz transfer sweep") -> Any:
    """The summary's figure (see :func:`plot_summary`; call it inside an rc_context with
    math text off, as plot_summary does)."""
    import matplotlib.pyplot as plt

    key = summary.x_key
    others = [k for k in summary.keys if k != key]
    xpos, log, ticks = _x_positions(summary)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.25]})

    # Left: median throughput against the x key, one line per combination of the others.
    series: dict[str, list[Point]] = {}
    for p in summary.points:
        series.setdefault(" / ".join(p.values[k] for k in others), []).append(p)
    failed_x: list[float] = []
    skipped_x: list[float] = []
    for name, pts in series.items():
        good = [p for p in pts if p.mb_s is not None]
        xs = [xpos[p.values[key]] if key else 0.0 for p in good]
        ys = [p.mb_s or 0.0 for p in good]
        lows = [(p.mb_s or 0.0) - (p.mb_s_min if p.mb_s_min is not None else p.mb_s or 0.0)
                for p in good]
        highs = [(p.mb_s_max if p.mb_s_max is not None else p.mb_s or 0.0) - (p.mb_s or 0.0)
                 for p in good]
        err = [lows, highs]
        if good:
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, linewidth=1.6,
                        label=name or "median (bars: min–max over repeats)")
        for p in pts:
            state = point_state(p)
            if state != "timed":
                (skipped_x if state == "skipped" else failed_x).append(
                    xpos[p.values[key]] if key else 0.0)
    if summary.best is not None:
        b = summary.best
        ax.scatter([xpos[b.values[key]] if key else 0.0], [b.mb_s], s=180, facecolors="none",
                   edgecolors="tab:green", linewidths=2, zorder=5, label="best")
    if skipped_x:
        ax.scatter(skipped_x, [0.0] * len(skipped_x), marker="o", facecolors="none",
                   edgecolors="tab:gray", s=70, zorder=5, label="skipped point (dst held it)")
    if failed_x:
        ax.scatter(failed_x, [0.0] * len(failed_x), marker="x", color="tab:red", s=70,
                   zorder=5, label="failed point")
    if log:
        ax.set_xscale("log", base=2 if all(v > 0 and math.log2(v).is_integer()
                                          for v in xpos.values()) else 10)
    ax.set_xticks(list(xpos.values()))
    ax.set_xticklabels(ticks, rotation=30 if len(ticks) > 4 else 0, ha="right" if len(ticks) > 4 else "center")
    ax.minorticks_off()
    ax.set_xlabel(f"{key}" + (" (bytes, log scale)" if log and any(
        any(c.isalpha() for c in t) for t in ticks) else "") if key else "")
    ax.set_ylabel("throughput, median (MB/s)")
    top = max([p.mb_s_max for p in summary.points if p.mb_s_max is not None], default=1.0)
    ax.set_ylim(0, top * 1.15 or 1.0)
    ax.margins(x=0.08)
    ax.grid(True, alpha=0.3)
    ax.set_title("Throughput (higher is better)")
    ax.legend(fontsize=8, title=" / ".join(others) if others else None, title_fontsize=8)

    # Right: median seconds per phase for every point (phases overlap in the pipeline, so
    # they need not add up to the total, shown as a black line).
    labels = [" / ".join(p.values[k] for k in summary.keys) or "run" for p in summary.points]
    n = len(summary.points)
    width = 0.8 / (len(PHASES) + 1)
    for i, ph in enumerate(PHASES):
        ys = [p.phases.get(ph) or 0.0 for p in summary.points]
        bx.bar([j + (i - len(PHASES) / 2) * width for j in range(n)], ys, width, label=ph)
    totals = [p.total_s for p in summary.points]
    bx.scatter([j for j, t in enumerate(totals) if t is not None],
               [t for t in totals if t is not None], marker="_", s=600, color="black",
               linewidths=2, zorder=5, label="total (phases overlap)")
    for j, p in enumerate(summary.points):
        if p.total_s is None:
            skipped = point_state(p) == "skipped"
            bx.text(j, 0, "skipped" if skipped else "failed",
                    color="tab:gray" if skipped else "tab:red", ha="center", va="bottom",
                    rotation=90)
    bx.set_xticks(range(n))
    tilt = n > 4 or len(summary.keys) > 1
    bx.set_xticklabels(labels, rotation=30 if tilt else 0, ha="right" if tilt else "center",
                       fontsize=8)
    highest = max([t for t in totals if t is not None]
                  + [v for p in summary.points for v in p.phases.values() if v is not None],
                  default=1.0)
    bx.set_ylim(0, highest * 1.3 or 1.0)  # room for the legend above the bars
    bx.set_ylabel("seconds, median")
    bx.set_xlabel(" / ".join(summary.keys) if summary.keys else "")
    bx.set_title("Per-phase time (lower is better)")
    bx.grid(True, axis="y", alpha=0.3)
    bx.legend(fontsize=8, ncol=3)

    runs = summary.runs
    sizes = sorted({r.archive_bytes for r in runs if r.archive_bytes is not None})
    sub = []
    if _common(runs, "nodes"):
        sub.append(f"{_common(runs, 'nodes')} node(s)")
    if sizes:
        sub.append("archive " + ", ".join(format_size(s) for s in sizes)
                   + (f" {_common(runs, 'codec')}" if _common(runs, "codec") else ""))
    sub.append(f"{len(runs)} runs")
    fig.suptitle(f"{title}: " + ", ".join(sub))
    fig.tight_layout()
    return fig
