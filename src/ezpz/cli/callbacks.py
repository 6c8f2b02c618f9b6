"""Hydra callbacks of the ezpz apps.

``SweepSummary`` (configured in ``conf/yeet.yaml`` under ``hydra.callbacks``): when a sweep
(``ezpz-yeet-env -m ...``) ends, summarise its job directories into ``summary.csv``,
``summary.md`` and ``summary.png`` in the sweep directory and print the table and the best
point. Turn it off with ``~hydra.callbacks.sweep_summary`` or drop the plot with
``hydra.callbacks.sweep_summary.plot=false``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from hydra.experimental.callback import Callback

from .. import log as ezlog
from ..errors import EzpzError

log = ezlog.get_logger("ezpz.report")


class SweepSummary(Callback):
    """Writes the sweep summary into the sweep directory after the last job."""

    def __init__(self, plot: bool = True) -> None:
        self.plot = bool(plot)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from ..report import best_line, build_report, to_markdown

        sweep_dir = os.path.abspath(str(config.hydra.sweep.dir))
        try:
            # Every job may have failed before writing results.json: still summarise.
            summary, written = build_report([sweep_dir], plot=self.plot, require_results=False)
        except EzpzError as exc:
            log.error("sweep summary not written: %s", exc)
            return
        except Exception as exc:  # noqa: BLE001 - the sweep itself is done; say why, once
            if ezlog.debug_enabled():
                traceback.print_exc()
            log.error("sweep summary not written: %s: %s", type(exc).__name__, exc)
            return
        print(to_markdown(summary), flush=True)
        for note in written.notes:
            log.warning("%s", note)
        log.info("%s", best_line(summary))
        log.info("sweep summary: %s", ", ".join(written.paths))
        sys.stdout.flush()
