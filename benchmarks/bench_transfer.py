"""Benchmark the transfer worker against the floor, on simulated nodes (needs root).

    python benchmarks/bench_transfer.py              # full: >= 1 GB venv, N=1,2,4, every kind
    python benchmarks/bench_transfer.py --quick      # small payload, one repeat: checks it runs
    python benchmarks/bench_transfer.py --parts main --nodes 4 --kinds zstd transfer.depth=2

Archive kinds (the same venv each time, cached under the payload cache):

- ``ezpz``: made by ezpz-tar-env (zstd, manifest first, independent frames);
- ``zstd``: ``tar -cf - <venv> | zstd -T0 -3``: one zstd stream, no manifest (what most
  existing archives are);
- ``gzip``: ``tar -czf``: single-member gzip, no manifest;
- ``ezpz-gzip`` (not in the default set): made by ezpz-tar-env with ``archive.codec=gzip``;
- ``zstd-inside`` (not in the default set): ``tar -C <venv> -cf - . | zstd -T0 -3``, made
  from inside the environment (no top directory).

(a) ezpz's transfer (``python -m ezpz.transfer``, relocation included) to N simulated nodes;
(b) the floor: every node extracts its own local copy of the same archive at the same time
(``zstd -dc | tar -x`` or ``tar -xzf``; no transfer, no relocation). Runs alternate floor /
ezpz and medians of ``--repeat`` runs are reported: wall time of the whole run, the ratio
ezpz/floor against its target, CPU seconds of every process of each side (simulated nodes
share the machine's cores, so when there are more nodes than cores the ratio of wall times
tends to the ratio of CPU seconds), rank 0's extract and relocate phases, and the peak RSS of
every rank (VmHWM, from results.json). Other parts: ``threads`` (N=1, transfer.threads=1 vs
auto), ``sweep`` (chunk_size), ``extractor`` (engines), ``rss`` (two payload sizes),
``startup`` (the worker's ``--help``), ``around`` (start-up and teardown: a two-file archive
on N nodes against the bare interpreter, split by the nodes' timelines), ``versions`` (another checkout's worker as baseline).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
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
#: Archive kinds: (floor codec, how the archive is made).
KINDS = {
    "ezpz": ("zstd", "ezpz-tar-env (zstd)"),
    "zstd": ("zstd", "tar -cf - | zstd -T0 -3"),
    "gzip": ("gzip", "tar -czf"),
    "ezpz-gzip": ("gzip", "ezpz-tar-env archive.codec=gzip"),
    "zstd-inside": ("zstd", "tar -C env -cf - . | zstd -T0 -3"),
}
#: ezpz/floor targets: N=1 (ezpz-tar-env archives, plain archives), N >= 2.
TARGET_N1_EZPZ, TARGET_N1_PLAIN, TARGET_MULTI = 0.75, 0.90, 1.10


# --------------------------------------------------------------------------------------
# archives
# --------------------------------------------------------------------------------------
def _packer_tag() -> str:
    """A digest of the packer's code: an ezpz-made archive is rebuilt when the code that
    wrote it changed (other checkouts keep their own files)."""
    src = HERE.parent / "src" / "ezpz"
    h = hashlib.sha1()
    for p in sorted([*(src / "pack").glob("*.py"), src / "formats" / "tarheader.py",
                     src / "formats" / "manifest.py"]):
        h.update(p.read_bytes())
    return h.hexdigest()[:10]


def archive(venv: Path, kind: str) -> Path:
    """The payload packed as ``kind`` (cached; ezpz kinds per version of the packer)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    codec = KINDS[kind][0]
    suffix = {"zstd": ".tar.zst", "gzip": ".tar.gz"}[codec]
    name = f"{venv.name}.ezpz-{_packer_tag()}" if kind.startswith("ezpz") else \
        f"{venv.name}.inside" if kind.endswith("-inside") else f"{venv.name}.plain"
    out = CACHE / (name + suffix)
    stamp = (venv / ".ezpz-bench-complete").stat().st_mtime
    if out.exists() and out.stat().st_mtime > stamp:
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    print(f"[bench] making the {kind} archive {out.name} (cached)", file=sys.stderr, flush=True)
    try:
        if kind.startswith("ezpz"):
            from ezpz.pack import pack

            pack(prefix=str(venv), path=str(tmp), codec=codec, overwrite=True)
        elif kind in ("zstd", "zstd-inside"):
            what = ["-C", str(venv), "."] if kind == "zstd-inside" else \
                ["-C", str(venv.parent), venv.name]
            tar = subprocess.Popen(["tar", "-cf", "-", *what], stdout=subprocess.PIPE)
            subprocess.run(["zstd", "-q", "-T0", "-3", "-f", "-o", str(tmp)], stdin=tar.stdout,
                           check=True)
            tar.stdout.close()  # type: ignore[union-attr]
            if tar.wait():
                raise SystemExit("tar failed")
        else:
            subprocess.run(["tar", "-C", str(venv.parent), "-czf", str(tmp), venv.name],
                           check=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
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


#: (start, end) of the last simulated run, seconds since the epoch.
_last_span: list[float] = []


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
        _last_span[:] = [time.time()]
        p = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        _last_span.append(time.time())
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
    """This checkout's worker started as ezpz-yeet-env starts it (``--spec``); another
    checkout's (``python``) with a config file it resolves itself."""
    work = Path(tempfile.mkdtemp(prefix="ezpz-bench-", dir="/var/tmp"))
    try:
        if python == PY:
            import yaml

            from ezpz.config import TransferConfig
            from ezpz.transfer import spec_for

            given = {k.removeprefix("transfer."): yaml.safe_load(v)
                     for k, _, v in (o.partition("=") for o in extra)}
            spec = spec_for(TransferConfig(src=str(path), chunk_size=chunk, extractor=engine,
                                           **given))
            spec.write(str(work / "worker-spec.json"))
            argv = [python, "-m", "ezpz.transfer", "--spec", str(work / "worker-spec.json"),
                    "--run-dir", str(work)]
        else:
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


def _around(res: dict) -> str:
    """Where the last run's time went outside the pipeline, from the nodes' timelines."""
    t0, t1 = _last_span
    tl = [p["timeline"] for p in res["per_node"]]
    if not all("start" in x for x in tl):
        return "(no timeline)"
    return (f"launch->start {min(x['start'] for x in tl) - t0:.2f} s, start->comm "
            f"{max(x['comm'] - x['start'] for x in tl):.2f} s, extract_end->done "
            f"{max(x['done'] - x['extract_end'] for x in tl):.2f} s, done->exit "
            f"{t1 - max(x['done'] for x in tl):.2f} s")


def _tiny_archive(where: Path) -> Path:
    """A venv-like plain tar of two small files: delivering it is all start-up and teardown."""
    env = where / "tinyenv"
    (env / "bin").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (env / "bin" / "activate").write_text(f"VIRTUAL_ENV='{env}'\nexport VIRTUAL_ENV\n")
    subprocess.run(["tar", "-C", str(where), "-cf", str(where / "tiny.tar"), env.name],
                   check=True)
    return where / "tiny.tar"


def _import_seconds(code: str) -> float:
    """Median wall seconds of ``code`` in a fresh interpreter, timed inside it (5 runs)."""
    prog = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    return statistics.median(float(subprocess.run([PY, "-c", prog], capture_output=True,
                                                  text=True, check=True).stdout)
                             for _ in range(5))


def part_around(nodes: list[int], repeat: int, chunk: str, extra: tuple[str, ...]) -> None:
    """What surrounds the pipeline: a two-file archive delivered to N nodes, against the bare
    interpreter started the same way (mpiexec, one simulated node per rank)."""
    imports = _import_seconds("import ezpz.cli.transfer, ezpz.transfer.worker")
    mpi = _import_seconds("from mpi4py import MPI")
    print(f"\nimports in one interpreter (median of 5): ezpz's worker modules {imports:.3f} s; "
          f"mpi4py.MPI (with MPI_Init) {mpi:.3f} s")
    print("\nstart-up and teardown: a two-file plain archive (relocated) delivered to N nodes "
          "vs `python -c pass` on the same simulated nodes, alternating (medians)\n")
    print("| N | bare python s | ezpz s | ezpz - bare s | launch -> process start s | "
          "start -> comm ready s (imports, MPI init) | comm -> done s (the work) | "
          "done -> exit s (gathers, results, finalize) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="ezpz-bench-tiny-", dir="/var/tmp") as d:
        tiny = _tiny_archive(Path(d))
        for n in nodes:
            bare, walls, spans = [], [], []
            for _ in range(repeat):
                bare.append(_sim(n, [PY, "-c", "pass"])[0])
                w, _c, res = run_ezpz(n, tiny, chunk, extra=extra)
                t0, t1 = _last_span
                tl = [p["timeline"] for p in res["per_node"]]
                walls.append(w)
                spans.append((min(x["start"] for x in tl) - t0,
                              max(x["comm"] - x["start"] for x in tl),
                              max(x["done"] for x in tl) - max(x["comm"] for x in tl),
                              t1 - max(x["done"] for x in tl)))
            b, e = statistics.median(bare), statistics.median(walls)
            cols = " | ".join(f"{statistics.median(s[i] for s in spans):.3f}" for i in range(4))
            print(f"| {n} | {b:.3f} | {e:.3f} | {e - b:.3f} | {cols} |", flush=True)


def _rss(res: dict) -> float:
    return max(p["rss_mb"] for p in res["per_node"])


def _target(n: int, kind: str) -> float:
    if n >= 2:
        return TARGET_MULTI
    return TARGET_N1_EZPZ if kind.startswith("ezpz") else TARGET_N1_PLAIN


@dataclasses.dataclass
class Runs:
    """Alternating runs of one configuration: floor and ezpz sides."""

    floor: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    ezpz: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    extract: list[float] = dataclasses.field(default_factory=list)
    relocate: list[float] = dataclasses.field(default_factory=list)
    rss: list[list[float]] = dataclasses.field(default_factory=list)

    @staticmethod
    def med(runs: list[tuple[float, float]], i: int) -> float:
        return statistics.median(r[i] for r in runs)


def part_main(nodes: list[int], kinds: list[str], arch: dict[str, Path], repeat: int,
              chunk: str, extra: tuple[str, ...]) -> None:
    print("\nwall s: the whole mpiexec run; CPU s: user+sys of every process of the run; "
          "extract/relocate s: rank 0's phases; RSS: VmHWM of each rank (medians; RSS: max)\n")
    print("| N | archive | floor s | ezpz s | ezpz/floor | target | floor CPU s | ezpz CPU s "
          "| extract s | relocate s | relocate/extract | peak RSS MB per rank (max) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in nodes:
        for kind in kinds:
            r = Runs()
            for _ in range(repeat):  # alternate
                r.floor.append(run_floor(n, KINDS[kind][0], arch[kind]))
                w, c, res = run_ezpz(n, arch[kind], chunk, extra=extra)
                r.ezpz.append((w, c))
                r.extract.append(res["phases"]["extract"])
                r.relocate.append(res["phases"]["relocate"])
                r.rss.append([p["rss_mb"] for p in res["per_node"]])
                print(f"    run: N={n} {kind}: floor {r.floor[-1][0]:.2f} s "
                      f"({r.floor[-1][1]:.1f} CPU s), ezpz {w:.2f} s ({c:.1f} CPU s), "
                      f"RSS {r.rss[-1]}, phases {res['phases']}, around {_around(res)}",
                      flush=True)
            f, e = Runs.med(r.floor, 0), Runs.med(r.ezpz, 0)
            x, rel = statistics.median(r.extract), statistics.median(r.relocate)
            t = _target(n, kind)
            print(f"| {n} | {kind} | {f:.2f} | {e:.2f} | **{e / f:.2f}** | "
                  f"{'<=' if e / f <= t else 'NOT <='} {t:.2f} | {Runs.med(r.floor, 1):.1f} | "
                  f"{Runs.med(r.ezpz, 1):.1f} | {x:.2f} | {rel:.3f} | "
                  f"{100 * rel / max(x, 1e-9):.1f}% | {max(max(v) for v in r.rss):.0f} |",
                  flush=True)


def part_threads(kinds: list[str], arch: dict[str, Path], repeat: int, chunk: str,
                 extra: tuple[str, ...]) -> None:
    from ezpz.config import TransferConfig

    if "threads" not in {f.name for f in dataclasses.fields(TransferConfig)}:
        print("\nthreads: this checkout has no transfer.threads")
        return
    print("\nN=1, transfer.threads=1 vs auto, runs alternating (medians)\n")
    print("| archive | threads=1 s | auto s | auto/1 | threads=1 CPU s | auto CPU s | "
          "RSS MB 1 / auto |")
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        runs: dict[str, list[tuple[float, float, float]]] = {"1": [], "auto": []}
        for _ in range(repeat):
            for t in runs:
                w, c, res = run_ezpz(1, arch[kind], chunk, extra=(*extra, f"transfer.threads={t}"))
                runs[t].append((w, c, _rss(res)))
        one, auto = runs["1"], runs["auto"]
        w1, wa = statistics.median(x[0] for x in one), statistics.median(x[0] for x in auto)
        print(f"| {kind} | {w1:.2f} | {wa:.2f} | {wa / w1:.2f} | "
              f"{statistics.median(x[1] for x in one):.1f} | "
              f"{statistics.median(x[1] for x in auto):.1f} | "
              f"{max(x[2] for x in one):.0f} / {max(x[2] for x in auto):.0f} |", flush=True)


def part_versions(nodes: list[int], kinds: list[str], arch: dict[str, Path], repeat: int,
                  chunk: str, extra: tuple[str, ...], baseline: str | None) -> None:
    if not baseline:
        raise SystemExit("--parts versions needs --baseline-python")
    print(f"\nthis checkout's worker vs the baseline's ({baseline}), runs "
          "alternating, wall s and CPU s (medians)\n")
    print("| N | archive | baseline s | this s | this/baseline | baseline CPU s | this CPU s |")
    print("|---|---|---|---|---|---|---|")
    for n in nodes:
        for kind in kinds:
            runs: dict[str, list[tuple[float, float]]] = {"base": [], "this": []}
            for _ in range(repeat):  # alternate
                w, c, _res = run_ezpz(n, arch[kind], chunk, extra=extra, python=baseline)
                runs["base"].append((w, c))
                w, c, _res = run_ezpz(n, arch[kind], chunk, extra=extra)
                runs["this"].append((w, c))
                print(f"    run: baseline {runs['base'][-1][0]:.2f} s, this {w:.2f} s",
                      flush=True)
            bw, bc = Runs.med(runs["base"], 0), Runs.med(runs["base"], 1)
            tw, tc = Runs.med(runs["this"], 0), Runs.med(runs["this"], 1)
            print(f"| {n} | {kind} | {bw:.2f} | {tw:.2f} | {tw / bw:.2f} | {bc:.1f} | "
                  f"{tc:.1f} |", flush=True)


def part_sweep(path: Path, chunks: list[str], repeat: int, extra: tuple[str, ...]) -> None:
    print("\nchunk_size sweep (N=2, ezpz archive):\n\n| chunk_size | ezpz s | MB/s | "
          "peak RSS MB |")
    print("|---|---|---|---|")
    results: dict[str, list] = {c: [] for c in chunks}
    for _ in range(repeat):  # alternate
        for chunk in chunks:
            results[chunk].append(run_ezpz(2, path, chunk, extra=extra))
    for chunk in chunks:
        e = statistics.median(r[0] for r in results[chunk])
        print(f"| {chunk} | {e:.2f} | {path.stat().st_size / e / 1e6:.0f} | "
              f"{max(_rss(r[2]) for r in results[chunk]):.0f} |", flush=True)


def part_extractor(path: Path, chunk: str, repeat: int, extra: tuple[str, ...]) -> None:
    print(f"\nextractor (N=2, ezpz archive, {chunk}): python (with its C helper for plain "
          "members, and without it: EZPZ_EXTRACT_C=0) vs GNU tar fed the checked stream\n")
    variants = {"python": ("python", {}),
                "python, EZPZ_EXTRACT_C=0": ("python", {"EZPZ_EXTRACT_C": "0"}),
                "tar": ("tar", {})}
    eng: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for _ in range(repeat):  # alternate
        for name, (engine, env_extra) in variants.items():
            w, c, _res = run_ezpz(2, path, chunk, engine, extra, env_extra)
            eng[name].append((w, c))
    base = Runs.med(eng["python, EZPZ_EXTRACT_C=0"], 0)
    for name, runs in eng.items():
        w, c = Runs.med(runs, 0), Runs.med(runs, 1)
        print(f"  {name}: {w:.2f} s, {c:.1f} CPU s ({w / base:.2f}x the pure-Python path)")


def part_rss(venvs: list[Path], chunk: str, extra: tuple[str, ...]) -> None:
    print(f"\npeak RSS flat across payload sizes (N=2, ezpz archive, {chunk}):")
    for venv in venvs:
        a = archive(venv, "ezpz")
        _, _, res = run_ezpz(2, a, chunk, extra=extra)
        print(f"  {venv.name}: archive {a.stat().st_size / 1e6:.0f} MB -> peak RSS "
              f"{_rss(res):.0f} MB (per rank: "
              f"{', '.join(str(round(p['rss_mb'])) for p in res['per_node'])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small payload, one repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--nodes", default="1,2,4")
    ap.add_argument("--kinds", default="ezpz,zstd,gzip",
                    help=f"comma-separated archive kinds of {', '.join(KINDS)}")
    ap.add_argument("--chunks", default="4MiB,16MiB,64MiB")
    ap.add_argument("--parts", default="main,threads,sweep,extractor,rss,startup,around",
                    help="comma-separated subset of main,threads,sweep,extractor,rss,startup,"
                         "around,versions")
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
    if parts == {"startup"}:
        print(_startup_line())
        return
    kinds = args.kinds.split(",")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"--kinds: unknown {', '.join(unknown)} (choose from {', '.join(KINDS)})")
    ok, why = simnodes.namespaces_available()
    if not ok:
        raise SystemExit(f"simulated nodes unavailable: {why}")
    os.environ.setdefault("TMPDIR", "/var/tmp")
    from ezpz.config import TransferConfig

    if parts <= {"startup", "around"}:  # no payload needed
        print(f"command: {' '.join(['python', 'benchmarks/bench_transfer.py', *sys.argv[1:]])}")
        if "around" in parts:
            part_around([int(x) for x in args.nodes.split(",")],
                        1 if args.quick else args.repeat, TransferConfig().chunk_size,
                        tuple(args.overrides))
        if "startup" in parts:
            print("\n" + _startup_line())
        return

    repeat = 1 if args.quick else args.repeat
    nodes = [int(x) for x in args.nodes.split(",")]
    extra = tuple(args.overrides)
    chunk = TransferConfig().chunk_size
    small = payload.ensure(small=True)
    big = small if args.quick else payload.ensure()
    files, size = (payload.CACHE / big.name / ".ezpz-bench-complete").read_text().split()
    print(f"command: {' '.join(['python', 'benchmarks/bench_transfer.py', *sys.argv[1:]])}")
    print(f"machine: {os.cpu_count()} cores (this process may use "
          f"{len(os.sched_getaffinity(0))}); nodes simulated on this one machine "
          f"(mpiexec {simnodes.mpiexec_path().rsplit('/', 1)[-1]}, one rank per node)")
    print(f"payload {big.name}: {int(files)} files, {int(size) / 1e9:.2f} GB; repeats {repeat}; "
          f"chunk_size {chunk}; overrides {list(extra)}")
    need = set(kinds)
    if parts & {"sweep", "extractor", "rss"}:
        need.add("ezpz")
    arch = {k: archive(big, k) for k in KINDS if k in need}
    for k, p in arch.items():
        print(f"  {k}: {p.stat().st_size / 1e6:.0f} MB ({KINDS[k][1]}; {p.name})")

    if "main" in parts:
        part_main(nodes, kinds, arch, repeat, chunk, extra)
    if "threads" in parts:
        part_threads(kinds, arch, repeat, chunk, extra)
    if "versions" in parts:
        part_versions(nodes, kinds, arch, repeat, chunk, extra, args.baseline_python)
    if "sweep" in parts:
        part_sweep(arch["ezpz"], args.chunks.split(","), repeat, extra)
    if "extractor" in parts:
        part_extractor(arch["ezpz"], chunk, repeat, extra)
    if "rss" in parts:
        part_rss([small] if args.quick else [small, big], chunk, extra)
    if "around" in parts:
        part_around(nodes, repeat, chunk, extra)
    if "startup" in parts:
        print("\n" + _startup_line())


if __name__ == "__main__":
    main()
