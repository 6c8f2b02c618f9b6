"""Extraction alone, this tree against a baseline tree of ezpz, in one run.

    python benchmarks/bench_extract.py --baseline /path/to/other/ezpz/checkout
    python benchmarks/bench_extract.py --baseline SRC --codecs none,zstd --repeat 5

Each run is a fresh process that extracts the benchmark payload (``benchmarks/payload.py``,
packed by ``bench_transfer.py``; or ``--archive``) into an empty directory on a tmpfs
(``--dest``, default /dev/shm) the way a node does: the decoder in its own thread
(``DecodeAhead``) feeding ``SafeExtractor``. Variants: the python engine with the C writer,
without it (``EZPZ_EXTRACT_C=0``), and the ``tar`` engine, for this tree and for the
baseline (its ``src`` put first on ``PYTHONPATH``; build its C module first). Runs alternate;
medians of ``--repeat`` are printed with the ratio this/baseline, for wall time and for the
CPU time of the process (user + sys, the tar child included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNNER = r"""
import json, os, resource, sys, time
from ezpz.extract import SafeExtractor
from ezpz.extract.decode import DecodeAhead
path, dest, codec, engine = sys.argv[1:5]
t0 = time.perf_counter()
with open(path, "rb", buffering=0) as fh:
    dec = DecodeAhead(fh, codec)
    try:
        rep = SafeExtractor(dest, engine=engine, label=path).run(dec, codec)
    finally:
        dec.close()
wall = time.perf_counter() - t0
me = resource.getrusage(resource.RUSAGE_SELF)
ch = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "cpu": me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime,
                  "members": rep.members, "fast": rep.fast_members}))
"""


def run_one(src: Path | None, archive: Path, codec: str, engine: str, env_extra: dict[str, str],
            dest_root: Path) -> dict:
    env = dict(os.environ, **env_extra)
    if src is not None:
        env["PYTHONPATH"] = str(src / "src") + os.pathsep + env.get("PYTHONPATH", "")
    dest = Path(tempfile.mkdtemp(prefix="ezpz-bench-x-", dir=dest_root))
    try:
        p = subprocess.run([sys.executable, "-c", RUNNER, str(archive), str(dest), codec, engine],
                           env=env, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise SystemExit(f"run failed ({src or 'this tree'}, {engine}): {p.stderr.strip()}")
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, required=True,
                    help="another checkout of ezpz (its src/ is imported)")
    ap.add_argument("--archive", type=Path, help="a .tar.zst (default: the benchmark payload)")
    ap.add_argument("--codecs", default="none,zstd", help="none (the archive decoded once "
                    "beforehand) and/or zstd")
    ap.add_argument("--engines", default="python,python-no-c,tar")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dest", type=Path, default=Path("/dev/shm"))
    args = ap.parse_args()
    archive = args.archive
    if archive is None:
        sys.path.insert(0, str(HERE))
        import payload

        archive = payload.CACHE / "archives" / "venv-big.tar.zst"
        if not archive.exists():
            raise SystemExit(f"{archive} is missing: run benchmarks/bench_transfer.py once")
    plain = None
    try:
        for codec in args.codecs.split(","):
            path = archive
            if codec == "none":
                plain = Path(tempfile.mkstemp(suffix=".tar", dir="/var/tmp")[1])
                with open(plain, "wb") as out:
                    subprocess.run(["zstd", "-dcq", str(archive)], stdout=out, check=True)
                path = plain
            print(f"\n{path.name} ({codec}), medians of {args.repeat}, this tree / baseline "
                  f"{args.baseline}:")
            for engine in args.engines.split(","):
                env = {"EZPZ_EXTRACT_C": "0"} if engine == "python-no-c" else {}
                eng = "python" if engine == "python-no-c" else engine
                runs: dict[str, list[dict]] = {"this": [], "base": []}
                for _ in range(args.repeat):  # alternate
                    runs["this"].append(run_one(None, path, codec, eng, env, args.dest))
                    runs["base"].append(run_one(args.baseline, path, codec, eng, env, args.dest))
                med = {k: {f: statistics.median(r[f] for r in v) for f in ("wall", "cpu")}
                       for k, v in runs.items()}
                t, b = med["this"], med["base"]
                print(f"  {engine:12s} wall {t['wall']:.2f} s vs {b['wall']:.2f} s "
                      f"({t['wall'] / b['wall']:.2f}x); CPU {t['cpu']:.2f} s vs {b['cpu']:.2f} s "
                      f"({t['cpu'] / b['cpu']:.2f}x); members {runs['this'][0]['members']}, "
                      f"C-written {runs['this'][0]['fast']} vs {runs['base'][0]['fast']}",
                      flush=True)
            if plain is not None:
                plain.unlink()
                plain = None
    finally:
        if plain is not None:
            plain.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
