"""Sweeps of ezpz-yeet-env: repeats as Hydra jobs, the summary callback, the whole sweep."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tarfile

import pytest
import yaml
from omegaconf import OmegaConf

from ezpz.cli.callbacks import SweepSummary
from ezpz.cli.common import compose, to_settings, with_repeat_sweep
from ezpz.errors import ConfigError
from test_report import fixture_results, make_job


# ---------------------------------------------------------------------------------------
# transfer.repeat in a multirun
# ---------------------------------------------------------------------------------------
def test_repeat_becomes_a_repeat_index_sweep():
    ovs = ["machine=local", "transfer.chunk_size=1MiB,4MiB", "transfer.repeat=3"]
    cfg = compose("yeet", ["machine=local", "transfer.chunk_size=1MiB", "transfer.repeat=3"])
    assert with_repeat_sweep(ovs, to_settings(cfg)) == [*ovs, "transfer.repeat_index=0,1,2"]


def test_repeat_from_a_preset_or_default_and_user_index():
    one = compose("yeet", ["machine=local"])
    assert with_repeat_sweep(["machine=local"], to_settings(one)) == ["machine=local"]
    two = compose("yeet", ["transfer.repeat=2"])
    mine = ["transfer.repeat=2", "transfer.repeat_index=5"]
    assert with_repeat_sweep(mine, to_settings(two)) == mine, "the user's own repeat_index is kept"
    assert with_repeat_sweep([], to_settings(compose("launch", []))) == [], "apps without transfer"


def test_repeat_index_is_validated():
    assert to_settings(compose("yeet", ["transfer.repeat_index=3"])).transfer.repeat_index == 3
    with pytest.raises(ConfigError, match="transfer.repeat_index: must be 0 or more, got -1"):
        to_settings(compose("yeet", ["transfer.repeat_index=-1"]))


# ---------------------------------------------------------------------------------------
# the summary callback
# ---------------------------------------------------------------------------------------
def test_yeet_config_registers_the_summary_callback():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from ezpz.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="ezpz.conf", version_base=None):
        cfg = hydra_compose("yeet", return_hydra_config=True)
    GlobalHydra.instance().clear()
    cb = instantiate(cfg.hydra.callbacks.sweep_summary)
    assert isinstance(cb, SweepSummary) and cb.plot


def test_callback_writes_the_summary_into_the_sweep_dir(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for n, (cs, t) in enumerate((("4MiB", 1.4), ("4MiB", 1.2), ("512KiB", 2.5), ("512KiB", 2.1))):
        make_job(sweep, n, ["machine=local", f"transfer.chunk_size={cs}", "transfer.repeat=2",
                            f"transfer.repeat_index={n % 2}"], fixture_results(cs, t))
    # a job that never got to write results.json; its log says why
    job = make_job(sweep, 4, ["machine=local", "transfer.chunk_size=64MiB", "transfer.repeat=2",
                              "transfer.repeat_index=0"], None)
    (job / "ezpz-yeet-env.log").write_text(
        "[2025-01-31 12:00:00,000001][I][yeet_env:40:task] starting\n"
        "[2025-01-31 12:00:01,000001][E][yeet_env:52:task] transfer.dst: /x/y: not writable\n")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    SweepSummary(plot=False).on_multirun_end(cfg)
    out = capsys.readouterr().out
    with open(sweep / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["transfer.chunk_size"] for r in rows] == ["512KiB", "4MiB", "64MiB"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[2]["error"] == "transfer.dst: /x/y: not writable"  # the job's last error
    assert "| 4MiB | ok **(best)** | 2/2 |" in out
    assert not (sweep / "summary.png").exists()


def test_callback_on_a_sweep_dir_without_jobs_logs_one_line(tmp_path, caplog):
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    logger = logging.getLogger("ezpz")
    logger.addHandler(caplog.handler)  # the ezpz logger does not propagate to the root
    try:
        SweepSummary().on_multirun_end(cfg)  # must not raise: the sweep itself is over
    finally:
        logger.removeHandler(caplog.handler)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert errors[0].startswith(f"sweep summary not written: {tmp_path}: no results.json found")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# the whole sweep: the real ezpz-yeet-env -m on machine=local over a small real archive
# ---------------------------------------------------------------------------------------
def _yeet(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ezpz.cli.yeet_env", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory) -> str:
    """A real venv (no pip: small) packed as env.tar.gz, outside /tmp (see conftest)."""
    root = tmp_path_factory.mktemp("archive")
    env = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    # a package's worth of incompressible data, so the archive spans several chunks
    pkg = next((env / "lib").glob("python3*")) / "site-packages" / "payload"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    archive = root / "env.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(env, arcname="env")
    return str(archive)


def _points_from_files(sweep) -> dict[str, list[dict]]:
    """chunk size → results.json of its jobs, read independently of ezpz.report."""
    out: dict[str, list[dict]] = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        cs = next(o.split("=", 1)[1] for o in overrides if o.startswith("transfer.chunk_size="))
        out.setdefault(cs, []).append(json.loads((job / "results.json").read_text()))
    return out


def _csv_rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_chunk_size_sweep_with_repeats(tmp_path, small_archive):
    sweep = tmp_path / "sweep"
    # Every run gets its own dst: a dst that already holds this archive is skipped, not timed.
    dst = tmp_path / "dst"
    p = _yeet("-m", "machine=local", f"transfer.src={small_archive}",
              f"transfer.dst={dst}/${{transfer.chunk_size}}-${{transfer.repeat_index}}",
              "transfer.chunk_size=64KiB,256KiB,1MiB", "transfer.repeat=2",
              f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = sorted(int(d.name) for d in sweep.iterdir() if d.is_dir())
    assert jobs == [0, 1, 2, 3, 4, 5]
    by_cs = _points_from_files(sweep)
    assert {cs: len(rs) for cs, rs in by_cs.items()} == {"64KiB": 2, "256KiB": 2, "1MiB": 2}
    for cs, results in by_cs.items():
        assert sorted(r["config"]["transfer"]["repeat_index"] for r in results) == [0, 1]
        for r in results:
            assert r["status"] == "ok" and r["exit_code"] == 0
            assert r["config"]["transfer"]["chunk_size"] == cs
            assert r["archive"]["bytes"] == os.path.getsize(small_archive)
            assert r["throughput_mb_s"] > 0 and r["phases"]["total"] > 0
            assert r["dst"] == f"{dst}/{cs}-{r['config']['transfer']['repeat_index']}"
            assert os.path.isfile(os.path.join(r["dst"], "pyvenv.cfg"))

    rows = _csv_rows(sweep / "summary.csv")
    assert [r["transfer.chunk_size"] for r in rows] == ["64KiB", "256KiB", "1MiB"]
    for row in rows:
        results = by_cs[row["transfer.chunk_size"]]
        assert row["status"] == "ok" and row["runs"] == "2" and row["ok_runs"] == "2"
        assert float(row["mb_s"]) == pytest.approx(
            statistics.median(r["throughput_mb_s"] for r in results), abs=6e-4)
        assert float(row["total_s"]) == pytest.approx(
            statistics.median(r["phases"]["total"] for r in results), abs=6e-4)
        for phase in ("read", "broadcast", "extract", "verify", "relocate"):
            assert float(row[f"{phase}_s"]) == pytest.approx(
                statistics.median(r["phases"][phase] for r in results), abs=6e-4)
    best = max(rows, key=lambda r: float(r["mb_s"]))["transfer.chunk_size"]
    assert f"Best: transfer.chunk_size={best}:" in p.stdout
    assert "| transfer.chunk_size | status |" in p.stdout

    # ezpz-report on a copy (as if copied off the machine) reproduces the summary
    copy = tmp_path / "copied"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("summary.*"))
    r = subprocess.run([sys.executable, "-m", "ezpz.cli.report", str(copy)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in ("summary.csv", "summary.md"):
        assert (copy / name).read_text() == (sweep / name).read_text()

    mpimg = pytest.importorskip("matplotlib.image")
    for d in (sweep, copy):
        img = mpimg.imread(str(d / "summary.png"))
        assert img.shape[0] > 300 and img.shape[1] > 600 and img.std() > 0.05


@pytest.mark.slow
def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path, small_archive):
    sweep = tmp_path / "sweep"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    good1, bad, good2 = tmp_path / "d1" / "env", blocker / "env", tmp_path / "d2" / "env"
    p = _yeet("-m", "machine=local", f"transfer.src={small_archive}", "transfer.chunk_size=1MiB",
              f"transfer.dst={good1},{bad},{good2}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert p.returncode != 0, "a failed point makes the sweep's exit code non-zero"
    assert sorted(d.name for d in sweep.iterdir() if d.is_dir()) == ["0", "1", "2"]
    assert (good1 / "bin").is_dir() and (good2 / "bin").is_dir(), "the other points ran"
    rows = {r["transfer.dst"]: r for r in _csv_rows(sweep / "summary.csv")}
    assert set(rows) == {str(good1), str(bad), str(good2)}
    assert rows[str(good1)]["status"] == "ok" and rows[str(good2)]["status"] == "ok"
    assert rows[str(bad)]["status"] == "failed" and rows[str(bad)]["mb_s"] == ""
    assert rows[str(bad)]["error"], "a failed point says why"
    failed_job = sweep / rows[str(bad)]["jobs"]
    if (failed_job / "results.json").exists():
        assert json.loads((failed_job / "results.json").read_text())["status"] == "failed"
    assert blocker.read_text() == "not a directory\n"
