"""The structured-config schema: dataclasses only, registered in Hydra's ConfigStore.

Every YAML under ``conf/`` extends one of these (``defaults: - /schema/<group>@_here_``), so a
bad type, an unknown key or a bad size string fails at composition with a clear message.
Library code receives these dataclasses (``OmegaConf.to_object`` at the entry point), never
the Hydra config itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional, TypeVar

from .errors import ConfigError


# --------------------------------------------------------------------------------------
# choices: member names are the spellings users type (Hydra matches values by name)
# --------------------------------------------------------------------------------------
class Choice(str, Enum):
    """A closed set of string values; compares and serialises as its string."""

    def __str__(self) -> str:
        return str(self.value)


class Codec(Choice):
    """How an archive is compressed (``none``: plain tar)."""

    zstd = "zstd"
    gzip = "gzip"
    none = "none"


class Backend(Choice):
    """What carries the broadcast: mpi4py or torch.distributed (``auto``: decided at launch)."""

    auto = "auto"
    mpi = "mpi"
    torch = "torch"


class Engine(Choice):
    """What writes the checked tar stream: ezpz itself, or GNU tar through a pipe."""

    python = "python"
    tar = "tar"


class Status(Choice):
    """The outcome of a transfer on one node, or of the whole run."""

    ok = "ok"
    skipped = "skipped"
    partial = "partial"
    failed = "failed"


C = TypeVar("C", bound=Choice)
#: How an error names a value of each choice ("'xyz' is not a backend").
NOUNS: dict[type[Choice], str] = {Codec: "a codec", Backend: "a backend",
                                  Engine: "an extractor", Status: "a status"}


def choice_error(kind: type[Choice], value: Any, key: str) -> ConfigError:
    """The one-line error for a value that is not one of ``kind``'s."""
    names = [m.value for m in kind]
    options = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    return ConfigError(f"{key}: {value!r} is not {NOUNS.get(kind, 'valid')} (choose {options})")


def choice(kind: type[C], value: Any, key: str) -> C:
    """``value`` as a member of ``kind``, or a one-line :class:`ConfigError` naming ``key``."""
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        raise choice_error(kind, value, key) from None

# --------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any, key: str = "size") -> int:
    """``64MiB`` → 67108864, ``512KB`` → 512000, ``1GiB``, ``4096`` or an int → bytes.

    Decimal units (KB, MB, GB) are powers of 1000, binary units (KiB, MiB, GiB) powers of
    1024. Raises :class:`ConfigError` naming ``key`` for anything else.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not a size (use e.g. 64MiB, 1GiB, 512KB or bytes)")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.match(str(value))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise ConfigError(
                f"{key}: {value!r} is not a size (use e.g. 64MiB, 1GiB, 512KB or bytes)")
        n = int(float(m.group(1)) * _UNITS[unit])
    if n < 0:
        raise ConfigError(f"{key}: {value!r} must not be negative")
    return n


def format_size(n: float) -> str:
    """Human-readable binary size: 1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


# --------------------------------------------------------------------------------------
# config groups
# --------------------------------------------------------------------------------------
def check_regexes(key: str, patterns: Any) -> None:
    """Each of ``patterns`` must compile and must not match an empty line (such a pattern
    would match every line). Raises :class:`ConfigError` naming ``key[i]``."""
    for i, pattern in enumerate(patterns or []):
        where = f"{key}[{i}]"
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{where}: {pattern!r} is not a regular expression (give a "
                              "non-empty string)")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}: {pattern!r} is not a regular expression ({exc}); "
                              "escape special characters with a backslash") from None
        if compiled.search(""):
            raise ConfigError(f"{where}: {pattern!r} matches every line (it matches an empty "
                              "string); make it more specific")


