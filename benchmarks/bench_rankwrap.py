"""What ezpz's rank wrapper costs each rank, against the same command run bare.

    python benchmarks/bench_rankwrap.py            # 3 rounds
    python benchmarks/bench_rankwrap.py -n 5

Two measurements, each as the median of the rounds, bare and wrapped taking turns within a
round (so the machine's noise spreads over both):

- start-up: ``python -c pass`` bare against ``python -S rankwrap.py -- python -c pass``
  (20 runs per round); the difference is what every rank pays once;
- throughput: a rank printing 200,000 lines of 60 bytes, bare against wrapped, its output
  read by this process as a launcher would.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ROOT / "src" / "ezpz" / "launch" / "rankwrap.py"
PY = sys.executable
WRAP = [PY, "-S", str(WRAPPER), "--"]
LINES = ("import sys\nw = sys.stdout.write\nline = 'x' * 59 + '\\n'\n"
         "for _ in range(200000): w(line)\n")


def timed(argv: list[str], repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if p.returncode != 0:
            raise SystemExit(f"{argv} failed: {p.stdout[-500:]!r}")
    return (time.perf_counter() - start) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--rounds", type=int, default=3)
    args = ap.parse_args()
    start = {"bare": [], "wrapped": []}
    flow = {"bare": [], "wrapped": []}
    for _ in range(args.rounds):
        start["bare"].append(timed([PY, "-c", "pass"], 20))
        start["wrapped"].append(timed([*WRAP, PY, "-c", "pass"], 20))
        flow["bare"].append(timed([PY, "-c", LINES]))
        flow["wrapped"].append(timed([*WRAP, PY, "-c", LINES]))
    med = {k: {w: statistics.median(v[w]) for w in v} for k, v in (("start", start),
                                                                   ("flow", flow))}
    s, f = med["start"], med["flow"]
    print(f"rank wrapper, medians of {args.rounds} rounds ({sys.version.split()[0]})")
    print(f"start-up   bare {s['bare'] * 1e3:7.1f} ms   wrapped {s['wrapped'] * 1e3:7.1f} ms   "
          f"ratio {s['wrapped'] / s['bare']:.2f}   (+{(s['wrapped'] - s['bare']) * 1e3:.1f} ms "
          "per rank)")
    print(f"200k lines bare {f['bare']:7.3f} s    wrapped {f['wrapped']:7.3f} s    "
          f"ratio {f['wrapped'] / f['bare']:.2f}")


if __name__ == "__main__":
    main()
