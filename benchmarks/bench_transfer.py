"""Benchmark the transfer worker against the floor, on simulated nodes (needs root).

    python benchmarks/bench_transfer.py              # full: >= 1 GB venv, N=2,4, zstd+gzip, sweep
    python benchmarks/bench_transfer.py --quick      # small payload, one repeat: checks it runs
    python benchmarks/bench_transfer.py --parts main --nodes 4 --codecs zstd transfer.depth=2

(a) ezpz's transfer (``python -m ezpz.transfer``) to N simulated nodes; (b) the floor: every
node extracts its own local copy of the same archive at the same time with
``zstd -dc | tar -x`` (no transfer at all); (c) the same with the ``.tar.gz`` form and
``tar -xzf``; (d) a chunk_size sweep. Runs alternate and medians of ``--repeat`` runs are
reported: wall time of the whole run, the ratio ezpz/floor, CPU seconds of every process of
the run (simulated nodes share the machine's cores, so when there are more nodes than cores
the ratio of wall times tends to the ratio of CPU seconds), rank 0's extract and relocate
phases, the peak RSS of every rank (VmHWM, from results.json) for two payload sizes, and the
worker's ``--help`` start-up time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
        from ezpz.pack import pack

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


def _sim(n: int, argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, list]:
    """Run ``argv`` on ``n`` simulated nodes: (wall s, CPU s of every process, node results).

    The harness's per-node check (which hashes every file under /tmp) is turned off: it
    would add the same large constant to both sides and hide the difference being measured.
    CPU seconds are user + system of every descendant (mpiexec waits for its proxies, which
    wait for the ranks and their children).
    """
    out = tempfile.mkdtemp(prefix="ezpz-bench-sim-", dir="/var/tmp")
    try:
        full_env = simnodes.sim_env(out, capture=True, check=False, base=env)
        cmd = [simnodes.mpiexec_path(), "-n", str(n), simnodes.SIMNODE, *argv]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        nodes = simnodes.collect(out, n)
        if p.returncode != 0:
            raise SystemExit(f"failed ({cmd}):\n{p.stdout}{p.stderr}\n"
                             + "\n".join(x.output[-3000:] for x in nodes))
        return wall, cpu, nodes
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_floor(n: int, codec: str, path: Path) -> tuple[float, float]:
    wall, cpu, _ = _sim(n, [PY, __file__, "--floor-node", codec, str(path)])
    return wall, cpu


def run_ezpz(n: int, path: Path, chunk: str, engine: str = "python",
             extra: tuple[str, ...] = (), env_extra: dict[str, str] | None = None,
             python: str = PY) -> tuple[float, float, dict]:
    work = Path(tempfile.mkdtemp(prefix="ezpz-bench-", dir="/var/tmp"))
    try:
        cfg = work / "cfg.yaml"
        cfg.write_text(f"transfer:\n  src: {json.dumps(str(path))}\n  chunk_size: {chunk}\n"
                       f"  extractor: {engine}\n")
        argv = [python, "-m", "ezpz.transfer", "--config-file", str(cfg), "--run-dir",
                str(work), *extra]
        env = dict(os.environ, EZPZ_LOG_LEVEL="WARNING", **(env_extra or {}))
        wall, cpu, _ = _sim(n, argv, env)
        return wall, cpu, json.loads((work / "results.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def startup(argv: list[str]) -> tuple[float, float]:
    """Median wall and CPU (user+sys) seconds of ``python argv`` over 5 runs.

    Wall time depends on what else runs on the machine; CPU time much less.
    """
    walls, cpus = [], []
    for _ in range(5):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([PY, *argv], stdout=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def _startup_line() -> str:
    wall, cpu = startup(["-m", "ezpz.transfer", "--help"])
    base, base_cpu = startup(["-c", "pass"])
    return (f"worker start-up (python -m ezpz.transfer --help, median of 5): {wall:.2f} s wall, "
            f"{cpu:.2f} CPU s; bare interpreter (python -c pass): {base:.2f} s wall, "
            f"{base_cpu:.2f} CPU s; ratio {wall / base:.1f}x")


def _rss(res: dict) -> float:
    return max(p["rss_mb"] for p in res["per_node"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small payload, one repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--nodes", default="2,4")
    ap.add_argument("--codecs", default="zstd,gzip")
    ap.add_argument("--chunks", default="4MiB,16MiB,64MiB")
    ap.add_argument("--parts", default="main,sweep,extractor,rss,startup",
                    help="comma-separated subset of main,sweep,extractor,rss,startup,versions")
    ap.add_argument("--baseline-python", metavar="PY",
                    help="part 'versions': the interpreter of another checkout's venv whose "
                         "worker is the baseline (e.g. the commit before a change)")
    ap.add_argument("overrides", nargs="*", help="extra transfer overrides for every ezpz run "
                    "(e.g. transfer.depth=2)")
    ap.add_argument("--floor-node", nargs=2, metavar=("CODEC", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_node:
        floor_node(*args.floor_node)
        return
    parts = set(args.parts.split(","))
    if "startup" in parts and parts == {"startup"}:
        print(_startup_line())
        return
    ok, why = simnodes.namespaces_available()
    if not ok:
        raise SystemExit(f"simulated nodes unavailable: {why}")
    os.environ.setdefault("TMPDIR", "/var/tmp")
    from ezpz.config import TransferConfig

    repeat = 1 if args.quick else args.repeat
    nodes = [int(x) for x in args.nodes.split(",")]
    codecs = args.codecs.split(",")
    chunks = args.chunks.split(",")
    extra = tuple(args.overrides)
    default_chunk = TransferConfig().chunk_size
    small = payload.ensure(small=True)
    big = small if args.quick else payload.ensure()
    files, size = (payload.CACHE / big.name / ".ezpz-bench-complete").read_text().split()
    print(f"command: {' '.join(['python', 'benchmarks/bench_transfer.py', *sys.argv[1:]])}")
    print(f"machine: {os.cpu_count()} cores; nodes simulated on this one machine "
          f"(mpiexec {simnodes.mpiexec_path().rsplit('/', 1)[-1]}, one rank per node)")
    print(f"payload {big.name}: {int(files)} files, {int(size) / 1e9:.2f} GB; repeats {repeat}; "
          f"chunk_size {default_chunk}; overrides {list(extra)}")
    arch = {c: archive(big, c) for c in ("zstd", "gzip")}
    for c, p in arch.items():
        print(f"  {c}: {p.stat().st_size / 1e6:.0f} MB")

    if "main" in parts:
        print("\nwall s: the whole mpiexec run; CPU s: user+sys of every process of the run; "
              "extract/relocate s: rank 0's phases (median)\n")
        print("| N | codec | floor s | ezpz s | ezpz/floor | floor CPU s | ezpz CPU s | "
              "extract s | relocate s | relocate/extract | peak RSS MB (max rank) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for n in nodes:
            for codec in codecs:
                fl, flc, ez, ezc, ext, rel, rss = [], [], [], [], [], [], []
                for _ in range(repeat):  # alternate
                    w, c = run_floor(n, codec, arch[codec])
                    fl.append(w)
                    flc.append(c)
                    w, c, res = run_ezpz(n, arch[codec], default_chunk, extra=extra)
                    ez.append(w)
                    ezc.append(c)
                    ext.append(res["phases"]["extract"])
                    rel.append(res["phases"]["relocate"])
                    rss.append(_rss(res))
                    print(f"    run: floor {fl[-1]:.2f} s ({flc[-1]:.1f} CPU s), ezpz {w:.2f} s "
                          f"({c:.1f} CPU s), phases {res['phases']}", flush=True)
                f, e = statistics.median(fl), statistics.median(ez)
                x, r = statistics.median(ext), statistics.median(rel)
                print(f"| {n} | {codec} | {f:.2f} | {e:.2f} | {e / f:.2f} | "
                      f"{statistics.median(flc):.1f} | {statistics.median(ezc):.1f} | {x:.2f} | "
                      f"{r:.3f} | {100 * r / x:.1f}% | {max(rss):.0f} |", flush=True)

    if "versions" in parts:
        if not args.baseline_python:
            raise SystemExit("--parts versions needs --baseline-python")
        print(f"\nthis checkout's worker vs the baseline's ({args.baseline_python}), runs "
              "alternating, wall s and CPU s (medians)\n")
        print("| N | codec | baseline s | this s | this/baseline | baseline CPU s | this CPU s |")
        print("|---|---|---|---|---|---|---|")
        for n in nodes:
            for codec in codecs:
                runs: dict[str, list[tuple[float, float]]] = {"base": [], "this": []}
                for _ in range(repeat):  # alternate
                    w, c, _res = run_ezpz(n, arch[codec], default_chunk, extra=extra,
                                          python=args.baseline_python)
                    runs["base"].append((w, c))
                    w, c, _res = run_ezpz(n, arch[codec], default_chunk, extra=extra)
                    runs["this"].append((w, c))
                    print(f"    run: baseline {runs['base'][-1][0]:.2f} s, this {w:.2f} s",
                          flush=True)
                bw, bc = (statistics.median(r[i] for r in runs["base"]) for i in (0, 1))
                tw, tc = (statistics.median(r[i] for r in runs["this"]) for i in (0, 1))
                print(f"| {n} | {codec} | {bw:.2f} | {tw:.2f} | {tw / bw:.2f} | {bc:.1f} | "
                      f"{tc:.1f} |", flush=True)

    if "sweep" in parts:
        print("\nchunk_size sweep (N=2, zstd):\n\n| chunk_size | ezpz s | MB/s | peak RSS MB |")
        print("|---|---|---|---|")
        results: dict[str, list] = {c: [] for c in chunks}
        for _ in range(repeat):  # alternate
            for chunk in chunks:
                results[chunk].append(run_ezpz(2, arch["zstd"], chunk, extra=extra))
        for chunk in chunks:
            e = statistics.median(r[0] for r in results[chunk])
            print(f"| {chunk} | {e:.2f} | {arch['zstd'].stat().st_size / e / 1e6:.0f} | "
                  f"{max(_rss(r[2]) for r in results[chunk]):.0f} |", flush=True)

    if "extractor" in parts:
        print(f"\nextractor (N=2, zstd, {default_chunk}): python (with its C helper for plain "
              "members, and without it: EZPZ_EXTRACT_C=0) vs GNU tar fed the checked stream\n")
        variants = {"python": ("python", {}),
                    "python, EZPZ_EXTRACT_C=0": ("python", {"EZPZ_EXTRACT_C": "0"}),
                    "tar": ("tar", {})}
        eng: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(repeat):  # alternate
            for name, (engine, env_extra) in variants.items():
                w, c, _res = run_ezpz(2, arch["zstd"], default_chunk, engine, extra, env_extra)
                eng[name].append((w, c))
        base = statistics.median(w for w, _ in eng["python, EZPZ_EXTRACT_C=0"])
        for name, runs in eng.items():
            w = statistics.median(r[0] for r in runs)
            c = statistics.median(r[1] for r in runs)
            print(f"  {name}: {w:.2f} s, {c:.1f} CPU s ({w / base:.2f}x the pure-Python path)")

    if "rss" in parts:
        print(f"\npeak RSS flat across payload sizes (N=2, zstd, {default_chunk}):")
        for venv in ([small] if args.quick else [small, big]):
            a = archive(venv, "zstd")
            _, _, res = run_ezpz(2, a, default_chunk, extra=extra)
            print(f"  {venv.name}: archive {a.stat().st_size / 1e6:.0f} MB -> peak RSS "
                  f"{_rss(res):.0f} MB (per rank: "
                  f"{', '.join(str(round(p['rss_mb'])) for p in res['per_node'])})")

    if "startup" in parts:
        print("\n" + _startup_line())


if __name__ == "__main__":
    main()