@dataclass
class MachineConfig:
    """A machine preset (``conf/machine/*.yaml``). Every value is overridable."""

    name: str = "local"
    description: str = ""
    #: GPUs (or tiles) per node; ``None``: from the Slurm allocation inside one, else counted
    #: with torch if it is installed, else 0.
    gpus_per_node: Optional[int] = None
    #: torch device type: cpu, cuda or xpu.
    device: str = "cpu"
    #: torch.distributed backend for training/torch transfers: gloo, nccl, xccl or ccl.
    dist_backend: str = "gloo"
    #: mpiexec executable (a name on PATH or a path).
    mpiexec: str = "mpiexec"
    #: Flag spelling: ``pals`` (Cray PALS: --np= --ppn= --hostfile=) or ``hydra`` (MPICH: -n -ppn -f).
    mpiexec_flavor: str = "hydra"
    #: Extra flags for mpiexec on this machine (e.g. ``--no-vni``).
    mpiexec_flags: list[str] = field(default_factory=list)
    #: CPU binding for mpiexec/srun; ``CPU_BIND`` in the environment overrides it.
    cpu_bind: Optional[str] = None
    #: Slurm's ``srun --mpi=`` plugin.
    srun_mpi: str = "pmi2"
    #: What starts one process per node under ``launcher=torchrun``: ``mpiexec`` or ``srun``.
    node_starter: str = "mpiexec"
    #: Environment variables set for launched processes.
    env: dict[str, str] = field(default_factory=dict)
    #: Regular expressions (searched in each line) of known log noise: matching lines are
    #: hidden from the console and kept in ``<run dir>/filtered.log``.
    filters: list[str] = field(default_factory=list)
    #: Regular expressions of output that marks a bad node. A named group ``host`` names the
    #: node (a host name or an address); without it, the node of the rank that printed the line.
    bad_node_patterns: list[str] = field(default_factory=list)
    #: Import mpi4py before torch (needed on Polaris).
    import_mpi4py_first: bool = False

    def __post_init__(self) -> None:
        if self.mpiexec_flavor not in ("pals", "hydra"):
            raise ConfigError(f"machine.mpiexec_flavor: {self.mpiexec_flavor!r} is not a flavour "
                              "(choose pals for Cray PALS or hydra for MPICH)")
        if self.node_starter not in ("mpiexec", "srun"):
            raise ConfigError(f"machine.node_starter: {self.node_starter!r} is not supported "
                              "(choose mpiexec or srun)")
        if self.gpus_per_node is not None and self.gpus_per_node < 0:
            raise ConfigError(f"machine.gpus_per_node: must be 0 or more, got {self.gpus_per_node}")
        check_regexes("machine.filters", self.filters)
        check_regexes("machine.bad_node_patterns", self.bad_node_patterns)


@dataclass
class LauncherConfig:
    """How processes are started (``conf/launcher/*.yaml``)."""

    #: mpiexec, torchrun or srun.
    name: str = "mpiexec"
    #: Node list file; default: PBS_NODEFILE / HOSTFILE / Slurm / localhost.
    hostfile: Optional[str] = None
    #: A file of hosts to leave out (one per line), e.g. the <dst>.failed-hosts of a partial transfer.
    exclude_hosts: Optional[str] = None
    #: Total processes (GPUs) to use; any subset of ngpus/nhosts/ngpu_per_host may be given.
    ngpus: Optional[int] = None
    nhosts: Optional[int] = None
    ngpu_per_host: Optional[int] = None
    verbose: bool = False
    #: Print the exact command and run nothing.
    dry_run: bool = False
    #: Regular expressions (searched in each line) of output to hide from the console (kept in
    #: ``<run dir>/filtered.log``). null: the machine's filters; a list replaces them; []: none.
    filters: Optional[list[str]] = None
    #: Extra arguments for the launcher itself, placed before the command.
    extra_args: list[str] = field(default_factory=list)
    #: An argv prefix put in front of the command on every process (container, numactl, ...).
    wrap: list[str] = field(default_factory=list)
    #: torchrun rendezvous port and id (id defaults to the job id); MASTER_PORT under mpiexec/srun.
    rdzv_port: int = 29500
    rdzv_id: Optional[str] = None
    #: Seconds without any output from the job before it is stopped (exit 124); null: never.
    idle_timeout: Optional[float] = None
    #: Times a failed job is run again (each attempt is logged with its exit code and cause).
    retries: int = 0
    #: Seconds before the first rerun; doubles for every further one.
    retry_delay: float = 10.0
    #: Hosts of the job held back as spares: a host found bad is replaced by one and the job
    #: relaunched (up to ``spares`` replacements, on top of ``retries``).
    spares: int = 0
    #: Seconds the job gets to exit after a forwarded signal or an idle stop before it is killed.
    grace: float = 10.0
    #: Prefix each line of output with the rank that printed it (``3: ...``).
    label: bool = False
    #: Run each rank under ezpz's rank wrapper (whole lines, labels, the DDP environment under
    #: mpiexec/srun, a record of how a failed rank ended).
    rank_wrapper: bool = True

    def __post_init__(self) -> None:
        if self.name not in ("mpiexec", "torchrun", "srun"):
            raise ConfigError(
                f"launcher.name: {self.name!r} is not a launcher (choose mpiexec, torchrun or srun)")
        for key in ("ngpus", "nhosts", "ngpu_per_host"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"launcher.{key}: must be at least 1, got {value}")
        for key in ("retries", "spares"):
            if getattr(self, key) < 0:
                raise ConfigError(f"launcher.{key}: must be 0 or more, got {getattr(self, key)}")
        for key in ("retry_delay", "grace"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"launcher.{key}: must be 0 or more seconds, got {value}")
        if self.idle_timeout is not None and not (math.isfinite(self.idle_timeout)
                                                  and self.idle_timeout > 0):
            raise ConfigError(f"launcher.idle_timeout: must be more than 0 seconds, got "
                              f"{self.idle_timeout} (null turns the watchdog off)")
        if not 0 < self.rdzv_port < 65536:
            raise ConfigError(f"launcher.rdzv_port: {self.rdzv_port} is not a TCP port (1-65535)")
        if self.label and not self.rank_wrapper:
            raise ConfigError("launcher.label=true needs launcher.rank_wrapper=true (the wrapper "
                              "adds the labels)")
        check_regexes("launcher.filters", self.filters)


