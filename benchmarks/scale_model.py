"""Scale model of the transfer: stage rates measured here + published machine parameters.

    python benchmarks/scale_model.py                # measure, validate on 1/2/4/8 nodes, model
    python benchmarks/scale_model.py --no-validate  # measure and model only
    python benchmarks/scale_model.py --model-only   # the tables alone (the last run's rates)
    python benchmarks/scale_model.py --gate-check 64   # also: 64 nodes, MPICH's rings vs trees
    python benchmarks/scale_model.py --archive-bytes 20GB --files 300000 --codec gzip

What it measures HERE (none of it depends on the network): reading the archive (page cache
and cold-ish), xxh3 hashing, decoding (zstd, gzip) and the checked extraction into a tmpfs
(bytes/s and files/s, ezpz's own extractor), relocation, the worker's per-chunk overheads
(control block and a 16 MiB chunk broadcast between 2 simulated nodes under the MPICH wheel's
mpiexec), how long a rank waits between polls inside a collective, and start-up (bare
interpreter, ``python -m ezpz.transfer --help``, MPI initialisation at 1/2/4 ranks, the whole
worker on a 1-file archive, the modules it imports). How many single-node speeds this shared
2-core machine really delivers to 1, 2, 4 and 8 simulated nodes at once is measured too.

The model (for each machine in MACHINES, nodes 8 .. 8192): start-up + max(broadcast of the
archive, slowest node's read/decode/extract) + tail for the decoupled design, and the lockstep
design (every chunk paced by the slowest extractor) beside it. The broadcast is costed with the
algorithm MPICH picks for a 16 MiB chunk (``maint/tuning/coll/mpir/generic.json`` in
pmodels/mpich, collective=ibcast): binomial tree below 8 ranks, ``lg p`` steps of
alpha + chunk * beta; from 8 ranks scatter + ring allgather, ``(lg p + p - 1) * alpha +
2 * chunk * (p - 1)/p * beta`` (cost comments in src/mpi/coll/ibcast/). The worker drives
every collective as a non-blocking request polled with sleeps; MPICH advances such a request
only inside a Test call, so each algorithm step waits, on average, the "gate" measured here.
That is harmless in a binomial tree (``lg p`` steps) and ruinous in a ring (``p - 1`` steps):
the "polled" columns price it, with MPICH's rings and with the trees the worker asks for
(ezpz.transfer.comm.base.MPICH_TREE_CVARS); the design columns assume collectives progressed
without it.

Validation: the real transfer (``python -m ezpz.transfer`` under the MPICH wheel's mpiexec,
one simulated node per rank as in bench_transfer.py) of the small payload (``--validate-payload
big`` for the big one) on 1, 2, 4, 8 nodes, predicted (this machine's parameters, the worker as
it is today, rates measured on the big payload) beside measured. This machine is shared, and
other users' load changes from minute to minute: what n simulated nodes get of it is measured
again just before every run, the load average is printed before and after, and each node count
is the median of alternating runs.

The last line is the prediction for the given archive (default 5 GB zstd, 100,000 files) to
4,096 Aurora nodes with the decoupled design.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_transfer  # noqa: E402  (archives of the payload, runs on simulated nodes, start-up)
import payload  # noqa: E402

import simnodes  # noqa: E402

# --------------------------------------------------------------------------------------
# ezpz's public names used by this script, in one place (the package is being restructured:
# when a name moves, only these lines change)
# --------------------------------------------------------------------------------------
from ezpz.config import TransferConfig, parse_size  # noqa: E402
from ezpz.extract import extract_file  # noqa: E402
from ezpz.formats.codecs import READ_SIZE, open_decoder  # noqa: E402
from ezpz.relocate import relocate  # noqa: E402
from ezpz.transfer import make_plan  # noqa: E402
from ezpz.transfer.comm import make_comm  # noqa: E402
from ezpz.transfer.comm.base import OBJ_SLOT  # noqa: E402
from ezpz.transfer.wire import CONTROL_SIZE  # noqa: E402

PY = sys.executable
DEFAULTS = TransferConfig()
CHUNK = DEFAULTS.chunk_bytes  # 16 MiB
DEPTH = DEFAULTS.depth  # 4
OBJ_BYTES = OBJ_SLOT  # the plan and the run name: root broadcasts of one slot
#: What each node adds to the worker's three allgathers (the dst checks, the actions);
#: statuses reach rank 0 as mail, one small message per node.
GATHER_BYTES = 1
RATES_CACHE = payload.CACHE / "scale-model-rates.json"
SHM = "/dev/shm"  # a tmpfs, like a compute node's /tmp on Aurora
# force the ring algorithms (MPICH CVARs) to time one algorithm step of each collective
RING = {"MPIR_CVAR_IBCAST_INTRA_ALGORITHM": "sched_scatter_ring_allgather",
        "MPIR_CVAR_BCAST_INTRA_ALGORITHM": "scatter_ring_allgather",
        "MPIR_CVAR_IALLGATHER_INTRA_ALGORITHM": "sched_ring"}

# --------------------------------------------------------------------------------------
# published machine parameters (each with its source; "assumption" where none was found)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    name: str
    max_nodes: int
    cores: int  # per node
    nics: int  # per node
    nic_Bps: float  # one NIC, one direction
    alpha: float  # MPI latency, s
    bw: float  # what one rank (one NIC) gets for a large message, B/s
    read_Bps: float  # one client reading the archive from the parallel filesystem
    launch_s: float  # the launcher starting one process per node
    core_speed: float  # per-core speed relative to this machine (assumption: 1.0)
    tmp: str


# Slingshot-11 MPI latency and bandwidth, the same NIC (Cassini) on both machines:
#   EESSI, "MPI at Warp Speed: EESSI Meets Slingshot-11" (2025-11-14),
#   https://github.com/EESSI/docs/blob/main/docs/blog/posts/2025/09/eessi-cray-slingshot11.md
#   osu_latency, 2 nodes, 1 rank per node, cray-mpich 8.1.32: 2.6-2.9 us for messages up to
#   64 B, 4.66 us at 4 KiB, 180 us at 4 MiB (23 GB/s); osu_bibw 46.5 GB/s both ways (23 GB/s
#   each way). Measured between GPU buffers on Grace nodes: taken as an upper bound for host
#   buffers on Aurora's Xeon nodes (assumption).
SS11_ALPHA = 2.8e-6
SS11_BW = 23e9
#   https://docs.alcf.anl.gov/aurora/data-management/daos/daos-overview/ ("NIC and Core
#   Binding"): "Each Aurora compute node has 8 NICs ... Each NIC is capable of driving
#   20-25 GB/s unidirectional". A process drives one NIC (Copper's paper, see IMPORT_STORM:
#   "Copper utilizes a single NIC per node"), so one NIC is what the node's one rank gets.
SS11_NIC = 25e9

MACHINES = {
    # https://docs.alcf.anl.gov/aurora/hardware-overview/machine-overview/ : "Aurora is a
    #   10,624 node HPE Cray-Ex based system ... Each Xeon has 52 physical cores" (2 per node,
    #   104 cores), "Each node has 8 HPE Slingshot-11 NICs".
    # read_Bps: https://docs.alcf.anl.gov/aurora/data-management/moving_data_to_aurora/datamover/
    #   ("Using dbcast"): a 12.437 GiB tarball on Flare (Lustre) read and written to /tmp by 8
    #   ranks on one node in 2.011 s, 6.184 GiB/s; the same page says dbcast writes "to each
    #   compute node's local /tmp". One reader thread reaching that per-node rate is an
    #   assumption (Flare: 160 OSTs, 650 GB/s peak, docs.alcf.anl.gov/aurora/data-management/
    #   lustre/flare/).
    # launch_s: N. Lewis, K. Velusamy, K. Harms, H. Zheng et al., "Copper: Cooperative Caching
    #   Layer for Scalable Data Loading in Exascale Supercomputers", PDSW'24 (SC24), in
    #   https://github.com/argonne-lcf/copper (2024_PDSW_Copper_paper.pdf), section V: "the
    #   launch time of mpiexec was evaluated ... and was found to be between 0.1 and 0.3
    #   seconds at the node counts tested" (32 to 8,300 Aurora nodes); the upper end is used.
    # core_speed: assumption (Xeon Max 9470C, 2.0 GHz base, vs this machine's AMD EPYC vCPU).
    "aurora": Machine("Aurora", 10624, 104, 8, SS11_NIC, SS11_ALPHA, SS11_BW, 6.184 * 2**30,
                      0.3, 1.0, "node-local /tmp in memory (tmpfs)"),
    # https://docs.alcf.anl.gov/polaris/hardware-overview/machine-overview/ : "Polaris is a 560
    #   node HPE Apollo 6500 Gen 10+ ... a single 2.8 GHz AMD EPYC Milan 7543P 32 core CPU ...
    #   a pair of local 1.6TB of SSDs ... and a pair of Slingshot 11 network adapters".
    # read_Bps, launch_s: assumed equal to Aurora's (no published Polaris figure found).
    "polaris": Machine("Polaris", 560, 32, 2, SS11_NIC, SS11_ALPHA, SS11_BW, 6.184 * 2**30,
                       0.3, 1.0, "node-local /tmp (assumed as fast as a tmpfs here)"),
}

# Python start-up from the shared filesystem at scale (an "import storm"): Copper paper (above),
# section II and Fig. 1: with 12 Python processes per node on Lustre, "when using 512 nodes,
# import times increase to about 603 seconds when importing horovod and about 100 seconds when
# importing mpi4py" (where the interpreter lived is not said: assumed on Lustre too). First-order
# extrapolation of that one point: the metadata servers serve every process's module lookups,
# so the storm grows with processes x modules read from the shared filesystem; `python -c
# "from mpi4py import MPI"` loads STORM_MODULES modules (counted here with the MPICH wheel's
# mpi4py); the worker's count is measured (modules it imports from outside the interpreter's
# standard library: site-packages and ezpz itself; the interpreter is assumed to come from the
# OS image, as the frameworks module's does on Aurora). Copper (same paper, Fig. 4) keeps
# `import torch` about constant from 32 to 8,300 nodes; the ALCF Copper page recommends it for
# Python "in order to scale beyond 2k nodes".
IMPORT_STORM = (100.0, 512 * 12)
STORM_MODULES = 83

# Spread between nodes (assumptions, no published figure): a node's whole read/decode/extract
# time varies by NODE_CV between nodes; one chunk's time on one node varies by CHUNK_CV.
NODE_CV = 0.05
CHUNK_CV = 0.10


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------
def log2c(p: int) -> int:
    return math.ceil(math.log2(p)) if p > 1 else 0


def expected_max_z(p: int) -> float:
    """E[max of p standard normals] (Blom's approximation); 0 for one node."""
    return NormalDist().inv_cdf((p - 0.375) / (p + 0.25)) if p > 1 else 0.0


def gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB/s"


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


# --------------------------------------------------------------------------------------
# MPICH's choice of algorithm (pmodels/mpich maint/tuning/coll/mpir/generic.json)
# Aurora runs Argonne's MPICH: https://docs.alcf.anl.gov/aurora/aurora-pe/ ("The Aurora
# Programming Environment ... consists of the OneAPI SDK, MPICH, and the Spack PE") and the
# "Aurora MPICH" page, which links pmodels/mpich's aurora branch. Its site tuning modules may
# change the selection (assumption: the generic one). Polaris's Cray MPICH has its own.
# MPICH advances a non-blocking collective only inside MPI calls unless
# MPIR_CVAR_ASYNC_PROGRESS=1 (default false, src/mpi/init/init_async.c).
# --------------------------------------------------------------------------------------
def ibcast_algorithm(p: int, nbytes: int) -> tuple[str, int, float]:
    """(name, latency steps, bytes on the critical path) of an Ibcast of ``nbytes`` to p ranks.

    collective=ibcast: comm_size<8 -> sched_binomial; pow2 and < 12288 B -> binomial;
    pow2 and < 524288 B -> scatter + recursive-doubling allgather; otherwise binomial below
    12288 B and scatter + ring allgather above.
    """
    if p <= 1:
        return "none", 0, 0.0
    lg = log2c(p)
    if p < 8 or nbytes < 12288:
        return "binomial", lg, float(nbytes * lg)
    ring_bytes = 2.0 * nbytes * (p - 1) / p
    if p & (p - 1) == 0 and nbytes < 524288:
        return "scatter+recursive doubling", 2 * lg, ring_bytes
    return "scatter+ring allgather", lg + p - 1, ring_bytes


def iallgather_algorithm(p: int, each: int) -> tuple[str, int, float]:
    """collective=iallgather: pow2 and total < 524288 B -> recursive doubling; non-pow2 and
    total < 81920 B -> Bruck; otherwise ring (p - 1 steps)."""
    if p <= 1:
        return "none", 0, 0.0
    total = p * each
    moved = float(each * (p - 1))
    if p & (p - 1) == 0 and total < 524288:
        return "recursive doubling", log2c(p), moved
    if p & (p - 1) != 0 and total < 81920:
        return "Bruck", log2c(p), moved
    return "ring", p - 1, moved


def collective_s(steps: int, moved: float, alpha: float, bw: float, gate: float) -> float:
    return steps * (alpha + gate) + moved / bw


# --------------------------------------------------------------------------------------
# measured rates
# --------------------------------------------------------------------------------------
@dataclass
class Rates:
    machine: str
    cores: int
    load: list[float]
    payload: str
    files: int  # regular files
    members: int
    tar_bytes: int  # the decoded tar stream
    archive_bytes: dict[str, int]
    read_cache_Bps: float
    read_cold_Bps: float
    hash_Bps: float
    decode_Bps: dict[str, float]  # decoded bytes per CPU second
    extract_byte_s: float  # CPU s per byte written
    extract_file_s: float  # CPU s per regular file (its directories and headers included)
    extract_payload_s: float
    relocate_s: float
    relocate_files: int
    plan_s: float
    status_json_s: float  # one node's status: encode + decode
    ctrl_chunk_s: float  # control block, 2 simulated nodes
    data_chunk_s: float  # a 16 MiB chunk, 2 simulated nodes
    data_cpu_root_s: float
    data_cpu_leader_s: float
    step_busy_s: float  # one algorithm step, polled without sleeping
    copy_Bps: float  # bytes/s of a broadcast step between simulated nodes here
    gate_data_s: float
    gate_ctrl_s: float
    gate_allgather_s: float  # per step of a long ring (ranks deep in their poll back-off)
    allgather_short_s: float  # one allgather step at 2 nodes (a short call, back-off barely begun)
    python_s: float
    help_s: float
    mpi_init_s: dict[str, float]  # ranks -> s (mpiexec + simnode + mpi4py init + barrier)
    worker_fixed_s: dict[str, float]  # nodes -> s, the worker on a 1-file archive
    throughput: dict[str, float]  # k simulated nodes at once -> single-node speeds delivered
    probe_cpu_s: float  # the least CPU seconds one extraction of the small payload took
    worker_cpu_s: float  # the least CPU seconds of the worker's 1-node run on a 1-file archive
    worker_modules: int  # modules a worker imports from outside the standard library

    def ratio(self, codec: str) -> float:
        return self.tar_bytes / self.archive_bytes[codec]

    def eff(self, k: int) -> float:
        """Single-node speeds this machine delivers to k simulated nodes working at once
        (measured at 1, 2, 4, 8; flat beyond the last)."""
        pts = sorted((int(a), b) for a, b in self.throughput.items())
        if k <= 1:
            return min(1.0, pts[0][1])
        for (k0, e0), (k1, e1) in zip(pts, pts[1:]):
            if k <= k1:
                return e0 + (e1 - e0) * (k - k0) / (k1 - k0)
        return pts[-1][1]


def _read_rate(path: Path, cold: bool) -> float:
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as fh:
        if cold:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        t0 = time.perf_counter()
        n = 0
        while True:
            got = fh.readinto(buf)
            if not got:
                break
            n += got
        return n / (time.perf_counter() - t0)


def _hash_rate() -> float:
    import xxhash

    buf = memoryview(os.urandom(1 << 20) * 16)
    h = xxhash.xxh3_128()
    t0 = time.thread_time()
    for _ in range(32):
        h.update(buf)
    return 32 * len(buf) / (time.thread_time() - t0)


def _decode(path: Path, codec: str, sink: Any | None = None) -> tuple[int, float]:
    """(decoded bytes, CPU s of this thread) of decoding ``path``; optionally writes the tar."""
    with open(path, "rb", buffering=0) as fh:
        dec = open_decoder(fh, codec)
        n = 0
        c0 = time.thread_time()
        while True:
            block = dec.read(READ_SIZE)
            if not block:
                break
            n += len(block)
            if sink is not None:
                sink.write(block)
        return n, time.thread_time() - c0


def _extract(tar_path: Path, dest_root: str) -> tuple[float, Any, str]:
    """CPU s (user + sys) of extracting a plain tar with ezpz's extractor, its report, dest."""
    dest = tempfile.mkdtemp(prefix="x-", dir=dest_root)
    c0 = _cpu_self()
    report = extract_file(str(tar_path), dest)
    return _cpu_self() - c0, report, dest


def _best_extract(tar_path: Path, dest_root: str, reps: int = 3) -> tuple[float, Any, str]:
    """The least CPU of ``reps`` extractions; the last one's report and tree are kept."""
    best = math.inf
    for i in range(reps):
        cpu, report, dest = _extract(tar_path, dest_root)
        best = min(best, cpu)
        if i < reps - 1:
            shutil.rmtree(dest)
    return best, report, dest


def _big_files_tar(path: Path, files: int, size: int) -> int:
    block = os.urandom(1 << 20)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(files):
            ti = tarfile.TarInfo(f"big/f{i}.bin")
            ti.size = size
            tf.addfile(ti, _Repeat(block, size))
    return files * size


class _Repeat:
    """A readable of ``size`` bytes made of ``block`` repeated (tarfile.addfile input)."""

    def __init__(self, block: bytes, size: int) -> None:
        self.block, self.left = block, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        out = (self.block * (n // len(self.block) + 1))[:n]
        self.left -= n
        return out


def _status_json_s() -> float:
    status = {"host": "x4000c0s0b0n0", "status": "ok", "seconds": 12.345678, "mb_s": 456.7,
              "error": None, "rss_mb": 134.5}
    t0 = time.perf_counter()
    for _ in range(20000):
        json.loads(json.dumps(status, separators=(",", ":")))
    return (time.perf_counter() - t0) / 20000


# -- runs on simulated nodes ---------------------------------------------------------------
def _simrun(n: int, argv: list[str], env_extra: dict[str, str]) -> tuple[float, list[Any]]:
    """Run argv on n simulated nodes; (wall s, per-rank results)."""
    out = tempfile.mkdtemp(prefix="ezpz-model-sim-", dir="/var/tmp")
    try:
        env = simnodes.sim_env(out, capture=True, check=False, base=dict(os.environ, **env_extra))
        cmd = [simnodes.mpiexec_path(), "-n", str(n), simnodes.SIMNODE, *argv]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - t0
        nodes = simnodes.collect(out, n)
        if p.returncode != 0:
            raise SystemExit(f"failed ({' '.join(cmd)}):\n{p.stdout}{p.stderr}\n"
                             + "\n".join(x.output[-2000:] for x in nodes))
        return wall, nodes
    finally:
        shutil.rmtree(out, ignore_errors=True)


def mpi_probe(reps: int, small: int) -> None:
    """One rank of the collectives probe (run under mpiexec): the worker's own calls."""
    comm = make_comm("mpi", 300.0)
    comm.start_stream(list(range(comm.nnodes)))
    data = bytearray(CHUNK)
    little = bytearray(small)
    ctrl = bytearray(CONTROL_SIZE)

    def timed(fn: Callable[[], Any], n: int) -> tuple[float, float, float]:
        comm.allgather_byte(1)  # start together
        ts = []
        c0 = time.process_time()
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return _median(ts), (time.process_time() - c0) / n, min(ts)

    mine = {
        "data": timed(lambda: comm.bcast_data(data, CHUNK), reps),
        "small": timed(lambda: comm.bcast_data(little, small), reps),
        "ctrl": timed(lambda: comm.bcast_control(ctrl), reps),
        "allgather": timed(lambda: comm.allgather_byte(1), max(5, reps // 4)),
    }
    print("PROBE " + json.dumps(mine), flush=True)  # every rank: collected from each node
    comm.close()


def _probe(n: int, reps: int, small: int, env: dict[str, str]) -> dict[str, Any]:
    _, nodes = _simrun(n, [PY, __file__, "--probe-mpi", str(reps), str(small)], env)
    ranks = [json.loads([ln for ln in nd.output.splitlines() if ln.startswith("PROBE ")][-1][6:])
             for nd in nodes]
    # the collective ends when its last rank does: (median, CPU per call of each rank, least)
    return {k: (max(r[k][0] for r in ranks), [r[k][1] for r in ranks],
                max(r[k][2] for r in ranks))
            for k in ("data", "small", "ctrl", "allgather")}


def extract_probe(path: str, start: float, seconds: float) -> None:
    """One simulated node of the concurrency probe: from wall-clock time ``start`` on, extract
    ``path`` into the node's /tmp and remove it again, for ``seconds``; prints each one's
    wall and CPU seconds."""
    time.sleep(max(0.0, start - time.time()))
    walls: list[float] = []
    cpus: list[float] = []
    while time.time() < start + seconds or len(walls) < 2:
        t0, c0 = time.perf_counter(), _cpu_self()
        dest = tempfile.mkdtemp(prefix="ezpz-model-conc-", dir="/tmp")
        extract_file(path, dest)
        shutil.rmtree(dest)
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_self() - c0)
    print("TIMES " + json.dumps({"wall": walls, "cpu": cpus}), flush=True)


def _extract_time(path: Path, k: int, seconds: float) -> tuple[float, float]:
    """(mean wall s, least CPU s) per extraction (and removal) of ``path`` when k simulated
    nodes (own /tmp each) do it at once, all starting together after their start-up."""
    start = time.time() + 1.0 + 0.25 * k
    _, nodes = _simrun(k, [PY, __file__, "--probe-extract", str(path), str(start), str(seconds)],
                       {})
    per = [json.loads([ln for ln in nd.output.splitlines() if ln.startswith("TIMES ")][-1][6:])
           for nd in nodes]
    return (statistics.mean(statistics.mean(x["wall"]) for x in per),
            min(min(x["cpu"]) for x in per))


def _concurrency(path: Path, quiet: bool) -> tuple[dict[str, float], float]:
    """The single-node speeds k simulated nodes get at once (k = 1, 2, 4, 8): k times the
    least CPU seconds one extraction needs, over the wall seconds each took; and that CPU."""
    got = {}
    for k in (1, 2, 4, 8):
        got[k] = _extract_time(path, k, 4.0)
        _say(f"    {k} at once: {got[k][0]:.2f} s per extraction (and removal)", quiet)
    cpu = min(c for _w, c in got.values())
    return {str(k): k * cpu / w for k, (w, _c) in got.items()}, cpu


def _worker_modules(archive: Path, work: Path) -> dict[str, Any]:
    """What a real worker run (1 node) imports: -X importtime's module names, split into the
    standard library and the rest (site-packages and ezpz: what a venv on Lustre holds)."""
    from ezpz.config import TransferConfig
    from ezpz.transfer import spec_for

    spec = work / "modules-spec.json"  # started as ezpz-yeet-env starts it
    spec_for(TransferConfig(src=str(archive), dst="/tmp/modules-check")).write(str(spec))
    _, nodes = _simrun(1, [PY, "-X", "importtime", "-m", "ezpz.transfer", "--spec",
                           str(spec), "--run-dir", str(work / "modules-run")],
                       {"EZPZ_LOG_LEVEL": "WARNING"})
    names = {ln.rsplit("|", 1)[1].strip() for ln in nodes[0].output.splitlines()
             if ln.startswith("import time:") and ln.count("|") == 2
             and not ln.rstrip().endswith("imported package")}
    outside = sorted(n for n in names if n.split(".")[0] not in sys.stdlib_module_names
                     and n.split(".")[0] not in ("__main__", "_distutils_hack"))
    tops: dict[str, int] = {}
    for n in outside:
        tops[n.split(".")[0]] = tops.get(n.split(".")[0], 0) + 1
    top = ", ".join(f"{k} {v}" for k, v in sorted(tops.items(), key=lambda kv: -kv[1]))
    return {"all": len(names), "outside": len(outside), "top": top}


def _tiny_archive(root: Path) -> Path:
    import zstandard

    src = root / "tiny"
    src.mkdir()
    (src / "hello.txt").write_text("hello\n")
    out = root / "tiny.tar.zst"
    with open(out, "wb") as fh, zstandard.ZstdCompressor().stream_writer(fh) as zw, \
            tarfile.open(fileobj=zw, mode="w|") as tf:
        tf.add(src, arcname="tiny")
    return out


def measure(args: argparse.Namespace) -> Rates:
    """Every stage rate of the model, measured on this machine (about two minutes)."""
    quiet = args.model_only
    venv = payload.ensure(small=args.payload == "small")
    small = payload.ensure(small=True)
    arch = {c: bench_transfer.archive(venv, c) for c in ("zstd", "gzip")}
    files = int((venv / ".ezpz-bench-complete").read_text().split()[0])
    _say(f"\n== stage rates measured here ({os.cpu_count()} cores, load "
         f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}) ==", quiet)
    _say(f"payload {venv.name}: {files} files; zstd {arch['zstd'].stat().st_size / 1e6:.0f} MB, "
         f"gzip {arch['gzip'].stat().st_size / 1e6:.0f} MB", quiet)

    read_cold = _read_rate(arch["zstd"], cold=True)
    read_cache = max(_read_rate(arch["zstd"], cold=False) for _ in range(2))
    _say(f"  read, page cache          {gb(read_cache)}  (16 MiB reads, as the reader thread)", quiet)
    _say(f"  read, cold-ish            {gb(read_cold)}  (after posix_fadvise DONTNEED; the VM's "
         "host may still cache it)", quiet)
    hash_Bps = _hash_rate()
    _say(f"  xxh3-128                  {gb(hash_Bps)}", quiet)

    work = Path(tempfile.mkdtemp(prefix="ezpz-model-", dir=SHM))
    try:
        # every CPU-bound stage: the best of 3 (the machine is shared; a VM's CPU seconds
        # grow when the host is busy and when pages of a tmpfs are touched the first time)
        decode: dict[str, float] = {}
        tar_path = work / "payload.tar"
        with open(tar_path, "wb") as sink:
            tar_bytes, cpu = _decode(arch["zstd"], "zstd", sink)
        decode["zstd"] = tar_bytes / min([cpu] + [_decode(arch["zstd"], "zstd")[1]
                                                  for _ in range(2)])
        decode["gzip"] = tar_bytes / min(_decode(arch["gzip"], "gzip")[1] for _ in range(3))
        for c in ("zstd", "gzip"):
            _say(f"  decode {c:<4}               {gb(decode[c])} of tar output per CPU s "
                 f"({tar_bytes / decode[c]:.2f} CPU s for the payload's {tar_bytes / 1e9:.2f} GB)",
                 quiet)

        big = work / "big.tar"
        big_bytes = _big_files_tar(big, 4, 128 << 20)
        byte_s = _best_extract(big, str(work))[0] / big_bytes
        cpu_pay, rep, dest = _best_extract(tar_path, str(work))
        file_s = max(0.0, cpu_pay - tar_bytes * byte_s) / rep.files
        _say(f"  extract, bytes            {gb(1 / byte_s)} per CPU s (4 x 128 MiB files into a "
             "tmpfs, ezpz.extract.extract_file)", quiet)
        _say(f"  extract, per file         {file_s * 1e6:.1f} CPU us per file, {1 / file_s:,.0f} "
             f"files/s (the payload: {rep.files} files, {rep.members} members, "
             f"{cpu_pay:.2f} CPU s in all)", quiet)

        top = os.path.join(dest, rep.top or "")
        logging.getLogger("ezpz").setLevel(logging.WARNING)  # no "relocated ..." line here
        t0 = time.perf_counter()
        rrep = relocate(top, new_prefix=os.path.join("/tmp", venv.name))
        relocate_s = time.perf_counter() - t0
        _say(f"  relocate                  {relocate_s:.2f} s ({rrep.files_rewritten} files "
             "rewritten)", quiet)
        members = rep.members
        del rep
    finally:
        shutil.rmtree(work, ignore_errors=True)

    plan_s = _median([_timed(lambda: make_plan(str(arch["zstd"]), decompress=True))
                      for _ in range(3)])
    status_s = _status_json_s()
    _say(f"  plan on rank 0            {plan_s * 1e3:.1f} ms (archive identity, manifest)", quiet)
    _say(f"  one node's status         {status_s * 1e6:.1f} us (JSON encode + decode; rank 0 "
         "decodes one per node)", quiet)

    _say("  collectives (the worker's ezpz.comm calls between simulated nodes, MPICH wheel):",
         quiet)
    # the worker's case at 2 nodes; one ring step polled without sleeping (2 ranks, so none
    # spins on a core another needs); the wait per step of each kind of poll (ring, 4 ranks:
    # lg 4 + 3 steps for a broadcast, 3 for an allgather)
    two = _probe(2, 20, 64 << 10, {})
    busy = _probe(2, 20, 64 << 10, dict(RING, EZPZ_BCAST_POLL="0"))
    ring = _probe(4, 20, 64 << 10, RING)
    step_busy = busy["small"][2] / (log2c(2) + 1)  # the least: spinning suffers most from load
    bsteps = log2c(4) + 3
    gate_data = max(0.0, ring["small"][0] / bsteps - step_busy)
    gate_ctrl = max(0.0, ring["ctrl"][0] / bsteps - step_busy)
    gate_ag = max(0.0, ring["allgather"][0] / 3 - step_busy)
    data_chunk = two["data"][0]
    copy_Bps = CHUNK / max(1e-6, data_chunk - gate_data - step_busy)
    _say(f"    2 nodes: control block {two['ctrl'][0] * 1e3:.2f} ms, 16 MiB chunk "
         f"{data_chunk * 1e3:.2f} ms (CPU per chunk: root {two['data'][1][0] * 1e3:.2f} ms, "
         f"leader {two['data'][1][1] * 1e3:.2f} ms)", quiet)
    _say(f"    wait per algorithm step (ring forced, 4 nodes; polled minus not polled "
         f"{step_busy * 1e6:.0f} us): data {gate_data * 1e3:.2f} ms, control "
         f"{gate_ctrl * 1e3:.2f} ms, allgather {gate_ag * 1e3:.1f} ms; one "
         f"allgather at 2 nodes (1 step): {two['allgather'][0] * 1e3:.1f} ms", quiet)

    python_s, _ = bench_transfer.startup(["-c", "pass"])
    help_s, _ = bench_transfer.startup(["-m", "ezpz.transfer", "--help"])
    init = {}
    for n in (1, 2, 4):
        init[str(n)] = min(_simrun(n, [PY, "-c", "from mpi4py import MPI; "
                                       "MPI.COMM_WORLD.Barrier()"], {})[0] for _ in range(3))
    fixed = {}
    tiny_root = Path(tempfile.mkdtemp(prefix="ezpz-model-tiny-", dir="/var/tmp"))
    try:
        tiny = _tiny_archive(tiny_root)
        worker_cpu = math.inf
        for n in (1, 2, 4):  # the least of 3: the machine is shared
            got = [bench_transfer.run_ezpz(n, tiny, "16MiB") for _ in range(3)]
            fixed[str(n)] = min(w for w, _c, _res in got)
            if n == 1:
                worker_cpu = min(c for _w, c, _res in got)
        modules = _worker_modules(tiny, tiny_root)
    finally:
        shutil.rmtree(tiny_root, ignore_errors=True)
    _say(f"  start-up: python -c pass {python_s:.2f} s; python -m ezpz.transfer --help "
         f"{help_s:.2f} s; mpiexec + simulated node + mpi4py init, 1/2/4 ranks: "
         + "/".join(f"{init[k]:.2f}" for k in ("1", "2", "4")) + " s; the worker on a 1-file "
         "archive, 1/2/4 nodes: " + "/".join(f"{fixed[k]:.2f}" for k in ("1", "2", "4")) + " s; "
         f"it imports {modules['all']} modules, {modules['outside']} from outside the standard "
         f"library ({modules['top']})", quiet)
    _say("  parallel throughput (1, 2, 4, 8 simulated nodes extracting the small payload at "
         "once):", quiet)
    thr, probe_cpu = _concurrency(bench_transfer.archive(small, "zstd"), quiet)
    _say("    single-node speeds delivered: "
         + ", ".join(f"{k} -> {v:.2f}" for k, v in thr.items()), quiet)

    return Rates(
        machine=os.uname().nodename, cores=os.cpu_count() or 1,
        load=[round(x, 2) for x in os.getloadavg()], payload=venv.name, files=files,
        members=members, tar_bytes=tar_bytes,
        archive_bytes={c: p.stat().st_size for c, p in arch.items()},
        read_cache_Bps=read_cache, read_cold_Bps=read_cold, hash_Bps=hash_Bps,
        decode_Bps=decode, extract_byte_s=byte_s, extract_file_s=file_s,
        extract_payload_s=cpu_pay, relocate_s=relocate_s,
        relocate_files=rrep.files_rewritten, plan_s=plan_s, status_json_s=status_s,
        ctrl_chunk_s=two["ctrl"][0], data_chunk_s=data_chunk,
        data_cpu_root_s=two["data"][1][0], data_cpu_leader_s=two["data"][1][1],
        step_busy_s=step_busy, copy_Bps=copy_Bps, gate_data_s=gate_data,
        gate_ctrl_s=gate_ctrl, gate_allgather_s=gate_ag, allgather_short_s=two["allgather"][0],
        python_s=python_s, help_s=help_s,
        mpi_init_s=init, worker_fixed_s=fixed, throughput=thr, probe_cpu_s=probe_cpu,
        worker_cpu_s=worker_cpu,
        worker_modules=modules["outside"])


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------
@dataclass
class Prediction:
    nodes: int
    algorithm: str  # MPICH's algorithm for one chunk
    startup_s: float
    storm_s: float  # part of start-up: the worker's imports from the shared filesystem
    broadcast_s: float  # the whole archive at network speed, collectives not gated
    node_s: float  # the slowest node's read/decode/extract (decoupled)
    tail_s: float  # relocation
    decoupled_s: float
    lockstep_s: float
    today_s: float  # lockstep, with the worker's sleep-polled collectives
    today_tree_s: float  # the same with MPICH told to use trees (binomial Ibcast, Bruck allgather)


def model(m: Machine, r: Rates, p: int, archive_bytes: int, files: int, codec: str,
          worker_env: str, node_cv: float = NODE_CV, chunk_cv: float = CHUNK_CV) -> Prediction:
    """Predicted seconds to deliver the archive to p nodes of machine m (see the docstring)."""
    speed = m.core_speed
    a = archive_bytes
    d = a * r.ratio(codec)
    nch = max(1, math.ceil(a / CHUNK))
    chunk = min(CHUNK, a)
    # one node: decode thread, extraction thread, main thread receiving (RDMA) and hashing
    decode = d / r.decode_Bps[codec] / speed
    extract = (d * r.extract_byte_s + files * r.extract_file_s) / speed
    recv = a / r.hash_Bps / speed
    node = max(decode, extract, recv)
    fill = (decode + extract) / nch  # the first chunk passes through every stage in turn
    z = expected_max_z(p)
    slow_node = node * (1 + z * math.hypot(node_cv, chunk_cv / math.sqrt(nch))) + fill
    slow_chunk = node / nch * (1 + z * math.hypot(node_cv, chunk_cv / math.sqrt(DEPTH)))

    alg = ibcast_algorithm(p, chunk)[0]
    lg = log2c(p)

    def bcast_chunk(gated: bool, tree: bool = False) -> float:
        _, steps, moved = (("", lg, chunk * lg) if tree else ibcast_algorithm(p, chunk))
        _, csteps, cmoved = ibcast_algorithm(p, CONTROL_SIZE)  # binomial at any p
        return (collective_s(steps, moved, m.alpha, m.bw, r.gate_data_s if gated else 0.0)
                + collective_s(csteps, cmoved, m.alpha, m.bw, r.gate_ctrl_s if gated else 0.0))

    read_chunk = chunk / m.read_Bps  # the reader thread, overlapped with the broadcast

    def control(gated: bool, tree: bool = False) -> float:
        # two root broadcasts (run name, plan), three 1-byte allgathers (dst checks, actions),
        # then rank 0 decodes one status mail per node
        _, gsteps, gmoved = (("", lg, GATHER_BYTES * (p - 1)) if tree
                             else iallgather_algorithm(p, GATHER_BYTES))
        one = collective_s(gsteps, gmoved, m.alpha, m.bw, r.gate_allgather_s if gated else 0.0)
        _, bsteps, bmoved = ibcast_algorithm(p, OBJ_BYTES)
        obj = collective_s(bsteps, bmoved, m.alpha, m.bw, r.gate_ctrl_s if gated else 0.0)
        return 3 * one + 2 * obj + p * r.status_json_s / speed

    storm = (IMPORT_STORM[0] * p / IMPORT_STORM[1] * r.worker_modules / STORM_MODULES
             if worker_env == "lustre" else 0.0)
    wireup = 3 * log2c(p) * m.alpha  # host-name allgather and two communicator splits
    startup = m.launch_s + r.worker_fixed_s["1"] / speed + r.plan_s / speed + wireup + storm
    tail = r.relocate_s * files / r.files / speed
    broadcast = nch * max(read_chunk, bcast_chunk(False)) + read_chunk

    def lockstep(gated: bool, tree: bool = False) -> float:
        per = max(read_chunk, bcast_chunk(gated, tree), slow_chunk)
        return startup + control(gated, tree) + nch * per + read_chunk + fill + tail

    return Prediction(
        nodes=p, algorithm=alg, startup_s=startup, storm_s=storm, broadcast_s=broadcast,
        node_s=slow_node, tail_s=tail,
        decoupled_s=startup + control(False) + max(broadcast, slow_node) + tail,
        lockstep_s=lockstep(False), today_s=lockstep(True), today_tree_s=lockstep(True, True))


@dataclass
class Payload:
    name: str
    archive: Path  # zstd
    archive_bytes: int
    tar_bytes: int
    files: int


def payload_facts(which: str) -> Payload:
    venv = payload.ensure(small=which == "small")
    arch = bench_transfer.archive(venv, "zstd")
    files = int((venv / ".ezpz-bench-complete").read_text().split()[0])
    return Payload(venv.name, arch, arch.stat().st_size, _decode(arch, "zstd")[0], files)


def predict_here(r: Rates, n: int, v: Payload, speed: float | None = None
                 ) -> dict[str, float]:
    """The worker as it is today delivering payload v to n simulated nodes on this machine.

    Every CPU-bound term is the sum of the n nodes' CPU seconds (start-up, decode, extraction,
    hashing, broadcast copies, relocation) divided by ``speed``: the single-node speeds the
    machine gives n simulated nodes at once (measured just before the run; default the n-node
    throughput measured with the rates). Added: the waits of the sleep-polled collectives.
    """
    s_n = r.eff(n) if speed is None else speed
    a = v.archive_bytes
    nch = max(1, math.ceil(a / CHUNK))
    decode = v.tar_bytes / r.decode_Bps["zstd"]
    extract = v.tar_bytes * r.extract_byte_s + v.files * r.extract_file_s
    hash_s = a / r.hash_Bps
    read = a / r.read_cache_Bps
    recv = nch * r.data_cpu_leader_s if n > 1 else 0.0
    send = nch * r.data_cpu_root_s if n > 1 else 0.0
    root = decode + extract + read + hash_s + send  # the reader hashes on rank 0
    leader = decode + extract + hash_s + recv
    work = root + (n - 1) * leader
    stream = max(decode, extract, work / s_n)
    if n > 1:
        _, steps, moved = ibcast_algorithm(n, min(CHUNK, a))
        _, csteps, _ = ibcast_algorithm(n, CONTROL_SIZE)
        per_chunk = (steps * (r.step_busy_s + r.gate_data_s) + moved / r.copy_Bps
                     + csteps * (r.step_busy_s + r.gate_ctrl_s))
        stream = max(stream, nch * per_chunk)
    fixed = fixed_here(r, n, speed=s_n)
    relocate_s = r.relocate_s * v.files / r.files * n / s_n
    return {"fixed": fixed, "plan": r.plan_s, "stream": stream, "relocate": relocate_s,
            "total": fixed + r.plan_s + stream + relocate_s, "stream_cpu": work}


def fixed_here(r: Rates, n: int, tree: bool = False, speed: float | None = None) -> float:
    """The worker's cost on n simulated nodes apart from the archive: n start-ups (the CPU
    seconds of the whole worker on a 1-file archive at 1 node, launch and MPI start-up
    included) sharing the machine at ``speed`` (default: the n-node throughput measured with
    the rates), and the three status allgathers (MPICH's steps for n ranks, each waiting as
    measured)."""
    s_n = r.eff(n) if speed is None else speed
    gsteps = log2c(n) if tree else iallgather_algorithm(n, GATHER_BYTES)[1]
    # a few steps (lg n here) wait like the 2-node call; a long ring waits the steady gate
    per_step = r.allgather_short_s if gsteps <= 4 else r.step_busy_s + r.gate_allgather_s
    return n * r.worker_cpu_s / s_n + 3 * gsteps * per_step


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------
def validate(r: Rates, args: argparse.Namespace) -> None:
    v = payload_facts(args.validate_payload)
    arch = v.archive
    print("\n== validation: the real transfer on simulated nodes (this machine) ==")
    print(f"python -m ezpz.transfer under the MPICH wheel's mpiexec, one simulated node per rank; "
          f"{v.name} (zstd, {v.archive_bytes / 1e6:.0f} MB, {v.tar_bytes / 1e6:.0f} MB of tar, "
          f"{v.files} files), chunk_size {DEFAULTS.chunk_size}, depth {DEPTH}; median of "
          f"{args.repeat} alternating runs; load average before: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("model assumes: the n nodes' CPU seconds (start-up as the 1-file run at 1 node, "
          "decode, extraction, hashing, broadcast copies, relocation; measured above, the "
          "least of 3 where the machine's other load could inflate them) run at eff(n) "
          "single-node speeds: n x C / T(n), T(n) the wall seconds per extraction of the small "
          "payload when n simulated nodes did it at once just before and just after the run "
          "(mean), C the least CPU seconds one such extraction took (the machine is shared, so "
          "what n nodes get is measured again around every run; predicted: the median of the "
          "runs' predictions); every collective costed with MPICH's algorithm for that many "
          "ranks, each step waiting the measured gate of its poll")
    print("\nfixed cost (1-file archive): " + ", ".join(
        f"{n} nodes measured {r.worker_fixed_s[str(n)]:.2f} s / model {fixed_here(r, n):.2f} s"
        for n in (1, 2, 4)))
    counts = (1, 2, 4, 8)
    runs: dict[int, list[tuple[float, float, dict]]] = {n: [] for n in counts}
    effs: dict[int, list[float]] = {n: [] for n in counts}
    probe = bench_transfer.archive(payload.ensure(small=True), "zstd")
    for i in range(args.repeat):  # alternate, so that the machine's other load spreads out
        for n in counts:
            # this machine is shared: what n simulated nodes get of it, just before and after
            before = _extract_time(probe, n, 1.5)[0]
            runs[n].append(bench_transfer.run_ezpz(n, arch, DEFAULTS.chunk_size))
            after = _extract_time(probe, n, 1.5)[0]
            effs[n].append(n * r.probe_cpu_s / ((before + after) / 2))
            _say(f"    run {i + 1}/{args.repeat}, {n} nodes: {runs[n][-1][0]:.2f} s ({n} "
                 f"extracting before/after: {before:.2f}/{after:.2f} s each, eff({n}) "
                 f"{effs[n][-1]:.2f})", False)

    print("\n| nodes | predicted s | measured s | error | model: fixed + plan + stream + relocate "
          "| eff(n) | rank 0 extract s (measured) | stream CPU s model / all CPU s measured |")
    print("|---:|---:|---:|---:|---|---:|---:|---|")
    for n in counts:
        wall = _median([w for w, _c, _res in runs[n]])
        cpu = _median([c for _w, c, _res in runs[n]])
        ext = _median([res["phases"]["extract"] for _w, _c, res in runs[n]])
        eff = _median(effs[n])
        pr = predict_here(r, n, v, eff)
        pr["total"] = _median([predict_here(r, n, v, e)["total"] for e in effs[n]])
        err = (pr["total"] - wall) / wall
        print(f"| {n} | {pr['total']:.2f} | {wall:.2f} | {err:+.0%} | {pr['fixed']:.2f} + "
              f"{pr['plan']:.2f} + {pr['stream']:.2f} + {pr['relocate']:.2f} | {eff:.2f} | "
              f"{ext:.2f} | "
              f"{pr['stream_cpu']:.1f} / {cpu:.1f} |", flush=True)
    print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


TREE = {"MPIR_CVAR_IALLGATHER_INTRA_ALGORITHM": "sched_brucks",
        "MPIR_CVAR_IBCAST_INTRA_ALGORITHM": "sched_binomial"}
#: The worker as it was before it chose its algorithms and bounded its control polls:
#: MPICH's own choice ("auto") and sleeps of up to 50 ms between tests.
BEFORE = {**{k: "auto" for k in TREE}, "EZPZ_CONTROL_POLL": "0.05"}


def gate_check(r: Rates, n: int, repeat: int) -> None:
    """The worker on n simulated nodes with a 1-file archive: as it was (MPICH's algorithms,
    50 ms control polls) vs as it is (trees, 2 ms control polls), alternating; the model's
    fixed cost beside each."""
    print(f"\n== the wait per step, seen on the real worker: {n} simulated nodes, 1-file "
          f"archive, {' '.join(f'{k}={v}' for k, v in BEFORE.items())} (before) vs the "
          f"worker's defaults ({' '.join(f'{k}={v}' for k, v in TREE.items())}, "
          "EZPZ_CONTROL_POLL=0.002) (median of "
          f"{repeat} alternating runs; load average before: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()) + ") ==")
    root = Path(tempfile.mkdtemp(prefix="ezpz-model-gates-", dir="/var/tmp"))
    times: dict[str, list[float]] = {"before": [], "now": []}
    try:
        tiny = _tiny_archive(root)
        for _ in range(repeat):
            for kind, env in (("before", BEFORE), ("now", {})):
                times[kind].append(bench_transfer.run_ezpz(n, tiny, DEFAULTS.chunk_size,
                                                           env_extra=env)[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    d, t = _median(times["before"]), _median(times["now"])
    print(f"allgather of {n} x {GATHER_BYTES} B: {iallgather_algorithm(n, GATHER_BYTES)[0]} "
          f"({iallgather_algorithm(n, GATHER_BYTES)[1]} steps) by MPICH's choice, Bruck "
          f"({log2c(n)} steps) with the worker's defaults")
    print(f"before {d:.2f} s (model {fixed_here(r, n):.2f} s), now {t:.2f} s (model "
          f"{fixed_here(r, n, tree=True):.2f} s): before/now {d / t:.2f}x")


def print_model(r: Rates, args: argparse.Namespace) -> Prediction:
    a, files, codec = args.archive_bytes, args.files, args.codec
    print(f"\n== model: {a / 1e9:.2f} GB {codec} archive ({a * r.ratio(codec) / 1e9:.1f} GB "
          f"of tar at this payload's ratio {r.ratio(codec):.2f}), {files:,} files, chunk_size "
          f"{DEFAULTS.chunk_size}, depth {DEPTH} ==")
    print("published parameters (sources in MACHINES): "
          + "; ".join(f"{m.name}: {m.max_nodes} nodes, {m.cores} cores and {m.nics} x "
                      f"{m.nic_Bps / 1e9:.0f} GB/s Slingshot-11 NICs per node, MPI alpha "
                      f"{m.alpha * 1e6:.1f} us, {m.bw / 1e9:.0f} GB/s for one rank, archive read "
                      f"{m.read_Bps / 1e9:.1f} GB/s, launch {m.launch_s:.1f} s, {m.tmp}"
                      for m in MACHINES.values()))
    print(f"measured here: decode {gb(r.decode_Bps[codec])}, extraction "
          f"{r.extract_file_s * 1e6:.1f} us/file + {gb(1 / r.extract_byte_s)}, xxh3 "
          f"{gb(r.hash_Bps)}, worker start-up {r.worker_fixed_s['1']:.2f} s, relocation "
          f"{r.relocate_s:.2f} s per {r.files} files, gates per step {r.gate_data_s * 1e3:.2f} ms "
          f"(data), {r.gate_ctrl_s * 1e3:.2f} ms (control), {r.gate_allgather_s * 1e3:.0f} ms "
          "(allgather)")
    storm = ("every node imports the worker's " f"{r.worker_modules} non-stdlib modules from "
             f"the shared filesystem: Copper's {IMPORT_STORM[0]:.0f} s for mpi4py "
             f"({STORM_MODULES} modules) at {IMPORT_STORM[1]} processes, scaled by processes x "
             "modules" if args.worker_env == "lustre"
             else "no import storm (the worker's Python node-local or cached)")
    print(f"assumes: one rank per node on one NIC; per-core speed as here; {storm}; node-to-node "
          f"spread {args.node_cv:.0%}, chunk-to-chunk {args.chunk_cv:.0%} (slowest of p: "
          "expected maximum of normals); MPICH's generic algorithm selection, no asynchronous "
          "progress thread; decoupled/lockstep: collectives progressed without sleeping between "
          "polls; 'rings, polled': lockstep with sleep-polled collectives (the measured gates) "
          "and MPICH's own algorithms (rings at scale); 'trees, polled': the same with the "
          "algorithms the worker sets, MPIR_CVAR_IBCAST_INTRA_ALGORITHM=sched_binomial and "
          "MPIR_CVAR_IALLGATHER_INTRA_ALGORITHM=sched_brucks (lg p steps instead of p - 1)")
    head = None
    for key, m in MACHINES.items():
        print(f"\n{m.name}:\n")
        print("| nodes | 16 MiB chunk: MPICH algorithm | start-up s (imports) | broadcast s | "
              "slowest node s | decoupled s | lockstep s | lockstep, rings, polled s | "
              "lockstep, trees, polled s |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        counts = [2 ** k for k in range(3, 14)]
        if m.max_nodes < counts[-1]:
            counts = [c for c in counts if c < m.max_nodes] + [m.max_nodes]
        for p in counts:
            pr = model(m, r, p, a, files, codec, args.worker_env, args.node_cv, args.chunk_cv)
            print(f"| {p} | {pr.algorithm} | {pr.startup_s:.1f} ({pr.storm_s:.1f}) | "
                  f"{pr.broadcast_s:.1f} | {pr.node_s:.1f} | **{pr.decoupled_s:.1f}** | "
                  f"{pr.lockstep_s:.1f} | {pr.today_s:.0f} | {pr.today_tree_s:.1f} |")
            if key == "aurora" and p == 4096:
                head = pr
        if m.max_nodes < 8192:
            print(f"\n({m.name} has {m.max_nodes} nodes; the table stops there. Its published "
                  "network is Aurora's, one NIC per rank, and its read rate and launch time are "
                  "assumed equal, so the rows match Aurora's.)")
    assert head is not None
    return head


def _usage(msg: str) -> None:
    print(f"scale_model.py: {msg}", file=sys.stderr)
    sys.exit(2)


def _load_rates(path: Path) -> Rates | None:
    try:
        return Rates(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive-bytes", default="5GB", help="archive size (default 5GB)")
    ap.add_argument("--files", type=int, default=100_000, help="files in the archive")
    ap.add_argument("--codec", choices=("zstd", "gzip"), default="zstd")
    ap.add_argument("--worker-env", choices=("lustre", "local"), default="lustre",
                    help="where every node starts the worker's Python from (lustre: add the "
                         "published import storm; local: node-local or cached)")
    ap.add_argument("--node-cv", type=float, default=NODE_CV)
    ap.add_argument("--chunk-cv", type=float, default=CHUNK_CV)
    ap.add_argument("--payload", choices=("big", "small"), default="big",
                    help="the benchmark payload whose stage rates are measured "
                         "(benchmarks/payload.py; default big)")
    ap.add_argument("--validate-payload", choices=("big", "small"), default="small",
                    help="the payload transferred in the validation (default small: 8 simulated "
                         "nodes of the big one hold 12.5 GB of trees in this machine's memory)")
    ap.add_argument("--repeat", type=int, default=3, help="validation runs per node count "
                    "(median; default 3)")
    ap.add_argument("--no-validate", action="store_true", help="skip the runs on simulated nodes")
    ap.add_argument("--gate-check", type=int, metavar="NODES", default=0,
                    help="also run the worker on NODES simulated nodes (e.g. 64) with a 1-file "
                         "archive, MPICH's default algorithms vs trees, to see the wait per step")
    ap.add_argument("--model-only", action="store_true",
                    help="print only the model (stage rates from the last run's cache, "
                         "measured quietly when there is none)")
    ap.add_argument("--rates", type=Path, default=RATES_CACHE, help=argparse.SUPPRESS)
    ap.add_argument("--probe-mpi", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--probe-extract", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe_mpi:
        mpi_probe(*args.probe_mpi)
        return
    if args.probe_extract:
        extract_probe(args.probe_extract[0], float(args.probe_extract[1]),
                      float(args.probe_extract[2]))
        return
    try:
        args.archive_bytes = parse_size(args.archive_bytes, "--archive-bytes")
    except Exception as exc:  # noqa: BLE001 - ezpz's ConfigError: one line
        _usage(str(exc))
    for key, value in (("--archive-bytes", args.archive_bytes), ("--files", args.files),
                       ("--repeat", args.repeat)):
        if value <= 0:
            _usage(f"{key}: must be positive, got {value}")
    if args.gate_check < 0 or args.gate_check == 1:
        _usage(f"--gate-check: a number of nodes of at least 2 is needed, got {args.gate_check}")
    for key, value in (("--node-cv", args.node_cv), ("--chunk-cv", args.chunk_cv)):
        if not 0 <= value < 1:
            _usage(f"{key}: a fraction in [0, 1) is needed, got {value}")

    rates = _load_rates(args.rates) if args.model_only else None
    if rates is None:
        ok, why = simnodes.namespaces_available()
        if not ok:
            raise SystemExit(f"scale_model.py: measuring needs simulated nodes: {why}")
        if not args.model_only:
            print(f"command: python benchmarks/scale_model.py {' '.join(sys.argv[1:])}".rstrip())
        rates = measure(args)
        args.rates.parent.mkdir(parents=True, exist_ok=True)
        args.rates.write_text(json.dumps(asdict(rates), indent=1))
    if not args.model_only and not args.no_validate:
        validate(rates, args)
    if not args.model_only and args.gate_check:
        gate_check(rates, args.gate_check, args.repeat)
    head = print_model(rates, args)
    print(f"\nprediction, decoupled design: {args.archive_bytes / 1e9:.1f} GB {args.codec} "
          f"archive, {args.files:,} files -> 4096 nodes of Aurora: {head.decoupled_s:.0f} s")


if __name__ == "__main__":
    main()
