"""Kill a rank mid-transfer, again and again: does every survivor exit in time and clean up?

    python benchmarks/kill_stress.py                    # 20 runs (needs root: simulated nodes)
    python benchmarks/kill_stress.py --runs 8 --nodes 4 --timeout 3

Each run starts ``python -m ezpz.transfer`` on ``--nodes`` simulated nodes (real mpiexec, one
rank per node, each node's /tmp a directory of this machine so that it can be inspected after
the run), waits until node1 has received data, and SIGKILLs one rank. The runs cycle through
the four cases: the root (rank 0) or another rank killed, under plain ``mpiexec`` (MPICH's
hydra then SIGKILLs every other rank) or ``mpiexec -disable-auto-cleanup`` (the survivors
have to notice on their own). A run *held* when

- every surviving rank had exited within ``transfer.timeout`` + ``--margin`` seconds of the
  kill, plus the duration of an undisturbed run (measured first: survivors of a lost
  non-root rank go on and finish the transfer without it), and so had mpiexec;
- no node (the killed one included) keeps a staging directory, a spill file or a partial
  archive copy once mpiexec has returned (``--margin`` seconds allowed for the clean-up).

It prints one line per run and ``held: k/N`` at the end; the exit code is 0 only when every
run held. Not a CI test: it takes minutes and measures the machine as much as the code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import simnodes  # noqa: E402

#: Names a transfer leaves next to dst while it runs (anything but the lock).
DEBRIS = ("ezpz-staging", "ezpz-spill", "ezpz-partial", "ezpz-old")


def make_archive(path: Path, files: int, size: int) -> Path:
    """A plain tar of ``files`` files of ``size`` bytes each (extraction makes a real tree)."""
    block = os.urandom(size)
    with tarfile.open(path, "w") as tf:
        for i in range(files):
            info = tarfile.TarInfo(f"env/d{i % 50:02d}/f{i:05d}")
            info.size = size
            tf.addfile(info, _Reader(block))
    return path


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        out = self.data[self.pos:] if n < 0 else self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def debris(node_dir: Path) -> list[str]:
    try:
        return sorted(e for e in os.listdir(node_dir) if any(d in e for d in DEBRIS))
    except FileNotFoundError:
        return []


def received(node_dir: Path) -> int:
    """Bytes node1 has written so far (files under its staging directory)."""
    total = 0
    for e in debris(node_dir):
        for dirpath, _dirs, names in os.walk(node_dir / e):
            for name in names:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
    return total


def baseline(work: Path, archive: Path, nodes: int, timeout: float) -> float:
    """Seconds of an undisturbed run (mpiexec start to end)."""
    from ezpz.config import Backend
    from ezpz.transfer import WorkerSpec

    run = work / "baseline"
    out = run / "out"
    out.mkdir(parents=True)
    spec_file = run / "spec.json"
    WorkerSpec(src=str(archive), dst="/tmp/env", backend=Backend.mpi, chunk_bytes=256 << 10,
               depth=2, timeout=timeout).write(str(spec_file))
    env = simnodes.sim_env(out, capture=True, check=False, shared_root=str(run / "nodes"))
    t0 = time.monotonic()
    p = subprocess.run([simnodes.mpiexec_path(), "-n", str(nodes), simnodes.SIMNODE,
                        sys.executable, "-m", "ezpz.transfer", "--spec", str(spec_file),
                        "--run-dir", str(run / "rd")], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"the undisturbed run failed: {p.stdout[-2000:]}{p.stderr[-2000:]}")
    shutil.rmtree(run, ignore_errors=True)
    return seconds


def one_run(i: int, work: Path, archive: Path, nodes: int, timeout: float, margin: float,
            victim: int, plain: bool, base: float) -> tuple[bool, str]:
    from ezpz.config import Backend
    from ezpz.transfer import WorkerSpec

    run = work / f"run{i}"
    root = run / "nodes"
    out = run / "out"
    out.mkdir(parents=True)
    spec_file = run / "spec.json"
    WorkerSpec(src=str(archive), dst="/tmp/env", backend=Backend.mpi, chunk_bytes=256 << 10,
               depth=2, timeout=timeout).write(str(spec_file))
    env = simnodes.sim_env(out, capture=True, check=False, shared_root=str(root))
    cmd = [simnodes.mpiexec_path(), *([] if plain else ["-disable-auto-cleanup"]),
           "-n", str(nodes), simnodes.SIMNODE, sys.executable, "-m", "ezpz.transfer",
           "--spec", str(spec_file), "--run-dir", str(run / "rd")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    pids: dict[int, int] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        pids = simnodes.worker_pids(spec_file)
        if len(pids) == nodes and received(root / "node1") > 0:
            break
        time.sleep(0.002)
    else:
        proc.kill()
        output = proc.communicate()[0]
        return False, f"the transfer was never seen in flight (rc {proc.returncode}): " \
                      f"{output[-500:]!r}"
    os.kill(pids[victim], signal.SIGKILL)
    t_kill = time.monotonic()
    survivors = {r: p for r, p in pids.items() if r != victim}
    limit = timeout + margin + base
    exited: dict[int, float] = {}
    while time.monotonic() - t_kill < limit + 60:
        for r, p in survivors.items():
            if r not in exited and not _alive(p):
                exited[r] = time.monotonic() - t_kill
        if len(exited) == len(survivors) and proc.poll() is not None:
            break
        time.sleep(0.01)
    launcher_s = time.monotonic() - t_kill if proc.poll() is not None else None
    if proc.poll() is None:
        proc.kill()
        for p in survivors.values():
            _kill(p)
    output = proc.communicate()[0]
    time.sleep(0)
    # the clean-up may finish after mpiexec returned: allow --margin for it
    went_on = sum("left out of the broadcast" in (out / f"out.{k}").read_text(errors="replace")
                  for k in range(nodes) if (out / f"out.{k}").exists())
    left: dict[str, list[str]] = {}
    clean_deadline = time.monotonic() + margin
    while True:
        left = {f"node{k}": d for k in range(nodes) if (d := debris(root / f"node{k}"))}
        if not left or time.monotonic() > clean_deadline:
            break
        time.sleep(0.05)
    late = {r: round(s, 1) for r, s in exited.items() if s > limit}
    missing = sorted(set(survivors) - set(exited))
    ok = not late and not missing and launcher_s is not None and launcher_s <= limit \
        and not left
    slowest = max(exited.values(), default=0.0)
    launcher = "never" if launcher_s is None else f"{launcher_s:.1f} s"
    why = (f"survivors out after {slowest:.1f} s (max), mpiexec after {launcher}, "
           f"rc {proc.returncode}" + (", the others went on without it" if went_on else ""))
    if late:
        why += f"; late ranks {late}"
    if missing:
        why += f"; ranks still running {missing}"
    if left:
        why += f"; left behind {left}"
    if not ok:
        rcs = {k: (out / f"rc.{k}").read_text().strip() if (out / f"rc.{k}").exists() else None
               for k in range(nodes)}
        tails = {k: (out / f"out.{k}").read_text(errors="replace")[-300:]
                 for k in range(nodes) if (out / f"out.{k}").exists()}
        why += f"\n    rc files {rcs}\n    tails {json.dumps(tails)[:1500]}\n    " \
               f"mpiexec {output[-400:]!r}"
    shutil.rmtree(run, ignore_errors=True)
    return ok, why


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=5.0, help="transfer.timeout (s)")
    ap.add_argument("--margin", type=float, default=10.0,
                    help="seconds allowed beyond the timeout (start-up of the clean-up)")
    ap.add_argument("--files", type=int, default=2000, help="files in the archive")
    ap.add_argument("--file-size", type=int, default=64 << 10)
    args = ap.parse_args()
    ok, why = simnodes.namespaces_available()
    if not ok:
        raise SystemExit(f"simulated nodes unavailable: {why}")
    work = Path(tempfile.mkdtemp(prefix="ezpz-kill-stress-", dir="/var/tmp"))
    try:
        archive = make_archive(work / "env.tar", args.files, args.file_size)
        print(f"command: python benchmarks/kill_stress.py {' '.join(sys.argv[1:])}".rstrip())
        base = baseline(work, archive, args.nodes, args.timeout)
        print(f"{args.runs} runs, {args.nodes} simulated nodes, transfer.timeout="
              f"{args.timeout:g}s, margin {args.margin:g}s, archive "
              f"{archive.stat().st_size / 1e6:.0f} MB ({args.files} files), undisturbed run "
              f"{base:.1f}s: a run holds when every survivor and mpiexec are out within "
              f"{args.timeout + args.margin + base:.1f}s of the kill and no node keeps "
              "staging", flush=True)
        cases = [(1, True), (0, True), (1, False), (0, False)]
        held = 0
        for i in range(args.runs):
            victim, plain = cases[i % len(cases)]
            good, why = one_run(i, work, archive, args.nodes, args.timeout, args.margin,
                                victim, plain, base)
            held += good
            print(f"run {i + 1:2d}: kill {'root' if victim == 0 else f'rank {victim}'}, "
                  f"{'plain mpiexec' if plain else '-disable-auto-cleanup'}: "
                  f"{'held' if good else 'FAILED'}; {why}", flush=True)
        print(f"held: {held}/{args.runs}")
        return 0 if held == args.runs else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