#: Longest ``transfer.timeout`` (seconds): one day. Any single wait of a transfer that takes
#: longer is a hang, not a slow node.
TIMEOUT_MAX = 86400.0
#: Default of ``transfer.memory_budget``: what the broadcast buffers of one rank may take.
MEMORY_BUDGET = "256MiB"
#: Most chunks in flight (``transfer.depth``) and repeats of a sweep point.
DEPTH_MAX = 1024
REPEAT_MAX = 1000
#: Longest name (bytes) of ``transfer.dst``: ezpz adds its own suffixes next to it (lock,
#: staging) and a file name has at most 255 bytes.
DST_NAME_MAX = 200


#: Characters a destination may not contain: activation scripts cannot quote them safely.
SHELL_SPECIAL = frozenset("'\"$`\\")


def unsafe_characters(path: str) -> str | None:
    """The characters of ``path`` an activation script cannot quote safely (quotes, ``$``,
    backslash, backquote, control characters), as a readable list; None when there are none."""
    bad = sorted({c for c in path if c in SHELL_SPECIAL or ord(c) < 32 or ord(c) == 127})
    if not bad:
        return None
    return " ".join(repr(c)[1:-1] if ord(c) < 32 or ord(c) == 127 else c for c in bad)


def check_dst_path(dst: str, key: str = "transfer.dst") -> None:
    """A destination must be absolute, quotable by activation scripts, and not one of
    ezpz's own names. Raises :class:`ConfigError` naming ``key``."""
    if not dst:
        raise ConfigError(f"{key}: is empty; give an absolute node-local path such as "
                          "/tmp/<name>, or leave it out for the default")
    bad = unsafe_characters(dst)
    if bad:
        raise ConfigError(f"{key}: {dst!r} contains {bad}, which activation scripts cannot "
                          "quote safely; choose a path without quotes, $, backslash, "
                          "backquote or control characters")
    if not dst.startswith("/"):
        raise ConfigError(f"{key}: {dst!r} is relative, so it would depend on each node's "
                          "current directory; give an absolute node-local path such as "
                          "/tmp/<name>")
    name = dst.rstrip("/").rsplit("/", 1)[-1]
    if ".ezpz-" in name:
        raise ConfigError(f"{key}: {dst!r}: names containing '.ezpz-' are ezpz's own (locks, "
                          "staging); choose another name")
    if len(name.encode("utf-8", "surrogateescape")) > DST_NAME_MAX:
        raise ConfigError(f"{key}: the name {name[:40]!r}... is longer than {DST_NAME_MAX} "
                          "bytes; choose a shorter name")


