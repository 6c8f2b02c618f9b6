"""ezpz: pack a Python environment once, broadcast it to every node's /tmp, launch anything.

The distribution is ``ezpz-hpc`` (``pip install ezpz-hpc``); the import package and the
commands keep the name ezpz. The distribution called ``ezpz`` on PyPI is an unrelated project.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

#: The name this package is installed under (``pip show ezpz-hpc``).
DIST_NAME = "ezpz-hpc"

try:
    __version__ = _version(DIST_NAME)
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["DIST_NAME", "__version__"]
