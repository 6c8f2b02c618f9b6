"""A throwaway multi-node Slurm cluster on this machine, for tests inside real allocations.

``SlurmCluster(root).start()`` writes a munge key and a ``slurm.conf`` under ``root``, starts a
private ``munged`` (its own socket and key, never the system one), ``slurmctld`` and one
``slurmd -N simK`` per node, all in the foreground as children of this process, on free
loopback ports, and waits until ``sinfo`` shows every node idle. ``stop()`` cancels what is
still queued and ends exactly the processes it started, by PID. Every command that talks to
the cluster gets ``SLURM_CONF`` pointing at the private file (``cluster.env()``).

The node names (``sim1``..``simN``) resolve to 127.0.0.1 while the cluster runs (one line in
``/etc/hosts`` tagged with this process's PID, removed by ``stop()``; stale lines of dead
processes are removed by the next ``start()``), so programs that take a rendezvous address
from the node list (torch.distributed) work as on a real cluster.

The ``slurm_cluster`` fixture (session scope) brings one cluster up for the whole test run and
skips, with the reason, where it cannot run (not root, packages missing).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

#: Programs the cluster needs (Debian: apt-get install slurm-wlm munge).
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "sinfo", "scontrol", "squeue", "scancel", "salloc", "srun")
HOSTS_FILE = Path("/etc/hosts")
HOSTS_TAG = "ezpz-test-slurm"


class ClusterError(RuntimeError):
    """The cluster did not come up (the message carries the daemons' logs)."""


def available() -> tuple[bool, str]:
    """Whether a cluster can be started here, and why not."""
    if os.geteuid() != 0:
        return False, "the Slurm test cluster needs root (slurmd runs jobs as any user)"
    missing = [p for p in DAEMONS + CLIENTS if not shutil.which(p)]
    if missing:
        return False, (f"Slurm/munge programs not installed ({', '.join(missing)}): "
                       "apt-get install slurm-wlm munge (./dev setup does it)")
    return True, ""


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free on loopback right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Deliver SIGTERM to the daemon if the test process dies without tearing down."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (one this module started with setsid)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()   # after "pid (comm)": state ppid pgrp session
        if int(fields[3]) == sid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"  ({exc})"
    return "\n".join("  " + line for line in text[-lines:])


class SlurmCluster:
    """A Slurm cluster of ``n`` simulated nodes (``sim1``..``simN``) rooted at ``root``."""

    def __init__(self, root: str | os.PathLike[str], n: int = 3, *, prefix: str = "sim",
                 cpus: int = 2, memory_mib: int = 6000, gpus: int = 2) -> None:
        self.root = Path(root)
        self.nodes = [f"{prefix}{k}" for k in range(1, n + 1)]
        self.nodelist = f"{prefix}[1-{n}]"
        self.cpus = cpus
        #: GPUs per node, as Slurm sees them (gres/gpu on stand-in devices): jobs that ask for
        #: GPUs (--gpus-per-node, --gres=gpu:N) get Slurm's GPU variables; nothing else changes.
        self.gpus = gpus
        self.memory_mib = memory_mib
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.logdir = self.root / "log"
        self.procs: dict[str, subprocess.Popen] = {}
        self._hosts_line: str | None = None

    # ------------------------------------------------------------------ environment
    def env(self, extra: Mapping[str, str] | None = None,
            base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for any command that talks to this cluster.

        Inherited ``SLURM_*`` variables are dropped (the test run itself may sit inside an
        allocation of another cluster); ``SLURM_CONF`` points at this cluster's file.

        MPI between the simulated nodes goes over TCP (``UCX_TLS=tcp,self``), as between real
        nodes: they share one kernel, and the MPICH wheel's UCX would otherwise pick shared
        memory across them, whose address exchange through Slurm's PMI2 fails when the ranks
        of a step reach MPI_Init at nearly the same moment (seen with a worker that starts
        in ~0.1 s: "mpi/pmi2: value not properly terminated", then UCX "Destination is
        unreachable").
        """
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        env.setdefault("UCX_TLS", "tcp,self")
        env.update(extra or {})
        return env

    # ------------------------------------------------------------------ files
    def _write_munge_key(self) -> Path:
        keydir = self.root / "munge-key"
        keydir.mkdir(mode=0o700, exist_ok=True)
        key = keydir / "munge.key"
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400), "wb") as fh:
            fh.write(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        return key

    def slurm_conf_text(self, ctld_port: int, node_ports: Sequence[int]) -> str:
        host = socket.gethostname().split(".", 1)[0]
        r = self.root
        lines = [
            "# Throwaway test cluster: every path private to this directory, loopback ports.",
            "ClusterName=ezpzsim",
            # Job ids of every throwaway cluster start somewhere new: MPICH names its shared
            # memory (/dev/shm/mpich_shm_*) after the job, and a rank killed by a test leaves
            # its segment behind; a later cluster reusing the same ids would attach to it.
            f"FirstJobId={secrets.randbelow(1 << 24) + 1000}",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={node_ports[0]}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool' / '%n'}",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'run' / 'slurmd.%n.pid'}",
            f"SlurmctldLogFile={self.logdir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.logdir / 'slurmd.%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # several slurmd on one host: no cgroups, plain process tracking
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MailProg=/bin/true",
            # the simulated nodes share this machine's CPUs and memory: trust the config
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "MinJobAge=5",
            "KillWait=5",
            "Waittime=0",
            "SchedulerType=sched/backfill",
        ]
        gres = ""
        if self.gpus:
            lines.append("GresTypes=gpu")
            gres = f"Gres=gpu:{self.gpus} "
        for name, port in zip(self.nodes, node_ports):
            lines.append(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
                         f"CPUs={self.cpus} RealMemory={self.memory_mib} {gres}State=UNKNOWN")
        lines.append(f"PartitionName=sim Nodes={self.nodelist} Default=YES MaxTime=INFINITE "
                     "State=UP OverSubscribe=FORCE")
        return "\n".join(lines) + "\n"

    def _write_gres_conf(self) -> None:
        """gres.conf next to slurm.conf: each node's GPUs stand on character devices that
        exist everywhere (/dev/null, /dev/zero, ...): Slurm counts and hands them out, nothing
        opens them."""
        devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]
        if self.gpus > len(devices):
            raise ClusterError(f"at most {len(devices)} stand-in GPUs per node")
        text = "".join(f"NodeName={self.nodelist} Name=gpu File={dev}\n"
                       for dev in devices[: self.gpus])
        (self.root / "gres.conf").write_text(text)

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen:
        out = open(self.logdir / f"{name}.out", "ab")
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=self.env(), cwd=self.root,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            out.close()
        self.procs[name] = proc
        return proc

    def _check_running(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with code {proc.returncode}")

    def _wait(self, what: str, ready, timeout: float) -> None:
        """Poll ``ready()`` until true; raise with the logs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            self._check_running()
            if ready():
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _quiet(self, argv: Sequence[str], timeout: float = 10) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, env=self.env(),
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(list(argv), -9, "", "timed out")

    def node_states(self) -> dict[str, str]:
        """``{'sim1': 'idle', ...}`` as sinfo reports them now."""
        p = self._quiet(["sinfo", "-h", "-N", "-o", "%N %T"])
        if p.returncode != 0:
            return {}
        states = {}
        for line in p.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1]
        return states

    def start(self, timeout: float = 60) -> SlurmCluster:
        ok, why = available()
        if not ok:
            raise ClusterError(why)
        for sub in ("state", "run", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for name in self.nodes:
            (self.root / "spool" / name).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o755)
        try:
            key = self._write_munge_key()
            self._spawn("munged", [
                "munged", "--foreground", "--force",
                f"--socket={self.munge_socket}", f"--key-file={key}",
                f"--pid-file={self.root / 'run' / 'munged.pid'}",
                f"--log-file={self.logdir / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ])
            self._wait("munged", lambda: self._quiet(
                ["munge", "-n", "-S", str(self.munge_socket)]).returncode == 0, timeout)

            ctld_port, *node_ports = free_ports(1 + len(self.nodes))
            self.conf.write_text(self.slurm_conf_text(ctld_port, node_ports))
            self._write_gres_conf()
            self._add_hosts()

            self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
            self._wait("slurmctld to answer", lambda: self._quiet(
                ["scontrol", "ping"]).stdout.count("UP") >= 1, timeout)
            for name in self.nodes:
                self._spawn(f"slurmd.{name}", ["slurmd", "-D", "-N", name])
            self._wait(f"sinfo to show {len(self.nodes)} idle nodes", lambda: sorted(
                n for n, s in self.node_states().items() if s == "idle") == self.nodes, timeout)
        except BaseException as exc:
            report = self.diagnostics()
            self.stop()
            if isinstance(exc, ClusterError):
                raise ClusterError(f"{exc}\n{report}") from None
            raise
        return self

    def stop(self, timeout: float = 15) -> None:
        """Cancel leftover jobs, then end every process this cluster started, by PID."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self.cancel_all()
        order = [f"slurmd.{n}" for n in self.nodes] + ["slurmctld", "munged"]
        for name in order:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for name in order:
            proc = self.procs.get(name)
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()
        self._remove_hosts()

    def running_pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.poll() is None]

    # ------------------------------------------------------------------ /etc/hosts
    def _hosts_tag(self, pid: int) -> str:
        return f"# {HOSTS_TAG} pid={pid}"

    def _edit_hosts(self, edit) -> None:
        """Rewrite /etc/hosts in place (it may be a bind mount) under an exclusive lock."""
        with open(HOSTS_FILE, "r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                lines = fh.read().splitlines(keepends=True)
                new = edit(lines)
                if new != lines:
                    fh.seek(0)
                    fh.write("".join(new))
                    fh.truncate()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _add_hosts(self) -> None:
        tag = self._hosts_tag(os.getpid())
        line = f"127.0.0.1 {' '.join(self.nodes)} {tag} root={self.root}\n"

        def edit(lines: list[str]) -> list[str]:
            kept = []
            for old in lines:  # drop lines left by test runs whose process is gone
                if f"# {HOSTS_TAG} pid=" in old:
                    pid = old.split(f"# {HOSTS_TAG} pid=", 1)[1].split()[0]
                    if pid.isdigit() and not _pid_alive(int(pid)):
                        continue
                kept.append(old)
            if kept and not kept[-1].endswith("\n"):
                kept[-1] += "\n"
            return kept + [line]

        self._edit_hosts(edit)
        self._hosts_line = line

    def _remove_hosts(self) -> None:
        if self._hosts_line is None:
            return
        ours = self._hosts_line
        self._edit_hosts(lambda lines: [line for line in lines if line != ours])
        self._hosts_line = None

    # ------------------------------------------------------------------ running jobs
    def salloc(self, nodes: int, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               timeout: float = 120, cwd: str | os.PathLike[str] | None = None,
               salloc_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``salloc -N nodes`` (the way a user's job script runs)."""
        cmd = ["salloc", "-N", str(nodes), "--quiet", *salloc_args, "--", *argv]
        return self.run(cmd, env=env, timeout=timeout, cwd=cwd)

    def run(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float = 120, cwd: str | os.PathLike[str] | None = None
            ) -> subprocess.CompletedProcess:
        """Run any client command against this cluster.

        On timeout the command's whole process group is killed, every job still in the
        cluster is cancelled (so no allocation outlives its test) and the result has
        returncode -9.
        """
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, env=self.env(base=env),
                                cwd=cwd, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            return subprocess.CompletedProcess(list(cmd), proc.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            # salloc puts the command in a process group of its own, in our session
            _kill_session(proc.pid)
            stdout, stderr = proc.communicate()
            self.cancel_all()
            return subprocess.CompletedProcess(list(cmd), -9, stdout,
                                               stderr + f"\n[timed out after {timeout}s]")

    def cancel_all(self, wait: float = 5) -> None:
        """Cancel every job of this cluster and wait (bounded) until the queue is empty."""
        self._quiet(["scancel", "--full", "--quiet", "--partition=sim"], timeout=5)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self._quiet(
                ["squeue", "-h", "-o", "%i"], timeout=5).stdout.strip():
            time.sleep(0.2)

    def explain(self, p: subprocess.CompletedProcess | None = None) -> str:
        """A failure message: the command, its output and the daemons' recent logs."""
        parts = []
        if p is not None:
            parts.append(f"command: {p.args}\nexit code: {p.returncode}\n"
                         f"--- stdout ---\n{p.stdout}\n--- stderr ---\n{p.stderr}")
        parts.append(self.diagnostics())
        return "\n".join(parts)

    def diagnostics(self) -> str:
        out = [f"=== Slurm test cluster in {self.root} ==="]
        for name, proc in self.procs.items():
            state = "running" if proc.poll() is None else f"exited {proc.returncode}"
            out.append(f"{name}: pid {proc.pid} {state}")
        if self.conf.exists():
            states = self.node_states() if "slurmctld" in self.procs else {}
            out.append(f"sinfo: {states or 'no answer'}")
        logs = sorted(self.logdir.glob("*.log")) + sorted(self.logdir.glob("*.out"))
        for path in logs:
            out.append(f"--- {path.name} (last lines) ---\n{_tail(path)}")
        return "\n".join(out)


@contextlib.contextmanager
def running_cluster(root: str | os.PathLike[str], n: int = 3) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(root, n)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A running 3-node Slurm cluster for the whole test session (skips where it cannot run)."""
    ok, why = available()
    if not ok:
        pytest.skip(why)
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
