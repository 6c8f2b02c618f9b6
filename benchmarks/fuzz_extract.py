"""The long fuzz run of the extraction (the test suite runs a bounded one).

    python benchmarks/fuzz_extract.py                      # 10 minutes, every engine
    python benchmarks/fuzz_extract.py --seconds 3600 --engines python --save /var/tmp/finds

Mutated slices of a real venv's archive and every hostile shape (tests/fuzz_harness.py) are
extracted into a sandbox, engine after engine: python (with the C writer), python without it,
and tar. After every case: nothing outside the sandbox's dst changed, no exception but
ezpz's own, peak memory grew by less than the cap. Prints the cases run and the findings
(each finding's archive is saved under --save when given). Exit 1 when anything was found.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from fuzz_harness import (  # noqa: E402
    Findings,
    Sandbox,
    _slices,
    hostile,
    mutate,
    run_case,
    venv_archives,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--cases", type=int, default=0, help="stop after this many (0: no limit)")
    ap.add_argument("--engines", default="python,python-no-c,tar")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--save", type=Path, help="directory for the archives of findings")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rnd = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="ezpz-fuzz-", dir="/var/tmp"))
    box = Sandbox(work / "box")
    seeds = [s for a in venv_archives(work) for s in _slices(a, rnd, 40)] + hostile(box)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
    engines = args.engines.split(",")
    per = {e: Findings() for e in engines}
    t0 = time.monotonic()
    n = 0
    print(f"seed {seed}, {len(seeds)} seed archives, engines {', '.join(engines)}", flush=True)
    try:
        while time.monotonic() - t0 < args.seconds and (not args.cases or n < args.cases):
            engine = engines[n % len(engines)]
            os.environ["EZPZ_EXTRACT_C"] = "0" if engine == "python-no-c" else "1"
            data = rnd.choice(seeds)
            for _ in range(rnd.randint(0, 6)):
                data = mutate(data, rnd, box)
            before = len(per[engine].problems)
            run_case(data, "tar" if engine == "tar" else "python", box, per[engine], args.save)
            for p in per[engine].problems[before:]:
                print(f"FINDING ({engine}, case {n}): {p}", flush=True)
            n += 1
            if n % 2000 == 0:
                print(f"{n} cases, {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        from ezpz.fsutil import remove

        remove(str(work))
    found = sum(len(f.problems) for f in per.values())
    for e, f in per.items():
        print(f"{e}: {f.cases} cases ({f.extracted} extracted, {f.refused} refused), "
              f"{len(f.problems)} findings")
    print(f"total: {n} cases in {time.monotonic() - t0:.0f} s, {found} findings")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
