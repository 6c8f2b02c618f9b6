"""``python -m ezpz.transfer``: the worker's command line (see :mod:`ezpz.cli.transfer`)."""

import sys

from ezpz.cli.transfer import main

sys.exit(main())
