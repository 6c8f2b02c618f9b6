"""Extraction alone, this tree against a baseline tree of ezpz, in one run.

    python benchmarks/bench_extract.py --baseline /path/to/other/ezpz/checkout
    python benchmarks/bench_extract.py --baseline SRC --codecs none,zstd --repeat 5
    python benchmarks/bench_extract.py --writers 1,2,4 --codecs none,zstd

Each run is a fresh process that extracts the benchmark payload (``benchmarks/payload.py``,
packed by ``bench_transfer.py``; or ``--archive``) into an empty directory on a tmpfs
(``--dest``, default /dev/shm) the way a node does: the decoder in its own thread
(``DecodeAhead``) feeding ``SafeExtractor``. Variants: the python engine with the C writer,
without it (``EZPZ_EXTRACT_C=0``), and the ``tar`` engine, for this tree and for the
baseline (its ``src`` put first on ``PYTHONPATH``; build its C module first). Runs alternate;
medians of ``--repeat`` are printed with the ratio this/baseline, for wall time and for the
CPU time of the process (user + sys, the tar child included).

``--writers 1,2,4`` compares instead, in this tree alone, the python engine with that many
writer threads (``SafeExtractor(writers=...)``), each against the first count in the list
measured in the same run. With ``--stage`` it times the write stage alone: the archive's
regular files (those the C writer takes: data whole in one decoded block) are read into
memory first, then written by that many threads, each a share of the directories, in
batches as the extraction makes them; no decoding and no parsing beside it. On a machine
with few cores that shows what the writer pool gives where the cores are there.
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
path, dest, codec, engine, writers = sys.argv[1:6]
kw = {"writers": int(writers)} if writers != "-" else {}
t0 = time.perf_counter()
with open(path, "rb", buffering=0) as fh:
    dec = DecodeAhead(fh, codec)
    try:
        rep = SafeExtractor(dest, engine=engine, label=path, **kw).run(dec, codec)
    finally:
        dec.close()
wall = time.perf_counter() - t0
me = resource.getrusage(resource.RUSAGE_SELF)
ch = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "cpu": me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime,
                  "members": rep.members, "fast": rep.fast_members}))
"""


STAGE = r"""
import io, json, os, subprocess, sys, threading, time
from ezpz.extract import _fastx
from ezpz.formats.tarread import TarReader
path, dest, codec, writers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[5])
cmd = ["zstd", "-dcq", path] if codec == "zstd" else ["cat", path]
raw = subprocess.run(cmd, capture_output=True, check=True).stdout
files = {}  # directory -> [(leaf, mode, view)]
reader = TarReader(io.BytesIO(raw), path)
while (m := reader.next()) is not None:
    if m.isreg():
        view = reader.data_view()
        if view is not None:
            d, _, leaf = m.name.rpartition("/")
            files.setdefault(d, []).append((leaf.encode(), m.mode & 0o755, view))
dirs = sorted(files)
fds = {}
for d in dirs:
    os.makedirs(os.path.join(dest, d), exist_ok=True)
    fds[d] = os.open(os.path.join(dest, d), os.O_PATH | os.O_DIRECTORY)
shares = [dirs[i::writers] for i in range(writers)]
def work(share):
    for d in share:
        recs = [(fds[d], leaf, mode, 0, view) for leaf, mode, view in files[d]]
        for k in range(0, len(recs), 256):
            done, err = _fastx.write_files(recs[k:k + 256], 0o022)
            assert not err, os.strerror(err)
threads = [threading.Thread(target=work, args=(sh,)) for sh in shares]
t0 = time.perf_counter()
c0 = time.process_time()
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                  "members": sum(len(v) for v in files.values()), "fast": 0}))
"""


def run_one(src: Path | None, archive: Path, codec: str, engine: str, env_extra: dict[str, str],
            dest_root: Path, writers: str = "-", script: str = RUNNER) -> dict:
    env = dict(os.environ, **env_extra)
    if src is not None:
        env["PYTHONPATH"] = str(src / "src") + os.pathsep + env.get("PYTHONPATH", "")
    dest = Path(tempfile.mkdtemp(prefix="ezpz-bench-x-", dir=dest_root))
    try:
        p = subprocess.run([sys.executable, "-c", script, str(archive), str(dest), codec, engine,
                            writers], env=env, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise SystemExit(f"run failed ({src or 'this tree'}, {engine}): {p.stderr.strip()}")
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path,
                    help="another checkout of ezpz (its src/ is imported)")
    ap.add_argument("--writers", help="writer thread counts to compare in this tree, e.g. "
                    "1,2,4 (the first is the baseline)")
    ap.add_argument("--stage", action="store_true", help="with --writers: the write stage "
                    "alone (file data in memory first)")
    ap.add_argument("--archive", type=Path, help="a .tar.zst (default: the benchmark payload)")
    ap.add_argument("--codecs", default="none,zstd", help="none (the archive decoded once "
                    "beforehand) and/or zstd")
    ap.add_argument("--engines", default="python,python-no-c,tar")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dest", type=Path, default=Path("/dev/shm"))
    args = ap.parse_args()
    if (args.baseline is None) == (args.writers is None):
        ap.error("give --baseline (this tree against another) or --writers (thread counts)")
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
            if args.writers:
                _compare_writers(path, codec, args.writers, args.repeat, args.dest, args.stage)
                continue
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


def _compare_writers(path: Path, codec: str, writers: str, repeat: int, dest: Path,
                     stage: bool) -> None:
    counts = [w.strip() for w in writers.split(",") if w.strip()]
    what = "the write stage alone" if stage else "extraction"
    print(f"\n{path.name} ({codec}), {what}, medians of {repeat}, writer threads against "
          f"{counts[0]} (same run, alternating):")
    runs: dict[str, list[dict]] = {w: [] for w in counts}
    for _ in range(repeat):
        for w in counts:
            runs[w].append(run_one(None, path, codec, "python", {}, dest, w,
                                   STAGE if stage else RUNNER))
    med = {w: {f: statistics.median(r[f] for r in v) for f in ("wall", "cpu")}
           for w, v in runs.items()}
    b = med[counts[0]]
    for w in counts:
        t = med[w]
        print(f"  writers={w:3s} wall {t['wall']:.2f} s ({t['wall'] / b['wall']:.2f}x); "
              f"CPU {t['cpu']:.2f} s ({t['cpu'] / b['cpu']:.2f}x); files "
              f"{runs[w][0]['members']}", flush=True)


if __name__ == "__main__":
    main()
