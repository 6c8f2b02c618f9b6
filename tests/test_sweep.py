"""Sweeps of ezpz-yeet-env: repeats as Hydra jobs, the summary callback, the whole sweep."""

from __future__ import annotations

import csv
import logging

import pytest
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
    assert with_repeat_sweep(ovs, cfg) == [*ovs, "transfer.repeat_index=0,1,2"]


def test_repeat_from_a_preset_or_default_and_user_index():
    one = compose("yeet", ["machine=local"])
    assert with_repeat_sweep(["machine=local"], one) == ["machine=local"]
    two = compose("yeet", ["transfer.repeat=2"])
    mine = ["transfer.repeat=2", "transfer.repeat_index=5"]
    assert with_repeat_sweep(mine, two) == mine, "the user's own repeat_index is kept"
    assert with_repeat_sweep([], compose("launch", [])) == [], "apps without transfer"


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
    assert rows[2]["error"] == ("no results.json: the job failed before the transfer ran "
                                "(transfer.dst: /x/y: not writable)")
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
