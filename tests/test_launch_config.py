"""The launcher's reliability keys and the preset patterns: bad values end in one line (exit 2)
before anything runs or is written; the presets' filters and bad-node patterns match the
real messages they are for and leave ordinary output alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ezpz.cli.common import compose, to_settings
from ezpz.config import LauncherConfig, MachineConfig
from ezpz.errors import ConfigError, LaunchError
from ezpz.launch import compile_patterns, resolve_hosts
from ezpz.launch.hosts import HostList

PY = sys.executable


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "ezpz.cli.launch", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.fixture
def no_slurm_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_"))}


@pytest.mark.parametrize("override, message", [
    ("launcher.retries=-1", "launcher.retries: must be 0 or more, got -1"),
    ("launcher.spares=-2", "launcher.spares: must be 0 or more, got -2"),
    ("launcher.retry_delay=-0.5", "launcher.retry_delay: must be 0 or more seconds, got -0.5"),
    ("launcher.retry_delay=nan", "launcher.retry_delay: must be 0 or more seconds, got nan"),
    ("launcher.grace=-1", "launcher.grace: must be 0 or more seconds, got -1.0"),
    ("launcher.idle_timeout=0", "launcher.idle_timeout: must be more than 0 seconds, got 0.0 "
                                "(null turns the watchdog off)"),
    ("launcher.idle_timeout=-5", "launcher.idle_timeout: must be more than 0 seconds, got -5.0 "
                                 "(null turns the watchdog off)"),
    ("launcher.rdzv_port=70000", "launcher.rdzv_port: 70000 is not a TCP port (1-65535)"),
    ("launcher.retries=lots", "launcher.retries: Value 'lots' of type 'str' could not be "
                              "converted to Integer"),
    ("launcher.label=true launcher.rank_wrapper=false",
     "launcher.label=true needs launcher.rank_wrapper=true (the wrapper adds the labels)"),
    ("launcher.filters=['[W501']", "launcher.filters[0]: '[W501' is not a regular expression "
                                   "(unterminated character set at position 0); escape special "
                                   "characters with a backslash"),
    ("launcher.filters=[ok,'a|']", "launcher.filters[1]: 'a|' matches every line (it matches an "
                                   "empty string); make it more specific"),
    ("machine.filters=['|CCL_WARN|']", "machine.filters[0]: '|CCL_WARN|' matches every line (it "
                                       "matches an empty string); make it more specific"),
    ("machine.bad_node_patterns=['(?P<host>x']",
     "machine.bad_node_patterns[0]: '(?P<host>x' is not a regular expression (missing ), "
     "unterminated subpattern at position 0); escape special characters with a backslash"),
    ("launcher.spares=2", "launcher.spares=2 leaves no host to run on (the job has 2: "
                          "launcher.hostfile=HF)"),
    ("launcher.spares=1 launcher.nhosts=2",
     "2 hosts requested but the job has 1 once launcher.spares=1 are held back"),
    ("launcher=srun", "launcher=srun needs a Slurm allocation (SLURM_JOB_ID is not set): run "
                      "inside salloc or sbatch, or use launcher=mpiexec"),
    ("machine=slurm", "launcher=srun needs a Slurm allocation (SLURM_JOB_ID is not set): run "
                      "inside salloc or sbatch, or use launcher=mpiexec"),
    ("launcher=torchrun machine.node_starter=srun",
     "machine.node_starter=srun needs a Slurm allocation (SLURM_JOB_ID is not set): run inside "
     "salloc or sbatch, or use launcher=mpiexec"),
])
def test_bad_values_are_one_line_exit_2_and_nothing_is_written(tmp_path, no_slurm_env, override,
                                                              message):
    hostfile = tmp_path / "nodes"
    hostfile.write_text("localhost\n127.0.0.1\n")
    marker = tmp_path / "ran"
    work = tmp_path / "work"
    work.mkdir()
    p = _cli(f"launcher.hostfile={hostfile}", *override.split(), "--", PY, "-c",
             f"open({str(marker)!r}, 'w')", cwd=work, env=no_slurm_env)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [f"error: {message}".replace("HF", str(hostfile))]
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert not marker.exists(), "nothing may run"
    assert list(work.iterdir()) == [], "no run directory, no hostfile, nothing written"


def test_machine_slurm_defaults_to_srun_and_an_explicit_launcher_wins(tmp_path):
    p = _cli("machine=slurm", "--cfg", "job", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "name: srun" in p.stdout.split("launcher:", 1)[1]
    p = _cli("machine=slurm", "launcher=mpiexec", "--cfg", "job", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "name: mpiexec" in p.stdout.split("launcher:", 1)[1]


def test_schema_defaults_are_safe():
    lc = LauncherConfig()
    assert (lc.retries, lc.spares, lc.idle_timeout, lc.grace, lc.retry_delay) == (0, 0, None,
                                                                                   10.0, 10.0)
    assert lc.filters is None and lc.rank_wrapper and not lc.label
    for name in ("mpiexec", "torchrun", "srun"):
        composed = to_settings(compose("launch", [f"launcher={name}"])).launcher
        assert (composed.retries, composed.spares, composed.grace, composed.idle_timeout) == \
            (0, 0, 10.0, None), name


def test_pattern_checks_in_the_python_api():
    with pytest.raises(ConfigError, match=r"launcher.filters\[0\]: 'x\|' matches every line"):
        compile_patterns(["x|"])
    with pytest.raises(ConfigError, match=r"launcher.filters\[1\]: '\(' is not a regular"):
        compile_patterns(["fine", "("])
    assert [p.pattern for p in compile_patterns([re.compile("a"), "b+"])] == ["a", "b+"]
    with pytest.raises(ConfigError, match=r"machine.bad_node_patterns\[0\]: '' is not a regular"):
        MachineConfig(bad_node_patterns=[""])


def test_spares_are_held_back_from_the_topology():
    hosts = HostList(["a", "b", "c", "d"], "test")
    _, topo = resolve_hosts(MachineConfig(gpus_per_node=4), LauncherConfig(spares=1),
                            hostlist=hosts, environ={}, quiet=True)
    assert (topo.nhosts, topo.ngpu_per_host, topo.hosts_available) == (3, 4, 3)
    with pytest.raises(LaunchError, match="launcher.spares=4 leaves no host to run on"):
        resolve_hosts(MachineConfig(), LauncherConfig(spares=4), hostlist=hosts, environ={},
                      quiet=True)


# --------------------------------------------------------------------------------------
# the presets' patterns: real messages match, ordinary output does not
# --------------------------------------------------------------------------------------
XPU_NOISE = [
    "[W1106 16:55:04.833350173 OperatorEntry.cpp:218] Warning: Warning only once for all "
    "operators,  other operators may also be overridden.",
    "  Overriding a previously registered kernel for the same operator and the same dispatch key",
    "  operator: aten::geometric_(Tensor(a!) self, float p, *, Generator? generator=None) -> "
    "Tensor(a!)",
    "    registered at /lus/flare/projects/x/pytorch/build/aten/src/ATen/RegisterSchema.cpp:6",
    "  dispatch key: XPU",
    "  previous kernel: registered at /lus/flare/projects/x/pytorch/aten/src/ATen/"
    "VmapModeRegistrations.cpp:37",
    "       new kernel: registered at /build/intel-pytorch-extension/build/Release/csrc/gpu/csrc/"
    "gpu/xpu/ATen/RegisterXPU_0.cpp:186 (function operator())",
    "AttributeError: 'MessageFactory' object has no attribute 'GetPrototype'",
    "2025:01:28-08:07:38:(115657) |CCL_WARN| did not find MPI-launcher specific variables, "
    "switch to ATL/OFI, to force enable ATL/MPI set CCL_ATL_TRANSPORT=mpi",
    "2025:01:28-08:07:38:(115657) |CCL_WARN| value of CCL_LOCAL_RANK changed to be 0 "
    "(default:-1)",
    "2024:01:23-06:12:16:(153241) |CCL_WARN| could not get local_idx/count from environment "
    "variables, trying to get them from ATL",
    "PMIX ERROR: PMIX_ERR_NOT_FOUND in file dstore_base.c at line 1567",
    "PMIX ERROR: PMIX_ERROR in file dstore_base.c at line 2334",
]
USER_LINES = [
    "AttributeError: 'Trainer' object has no attribute 'step'",
    "AttributeError: 'MessageFactory' object has no attribute 'GetMessages'",
    "Traceback (most recent call last):",
    "2025:01:28-08:07:38:(115657) |CCL_ERROR| atl_ofi_comm.cpp:301 init_transport: "
    "fi_getinfo error",
    "2025:01:28-08:07:38:(115657) |CCL_WARN| CCL_ZE_IPC_EXCHANGE is not supported",
    "step 10 loss 2.31 dispatch key: XPU ready",
    "PMIX ERROR: PMIX_ERR_TIMEOUT in file client.c at line 20",
    "RuntimeError: operator: aten::foo failed",
    "CUDA out of memory. Tried to allocate 2.00 GiB",
]


@pytest.mark.parametrize("machine", ["aurora", "sunspot"])
def test_preset_filters_hide_the_known_noise_and_nothing_else(machine):
    filters = compile_patterns(to_settings(compose("launch", [f"machine={machine}"])).machine.filters)
    for line in XPU_NOISE:
        assert any(f.search(line) for f in filters), f"not hidden: {line!r}"
    for line in USER_LINES:
        assert not any(f.search(line) for f in filters), f"hidden by mistake: {line!r}"
    for f in filters:  # every preset filter is there for a real message
        assert any(f.search(line) for line in XPU_NOISE), f"unused filter {f.pattern!r}"


BAD_NODE_LINES = {
    "x4513c0s7b0n0.hsn.cm.aurora.alcf.anl.gov: shepherd died from signal 9":
        "x4513c0s7b0n0.hsn.cm.aurora.alcf.anl.gov",
    "launch failed on x4201c0s4b0n0: Couldn't forward RPC launch(abc) to child "
    "x4513c0s7b0n0.hsn.cm.aurora.alcf.anl.gov: Resource temporarily unavailable":
        "x4513c0s7b0n0.hsn.cm.aurora.alcf.anl.gov",
    "ping failed on x4713c6s2b0n0: No reply from x4410c7s1b0n0.hsn.cm.aurora.alcf.anl.gov "
    "after 97s": "x4410c7s1b0n0.hsn.cm.aurora.alcf.anl.gov",
    "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by "
    "peer [10.115.3.42]:23456": "10.115.3.42",
}
INNOCENT = [
    "x4513c0s7b0n0.hsn.cm.aurora.alcf.anl.gov: rank 12 died from signal 15",
    "x4513c0s7b0n0.hsn.cm.aurora.alcf.anl.gov: rank 3 died from signal 11",
    "launch failed on x4201c0s4b0n0: command not found",
    "epoch 3: loss 0.12",
]


@pytest.mark.parametrize("machine", ["aurora", "sunspot", "polaris"])
def test_preset_bad_node_patterns_name_the_sick_node(machine):
    patterns = compile_patterns(
        to_settings(compose("launch", [f"machine={machine}"])).machine.bad_node_patterns,
        "machine.bad_node_patterns")
    for line, host in BAD_NODE_LINES.items():
        found = [m.group("host") for p in patterns if (m := p.search(line)) and "host" in
                 p.groupindex]
        assert found == [host], line
    for line in INNOCENT:  # cascading deaths and ordinary output blame nobody
        assert not any(p.search(line) for p in patterns), line
