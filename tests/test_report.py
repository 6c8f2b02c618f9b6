"""Sweep summaries from results.json files (ezpz.report and ezpz-report).

The sweep directories here are written by hand: FIXTURES OF THE results.json FORMAT (the keys
the transfer worker writes) with realistic values, laid out like a Hydra multirun
(``<sweep>/<job num>/results.json`` and ``<sweep>/<job num>/.hydra/overrides.yaml``). The
real sweep, end to end, is in test_sweep.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys

import pytest

from ezpz import report
from ezpz.cli.report import main as report_main
from ezpz.config import parse_size
from ezpz.errors import ConfigError

ARCHIVE_BYTES = 48_213_504


def fixture_results(chunk_size: str, total: float, status: str = "ok", nodes: int = 2,
                    error: str | None = None) -> dict:
    """A results.json as the worker writes it (format fixture, realistic numbers)."""
    phases = {"read": round(total * 0.30, 4), "broadcast": round(total * 0.55, 4),
              "extract": round(total * 0.62, 4), "verify": round(total * 0.08, 4),
              "relocate": round(total * 0.05, 4), "total": total}
    ok = status == "ok"
    return {
        "ezpz_version": "0.1.0", "host": "x4711c1s2b0n0", "time": "2025-01-31T12:00:00Z",
        "status": status, "exit_code": 0 if ok else 1,
        "config": {"transfer": {"src": "/lus/proj/envs/env.tar.zst", "dst": "/tmp/env",
                                "decompress": True, "chunk_size": chunk_size, "depth": 4,
                                "backend": "auto", "keep_archive": False, "overwrite": True,
                                "verify": True, "relocate": True, "timeout": 600.0,
                                "repeat": 2, "repeat_index": 0, "min_success_nodes": None,
                                "min_success_fraction": None},
                   "machine": "aurora", "launcher": "mpiexec", "backend": "mpi"},
        "nodes": nodes, "ranks": nodes,
        "archive": {"path": "/lus/proj/envs/env.tar.zst", "bytes": ARCHIVE_BYTES,
                    "codec": "zstd", "xxh3_128": "9f86d081884c7d659a2feaa0c55ad015"},
        "dst": "/tmp/env", "phases": phases,
        "throughput_mb_s": round(ARCHIVE_BYTES / 1e6 / total, 3) if ok else 0.0,
        "per_node": [{"host": f"x4711c1s2b0n{i}", "status": status, "seconds": total,
                      "mb_s": round(ARCHIVE_BYTES / 1e6 / total, 3),
                      "error": error if (error and i == 1) else None} for i in range(nodes)],
        "failed_hosts": ["x4711c1s2b0n1"] if error else [],
    }


def make_job(sweep, num: int, overrides: list[str], results: dict | None):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if results is not None:
        (job / "results.json").write_text(json.dumps(results, indent=2))
    return job


# (chunk size, [total seconds of repeat 0, repeat 1, repeat 2]); job order as Hydra runs them,
# chunk sizes given out of numeric order on purpose (1MiB sorts after 256KiB as a string).
TIMES = {"1MiB": [0.61, 0.55, 0.58], "64KiB": [1.9, 2.3, 2.0], "256KiB": [0.8, 0.95, 0.7]}


@pytest.fixture
def sweep(tmp_path):
    d = tmp_path / "sweep"
    num = 0
    for cs, totals in TIMES.items():
        for i, t in enumerate(totals):
            make_job(d, num, ["machine=aurora", "transfer.src=/lus/proj/envs/env.tar.zst",
                              f"transfer.chunk_size={cs}", "transfer.repeat=3",
                              f"transfer.repeat_index={i}"], fixture_results(cs, t))
            num += 1
    # a point whose first repeat failed on one node and whose second never wrote results.json
    make_job(d, num, ["machine=aurora", "transfer.src=/lus/proj/envs/env.tar.zst",
                      "transfer.chunk_size=4MiB", "transfer.repeat=3", "transfer.repeat_index=0"],
             fixture_results("4MiB", 3.2, status="failed",
                             error="x4711c1s2b0n1: No space left on device: '/tmp/env'"))
    make_job(d, num + 1, ["machine=aurora", "transfer.src=/lus/proj/envs/env.tar.zst",
                          "transfer.chunk_size=4MiB", "transfer.repeat=3",
                          "transfer.repeat_index=1"], None)
    (d / "multirun.yaml").write_text("hydra: {}\n")
    return d


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def expected_from_files(job_dirs) -> dict:
    """Medians recomputed directly from the results.json files."""
    res = [json.loads((j / "results.json").read_text()) for j in job_dirs]
    res = [r for r in res if r["status"] == "ok"]
    return {"mb_s": statistics.median(r["throughput_mb_s"] for r in res),
            "total_s": statistics.median(r["phases"]["total"] for r in res),
            **{f"{p}_s": statistics.median(r["phases"][p] for r in res) for p in report.PHASES}}


def test_summary_groups_repeats_sorts_sizes_and_takes_medians(sweep):
    summary, written = report.build_report([str(sweep)])
    assert summary.keys == ["transfer.chunk_size"]
    assert summary.x_key == "transfer.chunk_size"
    rows = read_csv(sweep / "summary.csv")
    sizes = [r["transfer.chunk_size"] for r in rows]
    assert sizes == ["64KiB", "256KiB", "1MiB", "4MiB"]
    assert [parse_size(s) for s in sizes] == sorted(parse_size(s) for s in sizes)
    jobs_of = {cs: [sweep / str(n) for n in range(k * 3, k * 3 + 3)]
               for k, cs in enumerate(TIMES)}
    for row in rows[:3]:
        cs = row["transfer.chunk_size"]
        exp = expected_from_files(jobs_of[cs])
        assert row["status"] == "ok" and row["runs"] == "3" and row["ok_runs"] == "3"
        for col, value in exp.items():
            assert float(row[col]) == pytest.approx(value, abs=0.0006), (cs, col)
        assert row["jobs"] == " ".join(j.name for j in jobs_of[cs])
        assert row["nodes"] == "2" and row["archive_bytes"] == str(ARCHIVE_BYTES)
    failed = rows[3]
    assert failed["status"] == "failed"  # one results.json says failed, the other job has none
    assert failed["ok_runs"] == "0" and failed["mb_s"] == "" and failed["total_s"] == ""
    assert "No space left on device" in failed["error"]
    # the best point is the fastest median among points that all succeeded
    assert summary.best is summary.points[2] and summary.best.values["transfer.chunk_size"] == "1MiB"
    md = (sweep / "summary.md").read_text()
    assert "| 1MiB | ok **(best)** | 3/3 |" in md
    assert "Best: transfer.chunk_size=1MiB:" in md
    assert md.count("\n| ") == 1 + 4  # header + one row per point
    assert {os.path.basename(p) for p in written.paths} == {"summary.csv", "summary.md",
                                                            "summary.png"}


def test_job_without_results_is_a_failed_run(sweep):
    runs = report.collect_runs([str(sweep)])
    run = next(r for r in runs if r.label == "10")
    assert run.results is None and run.status == "failed" and run.repeat_index == 1
    assert "no results.json" in run.error
    assert run.overrides["transfer.chunk_size"] == "4MiB"
    assert report.REPEAT_KEY not in run.overrides


def test_several_swept_keys_and_unsortable_values(tmp_path):
    d = tmp_path / "s"
    n = 0
    for backend in ("torch", "mpi"):
        for cs, t in (("16MiB", 1.0), ("4MiB", 1.5)):
            make_job(d, n, [f"transfer.chunk_size={cs}", f"transfer.backend={backend}"],
                     fixture_results(cs, t + (0.5 if backend == "torch" else 0)))
            n += 1
    summary = report.summarize(report.collect_runs([str(d)]))
    assert summary.keys == ["transfer.chunk_size", "transfer.backend"]
    assert summary.x_key == "transfer.chunk_size"
    assert [tuple(p.values.values()) for p in summary.points] == [
        ("4MiB", "mpi"), ("4MiB", "torch"), ("16MiB", "mpi"), ("16MiB", "torch")]
    assert summary.best.values == {"transfer.chunk_size": "16MiB", "transfer.backend": "mpi"}
    with pytest.raises(ConfigError, match="transfer.depth: not a swept key"):
        report.summarize(report.collect_runs([str(d)]), x_key="transfer.depth")


def test_results_only_copies_use_the_configs(tmp_path):
    """Only results.json files copied off the machine: swept keys come from their configs."""
    d = tmp_path / "copied"
    for i, (cs, t) in enumerate((("8MiB", 1.2), ("2MiB", 1.4))):
        (d / f"run{i}").mkdir(parents=True)
        (d / f"run{i}" / "results.json").write_text(json.dumps(fixture_results(cs, t)))
    summary = report.summarize(report.collect_runs([str(d)]))
    assert summary.keys == ["transfer.chunk_size"]
    assert [p.values["transfer.chunk_size"] for p in summary.points] == ["2MiB", "8MiB"]


def test_single_run_dir(tmp_path):
    run = make_job(tmp_path, 0, ["transfer.src=a.tar.zst"], fixture_results("16MiB", 0.9))
    summary, _ = report.build_report([str(run)], plot=False)
    assert summary.keys == [] and len(summary.points) == 1
    rows = read_csv(run / "summary.csv")
    assert rows[0]["jobs"] == "." and rows[0]["status"] == "ok"


def test_merging_sweeps_needs_an_output_dir(sweep, tmp_path):
    other = tmp_path / "other"
    make_job(other, 0, ["machine=aurora", "transfer.src=/lus/proj/envs/env.tar.zst",
                        "transfer.chunk_size=64MiB", "transfer.repeat=3",
                        "transfer.repeat_index=0"], fixture_results("64MiB", 0.5))
    with pytest.raises(ConfigError, match="--out"):
        report.build_report([str(sweep), str(other)])
    out = tmp_path / "merged"
    out.mkdir()
    summary, _ = report.build_report([str(sweep), str(other)], str(out), plot=False)
    assert [p.values["transfer.chunk_size"] for p in summary.points][-2:] == ["4MiB", "64MiB"]
    assert summary.points[-1].runs[0].label == "other/0"
    assert summary.best.values["transfer.chunk_size"] == "64MiB"


def test_png_is_a_real_image(sweep):
    mpimg = pytest.importorskip("matplotlib.image")
    report.build_report([str(sweep)])
    img = mpimg.imread(str(sweep / "summary.png"))
    assert img.shape[0] > 300 and img.shape[1] > 600
    assert img.std() > 0.05  # not a blank canvas


def test_without_matplotlib_csv_and_md_are_still_written(sweep, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    _, written = report.build_report([str(sweep)])
    assert not (sweep / "summary.png").exists()
    assert (sweep / "summary.csv").exists() and (sweep / "summary.md").exists()
    assert written.notes == ["summary.png not written: matplotlib is not installed "
                             "(pip install 'ezpz-hpc[plot]')"]


# ---------------------------------------------------------------------------------------
# ezpz-report: bad input is one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------
def _listing(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_cli_reproduces_the_summary_on_a_copy(sweep, tmp_path, capsys):
    assert report_main([str(sweep), "--no-plot"]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("summary.*"))
    assert report_main([str(copy), "--no-plot"]) == 0
    out = capsys.readouterr()
    assert (copy / "summary.csv").read_text() == (sweep / "summary.csv").read_text()
    assert (copy / "summary.md").read_text() == (sweep / "summary.md").read_text()
    assert "Best: transfer.chunk_size=1MiB:" in out.out


@pytest.mark.parametrize("case", ["empty", "missing", "file", "bad-json", "not-results",
                                  "no-results", "unreadable", "bad-x"])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
    d = tmp_path / "d"
    d.mkdir()
    args = [str(d)]
    if case == "empty":
        expected = f"error: {d}: no results.json found (expected a run directory"
    elif case == "missing":
        args = [str(d / "nope")]
        expected = f"error: {d / 'nope'}: no such directory"
    elif case == "file":
        (d / "f").write_text("x")
        args = [str(d / "f")]
        expected = f"error: {d / 'f'}: not a directory"
    elif case == "bad-json":
        (d / "0").mkdir()
        (d / "0" / "results.json").write_text('{"status": "ok",')
        expected = f"error: {d / '0' / 'results.json'}: not valid JSON"
    elif case == "not-results":
        (d / "0").mkdir()
        (d / "0" / "results.json").write_text('[1, 2]')
        expected = f"error: {d / '0' / 'results.json'}: not a results.json of ezpz-yeet-env"
    elif case == "no-results":
        make_job(d, 0, ["transfer.chunk_size=1MiB"], None)
        make_job(d, 1, ["transfer.chunk_size=2MiB"], None)
        expected = f"error: {d}: no results.json in any of its 2 job directories"
    elif case == "unreadable":
        job = make_job(d, 0, ["transfer.chunk_size=1MiB"], fixture_results("1MiB", 1.0))
        (job / "results.json").unlink()
        (job / "results.json").mkdir()  # unreadable even for root
        expected = f"error: {job / 'results.json'}: cannot read"
    else:
        make_job(d, 0, ["transfer.chunk_size=1MiB"], fixture_results("1MiB", 1.0))
        make_job(d, 1, ["transfer.chunk_size=2MiB"], fixture_results("2MiB", 1.0))
        args += ["--x", "transfer.depth"]
        expected = "error: transfer.depth: not a swept key (swept: transfer.chunk_size)"
    before = _listing(tmp_path)
    assert report_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
    assert _listing(tmp_path) == before, "nothing may be written on bad input"


def test_cli_usage_errors_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ezpz.cli.report"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: the following arguments are required")
    p = subprocess.run([sys.executable, "-m", "ezpz.cli.report", "--help"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert p.returncode == 0 and "sweep directory" in p.stdout


def test_csv_round_trips(sweep):
    summary = report.summarize(report.collect_runs([str(sweep)]))
    rows = list(csv.DictReader(io.StringIO(report.to_csv(summary))))
    assert rows == report.rows(summary)


def test_summary_files_get_the_umask_mode_and_write_errors_are_one_line(tmp_path):
    import stat as _stat

    from ezpz.errors import EzpzError
    from ezpz.report import _write_atomic

    old = os.umask(0o022)
    try:
        _write_atomic(str(tmp_path / "summary.md"), b"x")
    finally:
        os.umask(old)
    assert _stat.S_IMODE((tmp_path / "summary.md").stat().st_mode) == 0o644
    with pytest.raises(EzpzError, match=r"cannot write .*missing/summary.md"):
        _write_atomic(str(tmp_path / "missing" / "summary.md"), b"x")
    assert not (tmp_path / "missing").exists()


# ---------------------------------------------------------------------------------------
# plots of skipped points and of labels with $; --out DIR is created
# ---------------------------------------------------------------------------------------
def _skipped_and_dollar_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    values = {"/tmp/$USER/a": "ok", "/tmp/$x_{1/$b": "skipped", "/tmp/c": "failed"}
    for num, (dst, status) in enumerate(values.items()):
        res = fixture_results("16MiB", 1.0 + num, status=status)
        if status == "skipped":
            res["exit_code"], res["throughput_mb_s"] = 0, 0.0
        make_job(sweep, num, [f"transfer.dst={dst}"], res)
    return sweep


def test_skipped_points_are_drawn_as_skipped_and_dollars_literally(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    from ezpz.report.plot import make_figure, point_state

    sweep = _skipped_and_dollar_sweep(tmp_path)
    summary = report.summarize(report.collect_runs([str(sweep)]))
    assert [point_state(p) for p in summary.points] == ["timed", "skipped", "failed"]
    with matplotlib.rc_context({"text.parse_math": False}):
        fig = make_figure(summary)
    left, right = fig.axes
    legend = [t.get_text() for t in left.get_legend().get_texts()]
    assert "skipped point (dst held it)" in legend and "failed point" in legend
    marks = sorted(t.get_text() for t in right.texts)
    assert marks == ["failed", "skipped"]
    labels = [t.get_text() for t in right.get_xticklabels()]
    assert labels == ["/tmp/$USER/a", "/tmp/$x_{1/$b", "/tmp/c"]
    assert not any(t.get_parse_math() for t in right.get_xticklabels())
    # the whole report renders: an unbalanced "$x_{" used to stop the plot as bad math text
    _, written = report.build_report([str(sweep)])
    assert str(sweep / "summary.png") in written.paths


def test_out_dir_is_created_and_a_file_in_the_way_is_one_line(sweep, tmp_path, capsys):
    out = tmp_path / "new" / "merged"
    assert report_main([str(sweep), "--out", str(out), "--no-plot"]) == 0
    assert (out / "summary.csv").is_file() and (out / "summary.md").is_file()
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    capsys.readouterr()
    assert report_main([str(sweep), "--out", str(blocker), "--no-plot"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {blocker}: exists and is not a directory; give a directory"]
    assert blocker.read_text() == "x"
