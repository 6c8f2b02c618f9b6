"""The error hierarchy. CLIs print one line for these; anything else is a bug (traceback)."""

from __future__ import annotations

#: Exit code for bad usage or configuration (nothing was run).
EXIT_USAGE = 2
#: Exit code for a runtime failure.
EXIT_FAILURE = 1


class EzpzError(Exception):
    """Base class for errors a user can cause or fix. ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_FAILURE


class ConfigError(EzpzError):
    """A bad config value, override or file argument; nothing was started."""

    exit_code = EXIT_USAGE


class LaunchError(EzpzError):
    """A launch command could not be built or started (hosts, GPUs, launcher)."""

    exit_code = EXIT_USAGE


class ArchiveError(EzpzError):
    """Packing or reading an archive failed (corrupt, unsafe member, unreadable file)."""


class RelocateError(EzpzError):
    """An environment could not be relocated to its new prefix."""


class TransferError(EzpzError):
    """The per-node transfer failed on one or more nodes."""
