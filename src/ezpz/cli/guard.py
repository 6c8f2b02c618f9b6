"""The one-line error of every command: :func:`guard` maps an EzpzError to its message and
exit code (a traceback only with EZPZ_LOG_LEVEL=DEBUG). Light on purpose: the transfer
worker's ``--spec`` path imports it on every rank, before its communicator exists."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .. import log as ezlog
from ..errors import EzpzError


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _log_to_files(message: str) -> None:
    """Record a one-line error in the run's log file (the console gets it from ``fail``)."""
    import logging

    for handler in logging.getLogger("ezpz").handlers:
        if isinstance(handler, logging.FileHandler):
            record = logging.LogRecord("ezpz.cli", logging.ERROR, __file__, 0, message, None, None)
            record.funcName = "guard"
            handler.handle(record)


def guard(func: Callable[..., int | None]) -> Callable[..., int]:
    """Map EzpzError to one line + its exit code; tracebacks only with EZPZ_LOG_LEVEL=DEBUG."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            rc = func(*args, **kwargs)
            return 0 if rc is None else int(rc)
        except EzpzError as exc:
            if ezlog.debug_enabled():
                traceback.print_exc()
            _log_to_files(f"error: {exc}")
            return fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
