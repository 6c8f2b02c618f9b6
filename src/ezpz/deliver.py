"""Deliver an environment to every node of the job: the run behind ``ezpz-yeet-env`` and the
first half of ``ezpz-launch transfer.src=... -- cmd``.

:func:`deliver` checks ``transfer.src`` (packing the environment first when it is a directory
or omitted), plans one worker process per host (the job's hosts and its ``launcher.spares``,
so that a failover lands on a node that is ready), writes the run's
:class:`~ezpz.transfer.WorkerSpec` with the run id, starts ``python -m ezpz.transfer --spec
FILE --run-dir DIR --run-id ID`` with the launch wing's :func:`~ezpz.launch.run_plan`, and reads
``results.json``. After a partial or failed delivery it starts the worker again on the hosts
that do not hold the environment (``transfer.retries`` times; a node that already holds the
verified tree skips it), each attempt in ``<run dir>/delivery-<n>/``, and merges the
outcome into ``<run dir>/results.json``.

Everything here takes the schema dataclasses; no Hydra, no OmegaConf.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import Backend, LauncherConfig, MachineConfig, Status, TarEnvConfig, TransferConfig
from .envkind import EnvKind, detect_kind
from .errors import EXIT_FAILURE, ConfigError
from .fsutil import write_json_atomic
from .jobenv import resolve_backend
from .launch import LaunchPlan, build_plan, plan_launch, run_plan
from .launch.failover import HostMatcher
from .log import get_logger
from .transfer import RESULTS_FILE, SPEC_FILE, NodeStatus, WorkerSpec, spec_for
from .transfer.results import overall

log = get_logger(__name__)


@dataclass
class Delivery:
    """What a delivery did: where, to which hosts, and how it ended."""

    run_dir: Path
    #: The spec every worker read (None when nothing was started: a dry run still has it).
    spec: WorkerSpec | None
    archive: Path | None
    status: str
    exit_code: int
    #: The hosts the environment was delivered to (the job's, then its spares).
    hosts: list[str] = field(default_factory=list)
    #: Hosts of :attr:`hosts` that do not hold the environment (as the plan names them).
    failed_hosts: list[str] = field(default_factory=list)
    #: The merged ``results.json`` (None when no worker wrote one).
    results: dict[str, Any] | None = None
    attempts: int = 1
    #: The launcher's exit code of the last attempt.
    launcher_rc: int = 0
    #: The plan of the first attempt (its ``hosts`` and ``spares``).
    plan: LaunchPlan | None = None
    #: What the archive holds (venv, conda, data) as its manifest or the packed directory
    #: says; None when unknown.
    archive_kind: str | None = None

    @property
    def dst(self) -> str | None:
        return self.spec.dst if self.spec is not None else None

    @property
    def kind(self) -> str | None:
        kind = (self.results or {}).get("kind") or self.archive_kind
        return str(kind) if kind else None


# --------------------------------------------------------------------------------------
# the source
# --------------------------------------------------------------------------------------
def check_src(src: str | None) -> tuple[Path | None, Path | None]:
    """``(archive, env_to_pack)``: an existing file is the archive; a directory (or nothing:
    the running environment) must be packed first. A missing path is a ConfigError."""
    if src is None:
        return None, Path(sys.prefix)
    path = Path(src).expanduser()
    try:
        path.stat()
    except PermissionError as exc:
        raise ConfigError(f"transfer.src: cannot read {src}: {exc.strerror} (make it and "
                          "its directories readable, e.g. chmod a+r / a+x)") from None
    except OSError:
        pass  # missing: reported below
    if path.is_dir():
        return None, path.resolve()
    if path.is_file():
        return path.resolve(), None
    if path.exists():
        raise ConfigError(f"transfer.src: {src!r} is neither a file nor a directory")
    raise ConfigError(f"transfer.src: {src!r} does not exist (give an archive made by "
                      "ezpz-tar-env, an environment directory to pack, or nothing to pack "
                      "the running environment)")


def _pack(tar_env: TarEnvConfig, prefix: Path, given: bool, dry_run: bool) -> Path:
    from . import pack

    if dry_run:
        out = pack.resolve_output(tar_env.archive.path, prefix, tar_env.archive.codec)
        log.info("dry run: would pack %s into %s first", prefix, out)
        return Path(out)
    log.info("packing %s first (transfer.src is %s)", prefix,
             "a directory" if given else "not given")
    return Path(pack.pack(tar_env, prefix=str(prefix)))


# --------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------
def worker_argv(spec_file: Path, run_dir: Path, run_id: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "ezpz.transfer", "--spec", str(spec_file), "--run-dir",
            str(run_dir)]
    return [*argv, "--run-id", run_id] if run_id else argv


#: MPICH hydra's flag that keeps the other ranks running when one ends (its default kills
#: them all): the workers notice a lost node themselves and finish without it.
NO_AUTO_CLEANUP = "-disable-auto-cleanup"


def delivery_launcher(launcher: LauncherConfig, machine: MachineConfig | None = None
                      ) -> LauncherConfig:
    """The launcher settings of a delivery: the job's hosts and its spares get the
    environment (a spare that takes over a failed node is ready), one process per host, and
    no reruns of the whole job (``transfer.retries`` reruns the delivery where it failed).
    Under MPICH's hydra, a node that dies does not take the others with it."""
    nhosts = None if launcher.nhosts is None else launcher.nhosts + launcher.spares
    extra = list(launcher.extra_args)
    if machine is not None and machine.mpiexec_flavor == "hydra" and \
            launcher.name == "mpiexec" and NO_AUTO_CLEANUP not in extra:
        extra.append(NO_AUTO_CLEANUP)
    return replace(launcher, spares=0, retries=0, idle_timeout=None, nhosts=nhosts,
                   extra_args=extra)


