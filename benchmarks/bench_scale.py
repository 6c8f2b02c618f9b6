"""The transfer on many simulated nodes, and with one slow node (needs root).

    python benchmarks/bench_scale.py                          # 8, 16, 32, 64 nodes + slow node
    python benchmarks/bench_scale.py --parts nodes --nodes 8,64
    python benchmarks/bench_scale.py --parts slow --repeat 3

``nodes``: ``python -m ezpz.transfer`` of a small archive to N simulated nodes (one MPI
rank per node, all on this machine), every node checked complete in ``results.json``,
against the floor of the same launch doing nothing but starting Python and MPI
(``mpiexec -n N simnode.sh python -c 'from mpi4py import MPI; ...Barrier()'``). Prints both
per N and the time each added node costs (least-squares slope), for ezpz and the floor.

``slow``: 4 nodes, node2's extraction reading at most 1 MB/s (``EZPZ_TEST_SLOW_EXTRACT``:
its receiving is not slowed; a CPU quota on the whole process would pause its receiver too);
three configurations, alternating: no slow node; a slow node with the decoupled broadcast (the default: what it cannot extract yet goes to its
spill file); a slow node in lockstep (``EZPZ_SPILL=0``: the broadcast waits for its
extraction). Prints rank 0's broadcast phase, when the other nodes were done and when the
slow node finished extracting (seconds from launch, medians), and the ratios to the run
without a slow node.

On this machine every simulated node shares the same 2 cores: the figures measure the
machine as much as the code, compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import simnodes  # noqa: E402

PY = sys.executable


def many_files(path: Path, count: int, size: int) -> Path:
    with tarfile.open(path, "w") as tf:
        for i in range(count):
            info = tarfile.TarInfo(f"env/d{i % 64:02d}/f{i:05d}")
            data = os.urandom(size)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _launch(n: int, argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run ``argv`` on n simulated nodes; (wall s, exit code)."""
    out = tempfile.mkdtemp(prefix="ezpz-bench-scale-", dir="/var/tmp")
    try:
        full = simnodes.sim_env(out, capture=True, check=False, base=env)
        t0 = time.perf_counter()
        proc = subprocess.Popen([simnodes.mpiexec_path(), "-n", str(n), simnodes.SIMNODE,
                                 *argv], env=full, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        output, _ = proc.communicate(timeout=1800)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tails = "\n".join(x.output[-1500:] for x in simnodes.collect(out, n))
            raise SystemExit(f"run failed (exit {proc.returncode}):\n{output[-3000:]}\n{tails}")
        return wall, proc.returncode
    finally:
        shutil.rmtree(out, ignore_errors=True)


def transfer(work: Path, n: int, archive: Path, chunk: str, env: dict[str, str] | None = None
             ) -> tuple[float, float, dict]:
    """(launch time, wall s, results.json) of one transfer to n nodes."""
    from ezpz.config import Backend, parse_size
    from ezpz.transfer import WorkerSpec

    run = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    cfg = run / "worker-spec.json"  # what ezpz-yeet-env hands the ranks
    WorkerSpec(src=str(archive), dst="/tmp/env", backend=Backend.mpi,
               chunk_bytes=parse_size(chunk), timeout=600.0).write(str(cfg))
    t_launch = time.time()
    wall, _ = _launch(n, [PY, "-m", "ezpz.transfer", "--spec", str(cfg), "--run-dir",
                          str(run)], dict(os.environ, EZPZ_LOG_LEVEL="WARNING", **(env or {})))
    results = json.loads((run / "results.json").read_text())
    shutil.rmtree(run, ignore_errors=True)
    return t_launch, wall, results


def floor(n: int) -> float:
    wall, _ = _launch(n, [PY, "-c", "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"])
    return wall


def slope(xs: list[int], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def part_nodes(work: Path, archive: Path, nodes: list[int], repeat: int) -> None:
    print(f"\nnodes: archive {archive.stat().st_size / 1e6:.1f} MB, chunk 1MiB; floor = the "
          "same launch starting Python and MPI only; medians of "
          f"{repeat}\n")
    print("| N | floor s | ezpz s | ezpz - floor s | ezpz/floor | all complete |")
    print("|---|---|---|---|---|---|")
    fl_med, ez_med = [], []
    for n in nodes:
        fl, ez, complete = [], [], True
        for _ in range(repeat):  # alternate
            fl.append(floor(n))
            _, wall, res = transfer(work, n, archive, "1MiB")
            ez.append(wall)
            complete &= (res["status"] == "ok" and res["nodes"] == n
                         and all(p["status"] == "ok" for p in res["per_node"]))
        f, e = statistics.median(fl), statistics.median(ez)
        fl_med.append(f)
        ez_med.append(e)
        print(f"| {n} | {f:.2f} | {e:.2f} | {e - f:.2f} | {e / f:.2f} | "
              f"{'yes' if complete else 'NO'} |", flush=True)
    if len(nodes) > 1:
        se, sf = slope(nodes, ez_med), slope(nodes, fl_med)
        print(f"\ntime per added node (least-squares slope over N={','.join(map(str, nodes))}):"
              f" ezpz {se:.3f} s/node, floor {sf:.3f} s/node, ezpz beyond the floor "
              f"{se - sf:.3f} s/node")


def part_slow(work: Path, archive: Path, repeat: int) -> None:
    print(f"\nslow node: 4 nodes, node2's extraction reading at most 1 MB/s; archive "
          f"{archive.stat().st_size / 1e6:.1f} MB of small files, chunk 256KiB; seconds from "
          f"launch, medians of {repeat}\n")
    slow = {"EZPZ_TEST_SLOW_EXTRACT": "node2:1"}
    configs = {"no slow node": {}, "slow node, decoupled (default)": slow,
               "slow node, lockstep (EZPZ_SPILL=0)": {**slow, "EZPZ_SPILL": "0"}}
    rows: dict[str, list[tuple[float, float, float, float, int]]] = {c: [] for c in configs}
    for _ in range(repeat):  # alternate
        for name, env in configs.items():
            t0, wall, res = transfer(work, 4, archive, "256KiB", env)
            per = {p["host"]: p for p in res["per_node"]}
            others = max(per[h]["timeline"]["done"] for h in per if h != "node2") - t0
            slow_end = per["node2"]["timeline"]["extract_end"] - t0
            rows[name].append((res["phases"]["broadcast"], others, slow_end, wall,
                               per["node2"]["spilled"]))
    base = {k: statistics.median(r[k] for r in rows["no slow node"]) for k in range(4)}
    print("| configuration | broadcast s (rank 0) | others done s | slow node extracted s | "
          "run s | spilled MB | broadcast vs no slow node | others done vs no slow node |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        m = [statistics.median(r[k] for r in runs) for k in range(5)]
        print(f"| {name} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.2f} | "
              f"{m[4] / 1e6:.1f} | {m[0] / base[0]:.2f} | {m[1] / base[1]:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="8,16,32,64")
    ap.add_argument("--parts", default="nodes,slow")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    ok, why = simnodes.namespaces_available()
    if not ok:
        raise SystemExit(f"simulated nodes unavailable: {why}")
    parts = set(args.parts.split(","))
    work = Path(tempfile.mkdtemp(prefix="ezpz-bench-scale-", dir="/var/tmp"))
    try:
        print(f"command: python benchmarks/bench_scale.py {' '.join(sys.argv[1:])}".rstrip())
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start;"
              " every simulated node on this one machine")
        if "nodes" in parts:
            part_nodes(work, many_files(work / "small.tar", 2000, 4096),
                       [int(x) for x in args.nodes.split(",")], args.repeat)
        if "slow" in parts:
            part_slow(work, many_files(work / "slow.tar", 20000, 200), args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
