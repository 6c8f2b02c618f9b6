"""Benchmark the transfer worker against the floor, on simulated nodes (needs root).

    python benchmarks/bench_transfer.py              # full: >= 1 GB venv, N=2,4, zstd+gzip, sweep
    python benchmarks/bench_transfer.py --quick      # small payload, one repeat: checks it runs

(a) ezpz's transfer (``python -m ezpz.transfer``) to N simulated nodes; (b) the floor: every
node extracts its own local copy of the same archive at the same time with
``zstd -dc | tar -x`` (no transfer at all); (c) the same with the ``.tar.gz`` form and
``tar -xzf``; (d) a chunk_size sweep. Runs alternate and medians of ``--repeat`` runs are
reported, with the ratio ezpz/floor, the peak RSS of every rank (VmHWM, from results.json)
for two payload sizes, and the worker's ``--help`` start-up time.
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import payload  # noqa: E402
import simnodes  # noqa: E402

PY = sys.executable
CACHE = payload.CACHE / "archives"


# --------------------------------------------------------------------------------------
# archives
# --------------------------------------------------------------------------------------
def archive(venv: Path, codec: str) -> Path:
    """The payload packed with ezpz-tar-env's packer (cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / (venv.name + {"zstd": ".tar.zst", "gzip": ".tar.gz"}[codec])
    stamp = (venv / ".ezpz-bench-complete").stat().st_mtime
    if out.exists() and out.stat().st_mtime > stamp:
        return out
    try:
        from ezpz.tar_env import pack

        pack(prefix=str(venv), path=str(out), codec=codec, overwrite=True)
    except ImportError:  # packer not available: plain tar through the codec
        tar = subprocess.Popen(["tar", "-C", str(venv.parent), "-cf", "-", venv.name],
                               stdout=subprocess.PIPE)
        comp = ["zstd", "-q", "-T0", "-o", str(out), "-f"] if codec == "zstd" else \
            ["pigz", "-c"]
        with open(out, "wb") as fh:
            subprocess.run(comp, stdin=tar.stdout, stdout=fh if codec == "gzip" else None,
                           check=True)
        tar.wait()
    return out


# --------------------------------------------------------------------------------------
# one node's floor (run inside a simulated node): extract the local copy
# --------------------------------------------------------------------------------------
def floor_node(codec: str, path: str) -> None:
    dest = "/tmp/floor"
    os.makedirs(dest, exist_ok=True)
    t0 = time.perf_counter()
    if codec == "zstd":
        dec = subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE)
        tar = subprocess.run(["tar", "-x", "-C", dest], stdin=dec.stdout)
        dec.stdout.close()  # type: ignore[union-attr]
        rc = dec.wait() or tar.returncode
    else:
        rc = subprocess.run(["tar", "-xzf", path, "-C", dest]).returncode
    print(json.dumps({"seconds": time.perf_counter() - t0, "rc": rc}))
    sys.exit(rc)


def run_floor(n: int, codec: str, path: Path) -> float:
    t0 = time.perf_counter()
    res = simnodes.run_simnodes(n, [PY, __file__, "--floor-node", codec, str(path)],
                                timeout=1800)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"floor failed: {res.output}\n" + "\n".join(x.output for x in res.nodes))
    return wall


def run_ezpz(n: int, path: Path, chunk: str, engine: str = "python") -> tuple[float, dict]:
    work = Path(tempfile.mkdtemp(prefix="ezpz-bench-", dir="/var/tmp"))
    try:
        cfg = work / "cfg.yaml"
        cfg.write_text(f"transfer:\n  src: {json.dumps(str(path))}\n  chunk_size: {chunk}\n"
                       f"  extractor: {engine}\n")
        argv = [PY, "-m", "ezpz.transfer", "--config-file", str(cfg), "--run-dir", str(work)]
        env = dict(os.environ, EZPZ_LOG_LEVEL="WARNING")
        t0 = time.perf_counter()
        res = simnodes.run_simnodes(n, argv, timeout=1800, env=env)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit("ezpz failed:\n" + "\n".join(x.output[-3000:] for x in res.nodes))
        return wall, json.loads((work / "results.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def startup() -> float:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([PY, "-m", "ezpz.transfer", "--help"], stdout=subprocess.DEVNULL,
                       check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small payload, one repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--nodes", default="2,4")
    ap.add_argument("--chunks", default="4MiB,16MiB,64MiB")
    ap.add_argument("--floor-node", nargs=2, metavar=("CODEC", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_node:
        floor_node(*args.floor_node)
        return
    ok, why = simnodes.namespaces_available()
    if not ok:
        raise SystemExit(f"simulated nodes unavailable: {why}")
    os.environ.setdefault("TMPDIR", "/var/tmp")
    repeat = 1 if args.quick else args.repeat
    nodes = [int(x) for x in args.nodes.split(",")]
    chunks = args.chunks.split(",")
    small = payload.ensure(small=True)
    big = small if args.quick else payload.ensure()
    files, size = (payload.CACHE / big.name / ".ezpz-bench-complete").read_text().split()
    print(f"payload {big}: {int(files)} files, {int(size) / 1e9:.2f} GB; repeats {repeat}")
    arch = {c: archive(big, c) for c in ("zstd", "gzip")}
    for c, p in arch.items():
        print(f"  {c}: {p.stat().st_size / 1e6:.0f} MB")

    print("\n| N | codec | floor s | ezpz s | ezpz/floor | peak RSS MB (max rank) |")
    print("|---|---|---|---|---|---|")
    default_chunk = "16MiB"
    for n in nodes:
        for codec in ("zstd", "gzip"):
            fl, ez, rss = [], [], []
            for _ in range(repeat):  # alternate
                fl.append(run_floor(n, codec, arch[codec]))
                wall, res = run_ezpz(n, arch[codec], default_chunk)
                ez.append(wall)
                rss.append(max(p["rss_mb"] for p in res["per_node"]))
            f, e = statistics.median(fl), statistics.median(ez)
            print(f"| {n} | {codec} | {f:.2f} | {e:.2f} | {e / f:.2f} | {max(rss):.0f} |",
                  flush=True)

    print("\nchunk_size sweep (N=2, zstd):\n\n| chunk_size | ezpz s | MB/s | peak RSS MB |")
    print("|---|---|---|---|")
    for chunk in chunks:
        ez, rss = [], []
        for _ in range(repeat):
            wall, res = run_ezpz(2, arch["zstd"], chunk)
            ez.append(wall)
            rss.append(max(p["rss_mb"] for p in res["per_node"]))
        e = statistics.median(ez)
        print(f"| {chunk} | {e:.2f} | {arch['zstd'].stat().st_size / e / 1e6:.0f} | "
              f"{max(rss):.0f} |", flush=True)

    print("\nextractor (N=2, zstd, 16MiB): python vs GNU tar fed the checked stream\n")
    for engine in ("python", "tar"):
        ez = [run_ezpz(2, arch["zstd"], default_chunk, engine)[0] for _ in range(repeat)]
        print(f"  {engine}: {statistics.median(ez):.2f} s")

    print("\npeak RSS flat across payload sizes (N=2, zstd, 16MiB):")
    for venv in ([small] if args.quick else [small, big]):
        a = archive(venv, "zstd")
        _, res = run_ezpz(2, a, default_chunk)
        print(f"  {venv.name}: archive {a.stat().st_size / 1e6:.0f} MB -> peak RSS "
              f"{max(p['rss_mb'] for p in res['per_node']):.0f} MB")

    print(f"\nworker start-up (python -m ezpz.transfer --help, median of 5): {startup():.2f} s")


if __name__ == "__main__":
    main()