def _torch_rendezvous(plan: LaunchPlan, backend: Backend, launcher: LauncherConfig) -> None:
    if backend is Backend.torch and launcher.name != "torchrun":
        # torch.distributed without torchrun (mpiexec/srun): rendezvous on the first node.
        plan.env.setdefault("MASTER_ADDR", "localhost" if plan.local_only else plan.hosts[0])
        plan.env.setdefault("MASTER_PORT", str(launcher.rdzv_port))


def _progress_env(plan: LaunchPlan) -> None:
    """Rank 0's output is a pipe to the launcher: how it shows progress is decided here, from
    this process's stderr (a bar on a terminal) or EZPZ_PROGRESS."""
    from .transfer.progress import mode

    plan.env.setdefault("EZPZ_PROGRESS", mode())


def _retry_plan(plan: LaunchPlan, hosts: list[str], workdir: Path, argv: list[str]) -> LaunchPlan:
    """The first plan again, on ``hosts`` only, with its files in ``workdir``."""
    assert plan.request is not None
    request = replace(plan.request, cmd=tuple(argv), workdir=str(workdir))
    topology = replace(plan.topology, nhosts=len(hosts))
    return build_plan(request, plan.hostlist, topology, hosts, spares=[], excluded=[],
                      attempt=1)


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
def read_results(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("cannot read %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _failed_plan_hosts(results: dict[str, Any] | None, hosts: list[str]) -> list[str]:
    """The plan's hosts that do not hold the environment after an attempt: all of them when
    the worker wrote no results or names a host the plan does not know (a retry on a node
    that holds the verified tree skips it)."""
    if results is None:
        return list(hosts)
    named = [str(h) for h in results.get("failed_hosts") or []]
    if not named and results.get("exit_code") not in (0, None):
        return list(hosts)
    matcher = HostMatcher(hosts)
    found = [matcher.match(h) for h in named]
    if any(h is None for h in found):
        return list(hosts)
    return [h for h in hosts if h in found]


def _merge(first: dict[str, Any] | None, later: dict[str, Any] | None) -> dict[str, Any] | None:
    """``first`` with the per-node rows of ``later`` in place of its rows for the same hosts."""
    if first is None:
        return later
    if later is None:
        return first
    rows = {str(r.get("host")): r for r in first.get("per_node") or [] if isinstance(r, dict)}
    for row in later.get("per_node") or []:
        if isinstance(row, dict):
            rows[str(row.get("host"))] = row
    merged = dict(first)
    merged["per_node"] = list(rows.values())
    merged["kind"] = first.get("kind") or later.get("kind")
    return merged


def _settle(results: dict[str, Any], spec: WorkerSpec) -> None:
    """Status, exit code and failed hosts of merged results, by the worker's own rule."""
    statuses = []
    for row in results.get("per_node") or []:
        try:
            statuses.append(NodeStatus.from_wire(row))
        except (TypeError, ValueError, KeyError):
            continue
    if not statuses:
        return
    status, code = overall(statuses, spec)
    results["status"], results["exit_code"] = str(status), code
    results["failed_hosts"] = [s.host for s in statuses if s.failed]


# --------------------------------------------------------------------------------------
# the delivery
# --------------------------------------------------------------------------------------
def deliver(machine: MachineConfig, launcher: LauncherConfig, transfer: TransferConfig, *,
            run_dir: Path, run_id: str, tar_env: TarEnvConfig | None = None,
            dry_run: bool = False) -> Delivery:
    """Deliver ``transfer.src`` to ``transfer.dst`` on every host of the job (and its spares).

    Raises ConfigError / LaunchError for what a user got wrong before anything starts.
    Returns how it ended; ``results.json`` in ``run_dir`` holds the merged per-node outcome.
    """
    backend = resolve_backend(transfer.backend, launcher.name)
    archive, to_pack = check_src(transfer.src)
    run_dir = run_dir.resolve()
    spec_file = run_dir / SPEC_FILE
    # Hosts, GPUs and the command are checked before anything slow (packing) happens.
    plan = plan_launch(machine, delivery_launcher(launcher, machine),
                       worker_argv(spec_file, run_dir, run_id), one_per_host=True,
                       workdir=str(run_dir))
    _torch_rendezvous(plan, backend, launcher)
    _progress_env(plan)
    njob = len(plan.hosts) - min(launcher.spares, len(plan.hosts) - 1)
    if launcher.spares:
        log.info("delivering to the %d spare host%s too, so that a failover lands on a ready "
                 "node: %s", len(plan.hosts) - njob, "s" if len(plan.hosts) - njob > 1 else "",
                 ", ".join(plan.hosts[njob:]))
    if to_pack is not None:
        archive = _pack(tar_env or TarEnvConfig(), to_pack, transfer.src is not None, dry_run)
    assert archive is not None
    kind = str(detect_kind(to_pack)) if to_pack is not None else _manifest_kind(archive)
    spec = replace(spec_for(transfer, machine=machine, launcher=launcher.name,
                            src=str(archive)), run_id=run_id)
    if launcher.spares:
        # the job needs its own hosts; the spares are a reserve
        need = njob if spec.min_success_nodes is None else min(spec.min_success_nodes, njob)
        spec = replace(spec, min_success_nodes=need)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec.write(str(spec_file))
    log.info("transfer of %s with backend=%s to %d nodes (run %s); worker spec: %s", archive,
             spec.backend, len(plan.hosts), run_id, spec_file)
    rc = run_plan(plan, dry_run=dry_run)
    out = Delivery(run_dir=run_dir, spec=spec, archive=archive, status="dry-run" if dry_run
                   else Status.failed.value, exit_code=rc, hosts=list(plan.hosts),
                   launcher_rc=rc, plan=plan, archive_kind=kind)
    if dry_run:
        return out
    results = read_results(run_dir)
    attempts = [_attempt_record(1, plan.hosts, rc, results, ".")]
    failed = _failed_plan_hosts(results, plan.hosts) if _needs_retry(results, rc) else []
    for n in range(2, transfer.retries + 2):
        if not failed:
            break
        if rc in _STOPPED:  # Ctrl-C, SIGTERM (qdel, preemption), SIGHUP: never retried
            log.warning("the delivery was stopped by %s: not retrying",
                        signal.Signals(rc - 128).name)
            break
        sub = run_dir / f"delivery-{n}"
        sub.mkdir(parents=True, exist_ok=True)
        retry = _retry_plan(plan, failed, sub, worker_argv(spec_file, sub, run_id))
        _torch_rendezvous(retry, backend, launcher)
        _progress_env(retry)
        log.warning("delivery attempt %d of %d on the %d host%s without the environment: %s",
                    n, transfer.retries + 1, len(failed), "s" if len(failed) > 1 else "",
                    ", ".join(failed))
        rc = run_plan(retry)
        later = read_results(sub)
        attempts.append(_attempt_record(n, failed, rc, later, sub.name))
        results = _merge(results, later)
        if results is not None:
            _settle(results, spec)
        failed = [h for h in failed if h in _failed_plan_hosts(later, failed)] \
            if _needs_retry(later, rc) else []
    out.attempts, out.launcher_rc = len(attempts), rc
    if len(attempts) > 1:
        log.info("delivery after %d attempts: %s", len(attempts), "; ".join(
            f"{a['attempt']}: {len(a['hosts'])} host(s), {a['status']}" for a in attempts))
    if results is not None:
        results["delivery_attempts"] = attempts
        if len(attempts) > 1:
            write_json_atomic(str(run_dir / RESULTS_FILE), results)
        out.results = results
        out.status = str(results.get("status") or Status.failed.value)
        code = results.get("exit_code")
        out.exit_code = int(code) if isinstance(code, int) else EXIT_FAILURE
        out.failed_hosts = _failed_plan_hosts(results, plan.hosts) \
            if results.get("failed_hosts") or out.exit_code else []
    else:
        out.exit_code = rc or EXIT_FAILURE
        out.failed_hosts = list(plan.hosts)
    return out


def _manifest_kind(archive: Path) -> str | None:
    from .errors import ArchiveError
    from .formats.manifest import read_manifest

    try:
        manifest = read_manifest(archive)
    except (ArchiveError, OSError):
        return None
    return manifest.kind if manifest else None


# --------------------------------------------------------------------------------------
# running a command with the delivered environment
# --------------------------------------------------------------------------------------
_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)?)?")


