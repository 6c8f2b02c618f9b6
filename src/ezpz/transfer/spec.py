"""What a transfer's ranks are handed and what they hand back: typed, JSON on the wire.

- :class:`WorkerSpec`: everything a rank needs, resolved once on the launching host (backend
  decided, paths absolute, sizes in bytes) and written to the run directory; ranks read it
  without Hydra or OmegaConf.
- :class:`Plan`: rank 0's view of the source (size, identity, codec, manifest facts).
- :class:`NodeStatus`, :class:`TransferResult`: per-node outcome, and the run's.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..config import EXTRACT_THREADS_MAX, Backend, Engine, MachineConfig, Status, TransferConfig
from ..errors import ConfigError

#: The file of the run directory ``ezpz-yeet-env`` hands to every rank.
SPEC_FILE = "worker-spec.json"
#: The run's outcome, written by rank 0 into the run directory.
RESULTS_FILE = "results.json"
#: Schema version of the spec file.
SPEC_VERSION = 1
#: Codec of a plan: an archive codec, or ``file`` (decompress=false: delivered as it is).
PLAN_CODECS = ("zstd", "gzip", "none", "file")


@dataclass(frozen=True)
class WorkerSpec:
    """One transfer, resolved: what every rank of the job reads."""

    src: str
    dst: str
    backend: Backend
    chunk_bytes: int
    depth: int = 4
    decompress: bool = True
    engine: Engine = Engine.python
    #: Extraction threads per node (decode and file writes); 0: auto, resolved on the node.
    threads: int = 0
    keep_archive: bool = False
    overwrite: bool = False
    verify: bool = True
    relocate: bool = True
    timeout: float = 600.0
    min_success_nodes: int | None = None
    min_success_fraction: float | None = None
    #: torch.distributed backend and device for ``backend=torch`` (from the machine preset).
    dist_backend: str = "gloo"
    device: str = "cpu"
    machine: str = "local"
    launcher: str | None = None
    #: The user's ``transfer`` settings as given, recorded in ``results.json``.
    settings: dict[str, Any] = field(default_factory=dict)
    #: The run that wrote this spec; the worker is started with ``--run-id`` and refuses a
    #: spec of another run (two runs writing into one run directory).
    run_id: str | None = None

    # -- building ----------------------------------------------------------------------
    @classmethod
    def from_settings(cls, transfer: TransferConfig, *, src: str, dst: str, backend: Backend,
                      machine: MachineConfig | None = None,
                      launcher: str | None = None) -> WorkerSpec:
        """The spec for ``transfer`` with ``src``/``dst`` made absolute and ``backend``
        already decided (``auto`` resolved)."""
        if backend is Backend.auto:
            raise ConfigError("internal: the worker spec needs a decided backend, not auto")
        m = machine or MachineConfig()
        return cls(src=os.path.abspath(src), dst=os.path.abspath(dst), backend=backend,
                   chunk_bytes=transfer.chunk_bytes, depth=transfer.depth,
                   decompress=transfer.decompress, engine=transfer.extractor,
                   threads=transfer.threads_count,
                   keep_archive=transfer.keep_archive, overwrite=transfer.overwrite,
                   verify=transfer.verify, relocate=transfer.relocate,
                   timeout=float(transfer.timeout),
                   min_success_nodes=transfer.min_success_nodes,
                   min_success_fraction=transfer.min_success_fraction,
                   dist_backend=m.dist_backend, device=m.device, machine=m.name,
                   launcher=launcher, settings=_plain(asdict(transfer)))

    # -- the file ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"version": SPEC_VERSION, **_plain(asdict(self))}

    @classmethod
    def from_json(cls, data: Any, origin: str = "spec") -> WorkerSpec:
        """Check every field's type (the file crossed a filesystem): ConfigError otherwise."""
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: not a worker spec (a JSON object is expected)")
        data = dict(data)
        if data.pop("version", None) != SPEC_VERSION:
            raise ConfigError(f"{origin}: written by another ezpz version (spec version "
                              f"{SPEC_VERSION} expected); run ezpz-yeet-env again")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{origin}: unknown field(s) {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            kwargs[name] = _check_field(name, value, origin)
        for name in ("src", "dst", "backend", "chunk_bytes"):
            if name not in kwargs:
                raise ConfigError(f"{origin}: missing field {name!r}")
        return cls(**kwargs)

    def write(self, path: str) -> None:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(self.to_json(), fh, indent=1)
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: str) -> WorkerSpec:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(1 << 20)
        except OSError as exc:
            raise ConfigError(f"--spec: cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"--spec: {path} is not JSON ({exc})") from None
        return cls.from_json(data, origin=path)


_INTS = {"chunk_bytes", "depth"}
_BOOLS = {"decompress", "keep_archive", "overwrite", "verify", "relocate"}
_STRS = {"src", "dst", "dist_backend", "device", "machine"}


def _check_field(name: str, value: Any, origin: str) -> Any:
    bad = ConfigError(f"{origin}: field {name!r} has a bad value {value!r}")
    if name == "backend":
        if value not in (Backend.mpi.value, Backend.torch.value):
            raise bad
        return Backend(value)
    if name == "engine":
        if value not in [e.value for e in Engine]:
            raise bad
        return Engine(value)
    if name == "threads":
        if not isinstance(value, int) or isinstance(value, bool) or \
                not 0 <= value <= EXTRACT_THREADS_MAX:
            raise bad
        return value
    if name in _INTS:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad
        return value
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise bad
        return value
    if name in _STRS or name in ("launcher", "run_id"):
        if value is None and name in ("launcher", "run_id"):
            return None
        if not isinstance(value, str) or (name in ("src", "dst") and not os.path.isabs(value)):
            raise bad
        return value
    if name == "timeout":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise bad
        return float(value)
    if name == "min_success_nodes":
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad
        return value
    if name == "min_success_fraction":
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise bad
        return None if value is None else float(value)
    if name == "settings":
        if not isinstance(value, dict):
            raise bad
        return value
    raise bad  # pragma: no cover - every field is listed above


def _plain(obj: Any) -> Any:
    """Enums as their strings, recursively (for JSON)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, str):
        return str(obj)
    return obj


@dataclass(frozen=True)
class Plan:
    """What rank 0 found at ``src``; shared with every rank before anything is written."""

    src: str
    bytes: int
    id: str
    codec: str
    #: From the archive's manifest (None without one): env kind and uncompressed file bytes.
    kind: str | None = None
    total_bytes: int | None = None

    @property
    def file_mode(self) -> bool:
        return self.codec == "file"

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Plan:
        return cls(**data)


@dataclass
class NodeStatus:
    host: str
    status: Status = Status.ok
    seconds: float = 0.0
    mb_s: float = 0.0
    error: str | None = None
    rss_mb: float = 0.0
    #: Wall-clock times (s since the epoch) at which the leader's process started (``start``),
    #: its communicator was ready (``comm``), it received the end of the stream
    #: (``stream_end``), finished extracting (``extract_end``) and installed (``done``).
    timeline: dict[str, float] = field(default_factory=dict)
    #: Bytes this node received faster than it extracted them and kept in its spill file.
    spilled: int = 0

    def fail(self, error: str) -> None:
        """Mark the node failed with ``error`` unless an earlier failure is already recorded."""
        if self.status is not Status.failed:
            self.status, self.error = Status.failed, error

    @property
    def failed(self) -> bool:
        return self.status is Status.failed

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = _plain(asdict(self))
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> NodeStatus:
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in known},
                      "status": Status(data["status"])})


@dataclass
class TransferResult:
    status: Status
    exit_code: int
    dst: str
    nodes: int
    ranks: int
    backend: str
    archive: dict[str, Any]
    phases: dict[str, float]
    per_node: list[NodeStatus] = field(default_factory=list)
    kind: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_hosts(self) -> list[str]:
        return [n.host for n in self.per_node if n.failed]
