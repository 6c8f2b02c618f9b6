"""Build (once) and cache the benchmark payload: a real venv of >= 1 GB and >= 40k files.

    python benchmarks/payload.py            # prints the venv path (builds it if missing)

The venv lives outside the repository, under $EZPZ_BENCH_CACHE (default
~/.cache/ezpz-bench), because it is large and is reused across runs. It holds torch (CPU
build), numpy, scipy, pandas, scikit-learn, matplotlib, sympy and transformers: the kind of
environment ezpz exists to move. A smaller payload (``--small``) holds a subset and is used to
show that memory stays flat as the payload grows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("EZPZ_BENCH_CACHE", Path.home() / ".cache" / "ezpz-bench"))
BIG = ["torch==2.13.0", "numpy", "scipy", "pandas", "scikit-learn", "matplotlib", "sympy",
       "transformers"]
SMALL = ["numpy", "sympy"]


def tree_stats(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                files += 1
                size += os.path.getsize(p)
    return files, size


def ensure(small: bool = False) -> Path:
    """The payload venv, built on first use."""
    venv = CACHE / ("venv-small" if small else "venv-big")
    done = venv / ".ezpz-bench-complete"
    if done.exists():
        return venv
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"[payload] building {venv} (one time)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + (SMALL if small else BIG), check=True)
    files, size = tree_stats(venv)
    print(f"[payload] {venv}: {files} files, {size / 1e9:.2f} GB", file=sys.stderr)
    done.write_text(f"{files} {size}\n")
    return venv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="the small payload")
    args = ap.parse_args()
    print(ensure(args.small))


if __name__ == "__main__":
    main()