def node_local_env(dst: str, kind: str | None,
                   environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables that put the delivered environment first on a rank: ``dst/bin`` in front
    of PATH, and VIRTUAL_ENV (a venv) or CONDA_PREFIX / CONDA_DEFAULT_ENV (a conda env)."""
    env = os.environ if environ is None else environ
    path = env.get("PATH")
    out = {"PATH": f"{dst}/bin" + (f"{os.pathsep}{path}" if path else "")}
    if kind == EnvKind.conda:
        out.update({"CONDA_PREFIX": dst, "CONDA_DEFAULT_ENV": dst})
    else:
        out["VIRTUAL_ENV"] = dst
    return out


def delivered_command(cmd: Sequence[str], dst: str) -> list[str]:
    """``python``/``python3``/``python3.11`` as the command (a bare name) become the delivered
    interpreter; anything else is left as given (it is looked up on the ranks' PATH, where
    the delivered ``bin`` comes first)."""
    out = [str(c) for c in cmd]
    if out and _PYTHON_NAME.fullmatch(out[0]):
        out[0] = f"{dst}/bin/{out[0]}"
    return out


def use_delivery(plan: LaunchPlan, delivery: Delivery) -> LaunchPlan:
    """``plan`` (the job's) moved onto the hosts that hold the environment and set up to run
    with it: a job host where the delivery failed is replaced by a spare that holds it
    (:func:`ezpz.launch.failover_plan`), a spare without it is dropped, and every rank gets
    the node-local environment first (PATH, VIRTUAL_ENV / CONDA_PREFIX, the interpreter).
    Raises TransferError when a job host is left without the environment."""
    from .errors import TransferError
    from .launch import failover_plan

    dst = delivery.dst
    assert dst is not None
    failed = set(delivery.failed_hosts)
    if failed:
        plan.spares = [h for h in plan.spares if h not in failed]
        bad = [h for h in plan.hosts if h in failed]
        if bad:
            if len(bad) > len(plan.spares):
                n = len(plan.spares)
                spares = ("no spare holds it" if not n else
                          f"only {n} spare{'s' if n > 1 else ''} hold{'' if n > 1 else 's'} it")
                raise TransferError(
                    f"{dst} is missing on {len(bad)} of the job's {len(plan.hosts)} hosts "
                    f"({', '.join(bad)}) and {spares}: see the delivery's results.json; "
                    "launcher.spares=N holds hosts back to take their place")
            plan = failover_plan(plan, bad)
            log.warning("the job runs on %s (%s replaced by spares that hold the environment)",
                        ", ".join(plan.hosts), ", ".join(bad))
    kind = delivery.kind
    if kind in (EnvKind.venv, EnvKind.conda):
        plan.env.update(node_local_env(dst, kind))
        if plan.request is not None:
            cmd = delivered_command(plan.request.cmd, dst)
            if tuple(cmd) != plan.request.cmd:
                plan = _with_command(plan, cmd)
        log.info("every rank runs with %s first (%s)", dst, "conda env" if kind == EnvKind.conda
                 else "venv")
    else:
        log.warning("%s is not a venv or conda environment (%s): the command runs as given",
                    delivery.archive, kind or "unknown")
    return plan


def _with_command(plan: LaunchPlan, cmd: list[str]) -> LaunchPlan:
    assert plan.request is not None
    request = replace(plan.request, cmd=tuple(cmd))
    new = build_plan(request, plan.hostlist, plan.topology, plan.hosts, spares=plan.spares,
                     excluded=plan.excluded, attempt=plan.attempt)
    new.replaced = dict(plan.replaced)
    new.env.update({k: v for k, v in plan.env.items() if k not in new.env})
    return new


#: Exit codes of a delivery stopped by a signal to the launcher.
_STOPPED = {128 + signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGHUP}


def _needs_retry(results: dict[str, Any] | None, rc: int) -> bool:
    if results is None:
        return True
    return bool(results.get("failed_hosts")) or results.get("status") == Status.failed.value


def _attempt_record(n: int, hosts: list[str], rc: int, results: dict[str, Any] | None,
                    where: str) -> dict[str, Any]:
    return {"attempt": n, "hosts": list(hosts), "launcher_exit_code": rc,
            "status": (results or {}).get("status", "no results"),
            "failed_hosts": (results or {}).get("failed_hosts", list(hosts)),
            "run_dir": where}


__all__ = ["Delivery", "check_src", "deliver", "delivered_command", "delivery_launcher",
           "node_local_env", "read_results", "use_delivery", "worker_argv"]