def check_seconds(value: Any, key: str, *, maximum: float = TIMEOUT_MAX) -> float:
    """A finite, positive number of seconds no larger than ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: {value!r} is not a number of seconds")
    if not math.isfinite(value) or not 0 < value <= maximum:
        raise ConfigError(f"{key}: must be more than 0 and at most {maximum:g} seconds, got "
                          f"{value!r}")
    return float(value)


@dataclass
class TransferConfig:
    """The per-node transfer (``conf/transfer/*.yaml``)."""

    #: Archive (or any file with decompress=false) on the shared filesystem.
    src: Optional[str] = None
    #: Where it lands on every node (absolute); default /tmp/ezpz-<user>/<environment name>.
    dst: Optional[str] = None
    decompress: bool = True
    #: Broadcast chunk size: 64MiB, 1GiB, 512KB or bytes.
    chunk_size: str = "16MiB"
    #: Chunks in flight between reader, broadcast and extraction.
    depth: int = 4
    #: What writes the checked tar stream: python (default) or tar (GNU tar through a pipe).
    extractor: Engine = Engine.python
    #: Threads each node's extraction may use for decoding and file writes: auto (the cores
    #: the rank may run on, from its affinity mask, at most 8) or a number (1: one decode
    #: thread beside one writer, as before).
    threads: str = "auto"
    #: auto (mpi, or torch under torchrun), mpi, or torch.
    backend: Backend = Backend.auto
    #: Also leave the archive file itself in dst's parent directory.
    keep_archive: bool = False
    #: Replace an older ezpz install at dst (never anything ezpz did not install).
    overwrite: bool = False
    verify: bool = True
    #: Rewrite the environment's old prefix to dst after extraction.
    relocate: bool = True
    #: Seconds any collective wait may take before the node gives up (at most one day).
    timeout: float = 600.0
    #: What the broadcast buffers of one rank (chunk_size x depth) may take.
    memory_budget: str = MEMORY_BUDGET
    #: Times each sweep point is repeated (for medians). In a multirun (-m), repeat=k>1 adds
    #: the sweep transfer.repeat_index=0,...,k-1, so each point runs as k jobs.
    repeat: int = 1
    #: Which repeat of its sweep point this run is (set by the sweep; groups runs in reports).
    repeat_index: int = 0
    #: Succeed when at least this many nodes (or this fraction) succeeded; default: all.
    min_success_nodes: Optional[int] = None
    min_success_fraction: Optional[float] = None
    #: Deliveries again after a partial or failed one, each on the hosts that do not hold the
    #: environment yet (nodes holding the verified tree skip).
    retries: int = 1

    def __post_init__(self) -> None:
        n = parse_size(self.chunk_size, "transfer.chunk_size")
        if n <= 0:
            raise ConfigError(f"transfer.chunk_size: {self.chunk_size!r} must be greater than 0")
        self.backend = choice(Backend, self.backend, "transfer.backend")
        self.extractor = choice(Engine, self.extractor, "transfer.extractor")
        if self.src is not None and not str(self.src).strip():
            raise ConfigError("transfer.src: is empty; give the archive (or the environment "
                              "directory to pack), or leave it out to pack the running one")
        if self.dst is not None:
            check_dst_path(self.dst)
        if not 1 <= self.depth <= DEPTH_MAX:
            raise ConfigError(f"transfer.depth: must be 1 to {DEPTH_MAX}, got {self.depth}")
        self.threads = str(self.threads).strip().lower()
        parse_threads(self.threads)  # checked here; auto is resolved on each node
        self.timeout = check_seconds(self.timeout, "transfer.timeout")
        budget = parse_size(self.memory_budget, "transfer.memory_budget")
        if n * self.depth > budget:
            raise ConfigError(
                f"transfer.chunk_size x transfer.depth = {format_size(n)} x {self.depth} = "
                f"{format_size(n * self.depth)} is more than transfer.memory_budget="
                f"{self.memory_budget} (every rank holds depth chunks); lower chunk_size or "
                "depth, or raise transfer.memory_budget")
        if not 1 <= self.repeat <= REPEAT_MAX:
            raise ConfigError(f"transfer.repeat: must be 1 to {REPEAT_MAX}, got {self.repeat}")
        if self.repeat_index < 0:
            raise ConfigError(
                f"transfer.repeat_index: must be 0 or more, got {self.repeat_index}")
        if self.repeat_index >= REPEAT_MAX:
            raise ConfigError(f"transfer.repeat_index: must be less than {REPEAT_MAX}, got "
                              f"{self.repeat_index}")
        if self.min_success_nodes is not None and self.min_success_nodes < 1:
            raise ConfigError(
                f"transfer.min_success_nodes: must be at least 1, got {self.min_success_nodes}")
        f = self.min_success_fraction
        if f is not None and not (0 < f <= 1):
            raise ConfigError(f"transfer.min_success_fraction: must be in (0, 1], got {f}")
        if self.retries < 0:
            raise ConfigError(f"transfer.retries: must be 0 or more, got {self.retries}")

    @property
    def chunk_bytes(self) -> int:
        return parse_size(self.chunk_size, "transfer.chunk_size")

    @property
    def threads_count(self) -> int:
        """``threads`` as a number; 0 for ``auto``, which each node resolves
        (:func:`ezpz.extract.decode.resolve_threads`)."""
        return parse_threads(self.threads)


#: The most threads ``transfer.threads=auto`` takes, and the most a number may ask for.
EXTRACT_THREADS_AUTO = 8
EXTRACT_THREADS_MAX = 256


def parse_threads(value: Any) -> int:
    """``transfer.threads``: ``auto`` → 0, else a number from 1 to EXTRACT_THREADS_MAX."""
    text = str(value).strip().lower()
    if text == "auto":
        return 0
    if not text.isdigit() or not 1 <= int(text) <= EXTRACT_THREADS_MAX:
        raise ConfigError(f"transfer.threads: {value!r} is not auto or a number from 1 to "
                          f"{EXTRACT_THREADS_MAX}")
    return int(text)


@dataclass
class EnvSpec:
    #: Environment to pack; default: the running interpreter's sys.prefix.
    prefix: Optional[str] = None
    #: Also pack the interpreter the venv points at, when it lives outside the venv.
    bundle_python: bool = False
    #: A venv made with --system-site-packages: pack the base's site-packages into the
    #: archive too, so that the delivered venv no longer reads them from the base.
    include_system_site: bool = False
    #: Pack editable installs anyway (their code stays in the source directory, which the
    #: nodes then read); without it an environment with editable installs is refused.
    allow_editable: bool = False


#: Most compression threads ``archive.threads`` may ask for.
THREADS_MAX = 1024


@dataclass
class ArchiveSpec:
    #: Output file; default <env-parent>/<env-name>.tar.<ext>.
    path: Optional[str] = None
    codec: Codec = Codec.zstd
    #: Compression level; default per codec (zstd 3, gzip 6).
    level: Optional[int] = None
    #: Compression threads; 0 = all cores.
    threads: int = 0

    def __post_init__(self) -> None:
        self.codec = choice(Codec, self.codec, "archive.codec")
        if self.level is not None:
            lo, hi = {Codec.zstd: (1, 22), Codec.gzip: (1, 9), Codec.none: (0, 0)}[self.codec]
            if not lo <= self.level <= hi:
                raise ConfigError(
                    f"archive.level: {self.level} is out of range for {self.codec} ({lo}..{hi})")
        if not 0 <= self.threads <= THREADS_MAX:
            raise ConfigError(f"archive.threads: must be 0 (all cores) to {THREADS_MAX}, got "
                              f"{self.threads}")
        if self.path is not None and not str(self.path).strip():
            raise ConfigError("archive.path: is empty; give the archive's file name, or leave "
                              "it out for <env-parent>/<env-name>.tar.<ext>")


@dataclass
class TarEnvConfig:
    """Primary config of ``ezpz-tar-env``."""

    env: EnvSpec = field(default_factory=EnvSpec)
    archive: ArchiveSpec = field(default_factory=ArchiveSpec)
    #: Glob patterns (relative to the environment) left out of the archive.
    exclude: list[str] = field(default_factory=list)
    overwrite: bool = False
    skip_unreadable: bool = False


@dataclass
class YeetConfig:
    """Primary config of ``ezpz-yeet-env`` and of the worker ``python -m ezpz.transfer``."""

    machine: MachineConfig = field(default_factory=MachineConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    #: Used when transfer.src is omitted or a directory and the env must be packed first.
    tar_env: TarEnvConfig = field(default_factory=TarEnvConfig)


@dataclass
class LaunchConfig:
    """Primary config of ``ezpz-launch``."""

    machine: MachineConfig = field(default_factory=MachineConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    #: The command to run on every process (or give it after ``--``).
    cmd: list[str] = field(default_factory=list)
    #: With ``transfer.src`` set: deliver that environment to every node first and run the
    #: command with it first on PATH (``ezpz-launch transfer.src=env.tar.zst -- python x.py``).
    transfer: TransferConfig = field(default_factory=TransferConfig)


def unknown_keys(data: Any, schema: type, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, schema name)`` of every key of the plain mapping ``data`` that the
    dataclass ``schema`` (and the dataclasses it nests) does not define."""
    import dataclasses

    if not isinstance(data, dict) or not dataclasses.is_dataclass(schema):
        return []
    fields = {f.name: f for f in dataclasses.fields(schema)}
    out: list[tuple[str, str]] = []
    for key, value in data.items():
        where = f"{prefix}{key}"
        f = fields.get(str(key))
        if f is None:
            out.append((where, schema.__name__))
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        if dataclasses.is_dataclass(default):
            out += unknown_keys(value, type(default), where + ".")
    return out


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent; imports Hydra lazily)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="schema", name="machine", node=MachineConfig, provider="ezpz")
    cs.store(group="schema", name="launcher", node=LauncherConfig, provider="ezpz")
    cs.store(group="schema", name="transfer", node=TransferConfig, provider="ezpz")
    cs.store(group="schema", name="tar_env", node=TarEnvConfig, provider="ezpz")
    cs.store(group="schema", name="yeet", node=YeetConfig, provider="ezpz")
    cs.store(group="schema", name="launch", node=LaunchConfig, provider="ezpz")
