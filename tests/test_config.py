"""Config composition, schema errors, sizes and machine detection (nothing is run)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ezpz.cli.common import (
    compose,
    config_options,
    resolve_machine,
    split_argv,
    to_settings,
    validate_overrides,
)
from ezpz.config import (
    LaunchConfig,
    TarEnvConfig,
    TransferConfig,
    YeetConfig,
    format_size,
    parse_size,
)
from ezpz.errors import ConfigError
from ezpz.launch.hosts import detect_machine, short_hostname

MACHINES = ["local", "aurora", "sunspot", "polaris", "slurm"]
LAUNCHERS = ["mpiexec", "torchrun", "srun"]


def test_groups_have_the_expected_options():
    assert config_options("machine") == sorted(MACHINES)
    assert config_options("launcher") == sorted(LAUNCHERS)
    assert config_options("transfer") == ["default"]


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_machine_and_launcher_composes(machine, launcher):
    cfg = compose("yeet", [f"machine={machine}", f"launcher={launcher}"])
    settings = to_settings(cfg)
    assert isinstance(settings, YeetConfig)
    assert settings.machine.name == machine
    assert settings.launcher.name == launcher
    assert settings.transfer.chunk_bytes == 16 * 1024**2
    launch = to_settings(compose("launch", [f"machine={machine}", f"launcher={launcher}"]))
    assert isinstance(launch, LaunchConfig) and launch.machine.name == machine


def test_presets_carry_machine_facts():
    aurora = to_settings(compose("yeet", ["machine=aurora"])).machine
    assert aurora.gpus_per_node == 12 and aurora.device == "xpu"
    assert aurora.mpiexec_flags == ["--no-vni"]
    assert aurora.cpu_bind.startswith("verbose,list:2-4:10-12")
    assert aurora.env["ZE_FLAT_DEVICE_HIERARCHY"] == "FLAT"
    ccl = ("2025:01:28-08:07:38:(115657) |CCL_WARN| did not find MPI-launcher specific "
           "variables, switch to ATL/OFI, to force enable ATL/MPI set CCL_ATL_TRANSPORT=mpi")
    assert any(re.search(f, ccl) for f in aurora.filters)
    sunspot = to_settings(compose("yeet", ["machine=sunspot"])).machine
    assert (sunspot.cpu_bind, sunspot.mpiexec_flags, sunspot.filters) == \
        (aurora.cpu_bind, aurora.mpiexec_flags, aurora.filters)
    polaris = to_settings(compose("yeet", ["machine=polaris"])).machine
    assert (polaris.gpus_per_node, polaris.device, polaris.dist_backend) == (4, "cuda", "nccl")
    assert polaris.cpu_bind == "depth" and polaris.import_mpi4py_first


def test_overrides_reach_the_dataclasses():
    s = to_settings(compose("yeet", ["transfer.chunk_size=1GiB", "transfer.memory_budget=4GiB",
                                     "transfer.src=/a b/c.tar.zst",
                                     "launcher.hostfile=\"/x'; echo y\"", "machine.cpu_bind=depth"]))
    assert s.transfer.chunk_bytes == 1024**3
    assert s.transfer.src == "/a b/c.tar.zst"
    assert s.launcher.hostfile == "/x'; echo y"
    assert s.machine.cpu_bind == "depth"
    assert to_settings(compose("yeet", ["transfer.chunk_size=4096"])).transfer.chunk_bytes == 4096


def test_tar_env_config_composes():
    s = to_settings(compose("tar_env", ["archive.codec=gzip", "archive.level=9"]))
    assert isinstance(s, TarEnvConfig) and s.archive.codec == "gzip" and s.archive.level == 9


@pytest.mark.parametrize("override, message", [
    ("transfer.chunk_size=abc",
     "transfer.chunk_size: 'abc' is not a size (use e.g. 64MiB, 1GiB, 512KB or bytes)"),
    ("transfer.chunk_size=0", "transfer.chunk_size: '0' must be greater than 0"),
    ("transfer.chunk_size=-5", "transfer.chunk_size: '-5' must not be negative"),
    ("transfer.foo=1",
     "transfer.foo: unknown key (Key 'foo' not in 'TransferConfig'); see --cfg job for the valid keys"),
    ("machine=foo", "machine=foo: no such machine (choose one of: aurora, local, polaris, slurm, sunspot)"),
    ("launcher=nope", "launcher=nope: no such launcher (choose one of: mpiexec, srun, torchrun)"),
    ("transfer.depth=x", "transfer.depth: Value 'x' of type 'str' could not be converted to Integer"),
    ("transfer.threads=2.5", "transfer.threads: '2.5' is not auto or a number from 1 to 256"),
    ("transfer.backend=xyz", "transfer.backend: 'xyz' is not a backend (choose auto, mpi or torch)"),
    ("transfer.overwrite=maybe", "transfer.overwrite: Value 'maybe' is not a valid bool (type str)"),
    ("machine.mpiexec_flavor=openmpi", "machine.mpiexec_flavor: 'openmpi' is not a flavour "
     "(choose pals for Cray PALS or hydra for MPICH)"),
    ("machine.node_starter=ssh", "machine.node_starter: 'ssh' is not supported (choose mpiexec or srun)"),
    ("machine.gpus_per_node=-1", "machine.gpus_per_node: must be 0 or more, got -1"),
])
def test_schema_errors_are_one_clear_line(override, message):
    with pytest.raises(ConfigError) as info:
        validate_overrides("yeet", [override], multirun=False)
    assert str(info.value) == message


def test_tar_env_schema_errors():
    with pytest.raises(ConfigError, match=r"archive.codec: 'lz4' is not a codec"):
        validate_overrides("tar_env", ["archive.codec=lz4"], multirun=False)
    with pytest.raises(ConfigError, match=r"archive.level: 30 is out of range for zstd \(1..22\)"):
        validate_overrides("tar_env", ["archive.level=30"], multirun=False)


def test_sweep_overrides_are_validated_on_their_first_value():
    validate_overrides("yeet", ["transfer.chunk_size=4MiB,16MiB"], multirun=True)
    with pytest.raises(ConfigError, match="chunk_size"):
        validate_overrides("yeet", ["transfer.chunk_size=zz,16MiB"], multirun=True)


@pytest.mark.parametrize("text, expected", [
    ("64MiB", 64 * 1024**2), ("1GiB", 1024**3), ("512KB", 512_000), ("512kb", 512_000),
    ("4096", 4096), (4096, 4096), ("1.5MiB", int(1.5 * 1024**2)), ("2 MB", 2_000_000),
    ("0", 0), ("10b", 10), ("3k", 3000),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["abc", "12XB", "", "MiB", True, "1.2.3"])
def test_parse_size_rejects(bad):
    with pytest.raises(ConfigError, match="is not a size"):
        parse_size(bad, "k")


def test_format_size():
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3 * 1024**3) == "3.0 GiB"


@pytest.mark.parametrize("host, env, expected", [
    ("x4711c1s2b0n0", {}, "aurora"),
    ("x4711c1s2b0n0.hostmgmt2711.cm.aurora.alcf.anl.gov", {}, "aurora"),
    ("x1921c7s1b0n0-hsn0.hsn.cm.sunspot.alcf.anl.gov", {}, "sunspot"),
    ("uan-0001", {}, "sunspot"),
    ("x3006c0s13b1n0", {}, "polaris"),
    ("polaris-login-02", {}, "polaris"),
    ("mylaptop", {}, "local"),
    ("node17", {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[17-18]"}, "slurm"),
    ("x4000c0s0b0n0", {"SLURM_JOB_ID": "42"}, "aurora"),
    ("login1", {"PBS_O_HOST": "x3001c0s1b0n0.hsn.cm.polaris.alcf.anl.gov"}, "polaris"),
])
def test_detect_machine(host, env, expected):
    assert detect_machine(host, env) == expected


def test_short_hostname():
    assert short_hostname("x1921c7s1b0n0-hsn0.hsn.cm.sunspot.alcf.anl.gov") == "x1921c7s1b0n0"
    assert short_hostname("x4711c1s2b0n0.hostmgmt2711.cm.aurora.alcf.anl.gov") == "x4711c1s2b0n0"


def test_machine_auto_is_resolved_in_argv():
    out, name = resolve_machine(["transfer.src=a"], environ={})
    assert out[0] == f"machine={name}" and out[1:] == ["transfer.src=a"]
    out, name = resolve_machine(["machine=polaris"], environ={})
    assert out == ["machine=polaris"] and name is None
    out, name = resolve_machine(["machine=auto"], environ={"SLURM_JOB_ID": "1"})
    if name != "slurm":  # this host itself may look like an ALCF machine
        assert name in ("aurora", "sunspot", "polaris")
    assert out == [f"machine={name}"]


def test_split_argv():
    split = split_argv(["--cfg", "job", "-m", "a=1", "b=2,3", "--help"])
    assert split.flags == ["--cfg", "job", "-m", "--help"]
    assert split.overrides == ["a=1", "b=2,3"] and split.multirun


def _cli(*args, cwd=None):
    exe = [sys.executable, "-c", "import sys; from ezpz.cli.yeet_env import main; sys.exit(main())"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, cwd=cwd)


def test_cli_prints_composed_config(tmp_path):
    p = _cli("--cfg", "job", "machine=polaris", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "name: polaris" in p.stdout and "chunk_size: 16MiB" in p.stdout


def test_cli_help_lists_groups(tmp_path):
    p = _cli("--help", cwd=tmp_path)
    assert p.returncode == 0
    assert "machine: aurora, local, polaris, slurm, sunspot" in p.stdout
    assert "launcher: mpiexec, srun, torchrun" in p.stdout
    assert "transfer: default" in p.stdout


def test_cli_bad_override_is_one_line_exit_2(tmp_path):
    p = _cli("transfer.chunk_size=abc", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "error: transfer.chunk_size: 'abc' is not a size (use e.g. 64MiB, 1GiB, 512KB or bytes)"]
    assert not (tmp_path / "outputs").exists(), "a refused run must not create a run dir"


def test_hydra_interpolations_are_left_to_hydra():
    # ${hydra:...} resolves only inside a Hydra run; validation must not refuse it.
    assert validate_overrides("yeet", ["transfer.dst=/tmp/x-${hydra:job.num}"], multirun=True) is None


def test_user_errors_reach_the_run_log(tmp_path):
    from ezpz import log as ezlog
    from ezpz.cli.common import guard
    from ezpz.errors import TransferError

    logfile = tmp_path / "app.log"
    ezlog.setup_logging(rank=0, logfile=str(logfile))
    try:
        def task():
            raise TransferError("node3: no space left on /tmp")

        assert guard(task)() == 1
    finally:
        ezlog.setup_logging()
    assert "error: node3: no space left on /tmp" in logfile.read_text()


@pytest.mark.parametrize("host", ["x1-carbon", "x3550m5", "x4", "xenon"])
def test_ordinary_hosts_starting_with_x_are_not_alcf_nodes(host):
    assert detect_machine(host, {}) == "local"


def test_worker_help_loads_no_heavy_module(tmp_path):
    """``python -m ezpz.transfer --help`` is the worker's start-up figure: it lists the groups
    without loading torch, Hydra, OmegaConf or MPI."""
    code = ("import runpy, sys; sys.argv = ['ezpz.transfer', '--help']\n"
            "try:\n    runpy.run_module('ezpz.transfer', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'hydra', 'omegaconf', 'mpi4py'})\n"
            "print('HEAVY', heavy)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "launcher: mpiexec, srun, torchrun" in p.stdout
    assert "--cfg job" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == "HEAVY []"


# --------------------------------------------------------------------------------------
# transfer values checked in the schema
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, needle", [
    ({"timeout": float("nan")}, r"transfer.timeout: must be more than 0 and at most 86400 "
                                r"seconds, got nan"),
    ({"timeout": float("inf")}, r"transfer.timeout: .* got inf"),
    ({"timeout": 1e30}, r"transfer.timeout: .* got 1e\+30"),
    ({"timeout": -1.0}, r"transfer.timeout: .* got -1.0"),
    ({"timeout": True}, r"transfer.timeout: True is not a number of seconds"),
    ({"depth": 0}, r"transfer.depth: must be 1 to 1024, got 0"),
    ({"depth": 2000}, r"transfer.depth: must be 1 to 1024, got 2000"),
    ({"threads": "0"}, r"transfer.threads: '0' is not auto or a number from 1 to 256"),
    ({"threads": 257}, r"transfer.threads: '257' is not auto or a number from 1 to 256"),
    ({"threads": "-2"}, r"transfer.threads: '-2' is not auto"),
    ({"threads": "half"}, r"transfer.threads: 'half' is not auto"),
    ({"chunk_size": "3GiB"}, r"3.0 GiB x 4 = 12.0 GiB is more than transfer.memory_budget"),
    ({"chunk_size": "1MiB", "memory_budget": "1KiB"}, r"1.0 MiB x 4 = 4.0 MiB is more than"),
    ({"memory_budget": "lots"}, r"transfer.memory_budget: 'lots' is not a size"),
    ({"repeat": 5000}, r"transfer.repeat: must be 1 to 1000"),
    ({"repeat_index": 1000}, r"transfer.repeat_index: must be less than 1000"),
    ({"src": "  "}, r"transfer.src: is empty"),
    ({"dst": ""}, r"transfer.dst: is empty"),
    ({"dst": "envs/x"}, r"transfer.dst: 'envs/x' is relative"),
    ({"dst": "/tmp/a b'c"}, r"transfer.dst: .* contains ', which activation scripts"),
    ({"dst": "/tmp/a\tb"}, r"contains \\t"),
    ({"dst": "/tmp/.x.ezpz-lock"}, r"names containing '.ezpz-' are ezpz's own"),
    ({"dst": "/tmp/" + "é" * 101}, r"is longer than 200 bytes"),
])
def test_transfer_values_are_checked_in_the_schema(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        TransferConfig(**kw)


def test_schema_accepts_the_edges():
    assert TransferConfig(timeout=86400).timeout == 86400.0
    assert TransferConfig(chunk_size="64MiB", depth=4).chunk_bytes == 64 << 20
    assert TransferConfig(chunk_size="1GiB", memory_budget="4GiB").chunk_bytes == 1 << 30
    assert TransferConfig(dst="/tmp/with space/é").dst == "/tmp/with space/é"
    assert TransferConfig(threads=256).threads_count == 256
    assert TransferConfig(threads=" Auto ").threads == "auto"
    assert TransferConfig().threads_count == 0  # auto: each node decides


def test_unknown_keys_are_found_at_any_depth():
    from ezpz.config import YeetConfig, unknown_keys

    data = {"transfer": {"src": None, "foo": 1}, "machine": {"env": {"ANY": "1"}},
            "tar_env": {"archive": {"bar": 2}}, "baz": 3}
    assert unknown_keys(data, YeetConfig) == [("transfer.foo", "TransferConfig"),
                                              ("tar_env.archive.bar", "ArchiveSpec"),
                                              ("baz", "YeetConfig")]
