"""ezpz-tar-env against the usual ways of packing an environment, on one real venv.

    python benchmarks/bench_tar_env.py                 # the >= 1 GB payload, 3 rounds
    python benchmarks/bench_tar_env.py --small -n 5    # the small payload

Each round runs every method once, in turn (so the machine's noise spreads over all of
them); the table shows the median wall time and the archive size of each, and the ratios
against ``tar -czf`` and ``tar -cf - | zstd -T0`` measured in the same run. The payload is
read once before timing so every method reads it from the page cache.

Methods: ``ezpz-tar-env`` (the CLI as users run it: zstd default level on all cores,
including the prefix scan and the manifest), ``tar -czf`` (single-threaded gzip),
``tar -cf - | zstd -T0`` (two processes, no shell), and ``venv-pack`` when it is installed
and accepts the venv.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from payload import ensure, tree_stats


def warm(venv: Path) -> None:
    """Read every file once so all methods start from the page cache."""
    for dirpath, _dirs, names in os.walk(venv):
        for name in names:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                with open(p, "rb", buffering=0) as fh:
                    while fh.read(1 << 22):
                        pass


def run_ezpz(venv: Path, out: Path) -> None:
    exe = shutil.which("ezpz-tar-env", path=os.path.dirname(sys.executable)) or "ezpz-tar-env"
    subprocess.run([exe, f"env.prefix={venv}", f"archive.path={out}", "overwrite=true",
                    "hydra.run.dir=" + str(out.parent / "hydra"), "hydra.output_subdir=null"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_tar_gz(venv: Path, out: Path) -> None:
    subprocess.run(["tar", "-czf", str(out), "-C", str(venv.parent), venv.name], check=True)


def run_tar_zstd(venv: Path, out: Path) -> None:
    tar = subprocess.Popen(["tar", "-cf", "-", "-C", str(venv.parent), venv.name],
                           stdout=subprocess.PIPE)
    zstd = subprocess.Popen(["zstd", "-T0", "-q", "-f", "-o", str(out)], stdin=tar.stdout)
    tar.stdout.close()
    if zstd.wait() != 0 or tar.wait() != 0:
        raise subprocess.CalledProcessError(1, "tar | zstd")


def run_venv_pack(venv: Path, out: Path) -> None:
    exe = shutil.which("venv-pack", path=os.path.dirname(sys.executable)) or "venv-pack"
    subprocess.run([exe, "-p", str(venv), "-o", str(out), "--force", "--quiet"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


BAR = "\\|"  # a literal | inside a markdown table cell
METHODS = [
    ("ezpz-tar-env (zstd)", run_ezpz, ".tar.zst"),
    ("tar -czf", run_tar_gz, ".tar.gz"),
    ("tar -cf - | zstd -T0", run_tar_zstd, ".tar.zst"),
    ("venv-pack", run_venv_pack, ".tar.gz"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="use the small payload")
    ap.add_argument("-n", "--rounds", type=int, default=3, help="rounds (median over them)")
    ap.add_argument("--skip", action="append", default=[],
                    help="leave out methods whose name contains this (repeatable)")
    ap.add_argument("--out", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()

    venv = ensure(args.small)
    files, size = tree_stats(venv)
    print(f"payload: {venv} ({files} files, {size / 1e9:.2f} GB), {os.cpu_count()} cores",
          flush=True)
    warm(venv)
    methods = [m for m in METHODS if not any(s in m[0] for s in args.skip)]
    if not shutil.which("venv-pack", path=os.path.dirname(sys.executable)) and \
            not shutil.which("venv-pack"):
        methods = [m for m in methods if m[0] != "venv-pack"]
    times: dict[str, list[float]] = {m[0]: [] for m in methods}
    sizes: dict[str, int] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=args.out) as scratch:
        for r in range(args.rounds):
            for name, fn, suffix in methods:
                if name in failed:
                    continue
                out = Path(scratch) / ("bench" + suffix)
                t = time.perf_counter()
                try:
                    fn(venv, out)
                except subprocess.CalledProcessError as exc:
                    err = exc.stderr.decode(errors="replace").strip().splitlines() if exc.stderr \
                        else []
                    failed[name] = err[-1] if err else f"exit {exc.returncode}"
                    print(f"  {name}: failed ({failed[name]})", flush=True)
                    continue
                dt = time.perf_counter() - t
                times[name].append(dt)
                sizes[name] = out.stat().st_size
                out.unlink()
                print(f"  round {r + 1}: {name:<22} {dt:7.2f} s  {sizes[name] / 1e6:8.1f} MB",
                      flush=True)

    med = {k: statistics.median(v) for k, v in times.items() if v}
    gz = med.get("tar -czf")
    zs = med.get("tar -cf - | zstd -T0")
    print()
    print("| method | median time (s) | archive (MB) | speed-up vs `tar -czf` | "
          "time vs `tar \\| zstd -T0` |")
    print("|---|---:|---:|---:|---:|")
    for name, _fn, _s in methods:
        if name in failed:
            print(f"| {name.replace('|', BAR)} | failed: {failed[name]} | | | |")
            continue
        t = med[name]
        label = name.replace("|", BAR)
        print(f"| {label} | {t:.2f} | {sizes[name] / 1e6:.0f} | "
              f"{gz / t if gz else float('nan'):.1f}x | {t / zs if zs else float('nan'):.2f}x |")
    ez = "ezpz-tar-env (zstd)"
    if ez in med and gz and zs:
        print()
        print(f"ezpz-tar-env: {gz / med[ez]:.1f}x faster than tar -czf (target >= 5x), "
              f"archive {sizes[ez] / sizes['tar -czf']:.2f}x its size (target <= 1), "
              f"{med[ez] / zs:.2f}x the time of tar | zstd -T0 (target <= 1.2x); "
              f"median of {args.rounds}")


if __name__ == "__main__":
    main()
