"""One log format for every entry point, the per-node worker and library use.

``[YYYY-MM-DD HH:MM:SS,ffffff][I][module:line:func] message``

Rank 0 logs at INFO, other ranks at CRITICAL, unless ``EZPZ_LOG_LEVEL`` says otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import TextIO

from .jobenv import get_rank

LOG_LEVEL_ENV = "EZPZ_LOG_LEVEL"
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
           "WARN": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}
_HANDLER_NAME = "ezpz"


class EzpzFormatter(logging.Formatter):
    """``[date time,micro][L][module:line:func] message`` with a one-letter level."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S,%f")
        head = f"[{stamp}][{record.levelname[:1]}][{record.module}:{record.lineno}:{record.funcName}]"
        text = f"{head} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def resolve_level(rank: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The log level for this process: EZPZ_LOG_LEVEL if set, else INFO on rank 0, CRITICAL elsewhere."""
    env = os.environ if environ is None else environ
    wanted = env.get(LOG_LEVEL_ENV, "").strip().upper()
    if wanted in _LEVELS:
        return _LEVELS[wanted]
    rank = get_rank(env) if rank is None else rank
    return logging.INFO if rank == 0 else logging.CRITICAL


def debug_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(LOG_LEVEL_ENV, "").strip().upper() == "DEBUG"


def setup_logging(rank: int | None = None, stream: TextIO | None = None,
                  logfile: str | None = None) -> logging.Logger:
    """Configure the ``ezpz`` logger (idempotent). Returns it.

    Only the ``ezpz`` logger tree is touched, so importing ezpz as a library leaves the
    application's own logging alone.
    """
    logger = logging.getLogger("ezpz")
    level = resolve_level(rank)
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        if getattr(handler, "name", None) in (_HANDLER_NAME, _HANDLER_NAME + "-file"):
            logger.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(EzpzFormatter())
    logger.addHandler(handler)
    if logfile:
        fh = logging.FileHandler(logfile)
        fh.set_name(_HANDLER_NAME + "-file")
        fh.setFormatter(EzpzFormatter())
        logger.addHandler(fh)
    return logger


def get_logger(name: str) -> logging.Logger:
    """A logger under ``ezpz``; sets up the default handler the first time."""
    root = logging.getLogger("ezpz")
    if not any(getattr(h, "name", None) == _HANDLER_NAME for h in root.handlers):
        setup_logging()
    if name == "ezpz" or name.startswith("ezpz."):
        return logging.getLogger(name)
    return logging.getLogger(f"ezpz.{name}")
