"""What every ezpz CLI shares: argv pre-processing, config validation, help, error mapping.

Hydra composes the config; before handing argv to it we
- resolve ``machine=auto`` (the default) to a concrete preset and log it,
- compose once with the given overrides so that a bad key, type or option ends in one line
  (exit 2) instead of Hydra's multi-line report,
- answer ``--help`` with the config groups and their options.
"""

from __future__ import annotations

import os
import secrets
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .. import log as ezlog
from ..config import Choice, choice_error
from ..errors import ConfigError, EzpzError
from ..launch.hosts import detect_machine
from .guard import fail as fail  # re-exported
from .guard import guard as guard  # re-exported

CONFIG_MODULE = "ezpz.conf"
_HYDRA_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                      "--package", "-p", "--experimental-rerun"}
_CFG_CHOICES = frozenset({"job", "hydra", "all"})
_INFO_CHOICES = frozenset({"all", "config", "defaults", "defaults-tree", "plugins",
                           "searchpath"})
#: Hydra flags whose value is optional or one of a few words: the value, when given.
_OPTIONAL_VALUE_FLAGS = {"--cfg": _CFG_CHOICES, "-c": _CFG_CHOICES,
                         "--info": _INFO_CHOICES, "-i": _INFO_CHOICES}


@dataclass
class SplitArgs:
    flags: list[str]
    overrides: list[str]
    multirun: bool


def split_argv(argv: Sequence[str]) -> SplitArgs:
    """Separate Hydra's flags from overrides (``key=value``)."""
    flags: list[str] = []
    overrides: list[str] = []
    multirun = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--multirun", "-m"):
            multirun = True
            flags.append(arg)
        elif arg in _OPTIONAL_VALUE_FLAGS:
            # --cfg job|hydra|all, --info [what]: the value is taken only when it is one of
            # the flag's choices (a bare --info before an override leaves the override alone)
            flags.append(arg)
            if i + 1 < len(args) and args[i + 1] in _OPTIONAL_VALUE_FLAGS[arg]:
                i += 1
                flags.append(args[i])
        elif arg in _HYDRA_VALUE_FLAGS:
            flags.append(arg)
            if i + 1 < len(args):
                i += 1
                flags.append(args[i])
        elif arg.startswith("-") and "=" not in arg.split("-", 2)[-1][:1]:
            flags.append(arg)
        else:
            overrides.append(arg)
        i += 1
    return SplitArgs(flags, overrides, multirun)


def config_options(group: str) -> list[str]:
    """The options of a config group, from the shipped conf/ tree."""
    root = resources.files(CONFIG_MODULE) / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_machine(overrides: list[str], environ: dict[str, str] | None = None) -> tuple[list[str], str | None]:
    """Replace a missing ``machine=`` or ``machine=auto`` by the detected preset.

    Returns the new overrides and the detected name (None when the user chose one).
    """
    out = list(overrides)
    for i, ov in enumerate(out):
        key, _, value = ov.partition("=")
        if key.lstrip("~+") == "machine":
            if value == "auto":
                name = detect_machine(environ=environ)
                out[i] = f"machine={name}"
                return out, name
            return out, None
    name = detect_machine(environ=environ)
    out.insert(0, f"machine={name}")
    return out, name


def default_launcher(overrides: list[str]) -> list[str]:
    """``machine=slurm`` (given or detected) without a ``launcher=`` choice: ``launcher=srun``."""
    keys = {o.partition("=")[0].lstrip("+~"): o.partition("=")[2] for o in overrides}
    if keys.get("machine") == "slurm" and "launcher" not in keys:
        return [*overrides, "launcher=srun"]
    return list(overrides)


def _first_sweep_values(overrides: list[str]) -> list[str]:
    """For validation of a multirun: each sweep override reduced to its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out: list[str] = []
    for text in overrides:
        ov = parser.parse_override(text)
        if ov.is_sweep_override():
            first = next(iter(ov.sweep_string_iterator()), None)
            if first is None:
                continue
            out.append(f"{ov.get_key_element()}={first}")
        else:
            out.append(text)
    return out


def describe_config_exception(exc: BaseException) -> str:
    """Turn Hydra/OmegaConf composition errors into one line."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, MissingConfigException):
        msg = str(exc)
        # "In 'yeet': Could not find 'machine/foo'\n\nAvailable options in 'machine':\n\ta\n\tb"
        import re

        m = re.search(r"Could not find '([^'/]+)/([^']+)'", msg)
        if m:
            group, option = m.groups()
            try:
                options = ", ".join(config_options(group))
            except (FileNotFoundError, NotADirectoryError):
                options = "none"
            return f"{group}={option}: no such {group} (choose one of: {options})"
        return msg.splitlines()[0]
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override: {str(exc).splitlines()[0]}"
    # Walk to the innermost OmegaConf error, which carries the key and the reason.
    inner: BaseException = exc
    seen = set()
    while inner.__cause__ is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner.__cause__, ConfigError):
            return str(inner.__cause__)
        inner = inner.__cause__
    kind = _choice_kind(inner)
    if kind is not None:
        return str(choice_error(kind, getattr(inner, "value", None),
                                str(getattr(inner, "full_key", ""))))
    full_key = getattr(inner, "full_key", None) or getattr(exc, "full_key", None)
    text = str(inner).strip().splitlines()
    reason = text[0] if text else type(inner).__name__
    if "not in" in reason and full_key:
        return f"{full_key}: unknown key ({reason}); see --cfg job for the valid keys"
    if full_key and full_key not in reason:
        return f"{full_key}: {reason}"
    return reason


def _choice_kind(exc: BaseException) -> type[Choice] | None:
    """The choice a rejected value was meant for (OmegaConf keeps the node it checked)."""
    node = getattr(exc, "child_node", None)
    current = node._value() if node is not None and hasattr(node, "_value") else None
    if isinstance(current, Choice) and getattr(exc, "full_key", None):
        return type(current)
    return None


# --------------------------------------------------------------------------------------
# the run id
# --------------------------------------------------------------------------------------
_run_id: dict[str, str] = {}


def new_run_id() -> str:
    """A short random id (8 hex digits) for one run of a command."""
    return secrets.token_hex(4)


def current_run_id() -> str:
    """This run's id: the last part of its run directory (``hydra.run.dir`` ends with
    ``<time>-<id>``, so two runs started in the same second never share a directory) and what
    ``ezpz-yeet-env`` writes into the worker's spec and gives the worker as ``--run-id``."""
    if "id" not in _run_id:
        _run_id["id"] = new_run_id()
    return _run_id["id"]


def register_run_id_resolver() -> None:
    """``${ezpz_run_id:}`` in the config tree: the current run's id."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("ezpz_run_id", current_run_id, replace=True)


def compose(config_name: str, overrides: Sequence[str] = ()) -> Any:
    """Compose a config without running anything (tests and pre-validation)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from ..config import register_configs

    register_configs()
    register_run_id_resolver()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def to_settings(cfg: Any, keys: Sequence[str] | None = None) -> Any:
    """Hydra config → schema dataclasses (``__post_init__`` validation runs here)."""
    from omegaconf import OmegaConf

    try:
        if keys is None:
            _refuse_unknown_keys(cfg)
            return OmegaConf.to_object(cfg)
        return OmegaConf.to_object(OmegaConf.masked_copy(cfg, list(keys)))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(describe_config_exception(exc)) from exc


def _refuse_unknown_keys(cfg: Any) -> None:
    """A key the schema does not define (``+transfer.foo=1`` adds one that OmegaConf would
    silently drop): one line naming it."""
    from omegaconf import OmegaConf

    from ..config import unknown_keys

    schema = OmegaConf.get_type(cfg)
    if schema is None:
        return
    extra = unknown_keys(OmegaConf.to_container(cfg, resolve=False), schema)
    if extra:
        key, where = extra[0]
        raise ConfigError(f"{key}: unknown key (not in {where}); see --cfg job for the valid "
                          "keys")


def validate_overrides(config_name: str, overrides: list[str], multirun: bool) -> Any:
    """Compose and convert to the schema dataclasses once; a bad override raises ConfigError
    with one line. Returns the settings, or None when only a Hydra run can resolve the config
    (``${hydra:...}`` interpolations)."""
    try:
        cfg = compose(config_name, _first_sweep_values(overrides) if multirun else overrides)
    except ConfigError:
        raise
    except Exception as exc:
        if "HydraConfig was not set" in str(exc):
            # ${hydra:...} interpolations only resolve inside a Hydra run: Hydra checks them there.
            return None
        raise ConfigError(describe_config_exception(exc)) from exc
    try:
        return to_settings(cfg)
    except ConfigError as exc:
        if "HydraConfig was not set" in str(exc):
            return None
        raise


def with_repeat_sweep(overrides: list[str], settings: Any) -> list[str]:
    """For a multirun: ``transfer.repeat=k`` (k > 1) adds ``transfer.repeat_index=0,...,k-1``.

    Hydra then runs every sweep point k times, each repeat its own job (repeats of a point run
    one after the other), and the sweep summary takes medians over them. Left alone when the
    config has no ``transfer``, repeat is 1, or the user set ``transfer.repeat_index``.
    """
    repeat = getattr(getattr(settings, "transfer", None), "repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat <= 1:
        return list(overrides)
    if any(o.partition("=")[0].lstrip("+~") == "transfer.repeat_index" for o in overrides):
        return list(overrides)
    return [*overrides, "transfer.repeat_index=" + ",".join(str(i) for i in range(repeat))]


def print_help(prog: str, description: str, config_name: str, groups: Sequence[str],
               overrides: list[str], examples: Sequence[str],
               config_in_help: bool = True) -> None:
    lines = [f"{prog}: {description}", "",
             f"usage: {prog} [--cfg job] [-m] [key=value ...]", "",
             "Config groups (choose with group=option):"]
    for group in groups:
        default = " (default: auto = detected from the hostname and scheduler)" if group == "machine" else ""
        lines.append(f"  {group}: {', '.join(config_options(group))}{default}")
    lines += ["", "Examples:"] + [f"  {e}" for e in examples]
    lines += ["", "Hydra flags: --cfg job (print the composed config), -m (sweep), --hydra-help"]
    if not config_in_help:  # composing loads Hydra: --cfg job shows it
        print("\n".join(lines))
        return
    from omegaconf import OmegaConf

    lines += ["", "Composed config (with the given overrides):", ""]
    try:
        cfg = compose(config_name, overrides)
        lines.append(OmegaConf.to_yaml(cfg))
    except Exception as exc:  # noqa: BLE001
        lines.append(f"(cannot compose: {describe_config_exception(exc)})")
    print("\n".join(lines))


def run_hydra(config_name: str, task: Callable[[Any], int | None], argv: list[str],
              prog: str, log_file: bool = True) -> int:
    """Run ``task(cfg)`` as a Hydra app on ``argv`` (overrides already validated)."""
    import hydra

    from ..config import register_configs

    register_configs()
    register_run_id_resolver()
    holder: dict[str, int] = {"rc": 0}

    @hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=config_name, version_base=None)
    def _app(cfg: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        out_dir = HydraConfig.get().runtime.output_dir
        ezlog.setup_logging(logfile=os.path.join(out_dir, f"{prog}.log")
                            if out_dir and log_file else None)
        rc = task(cfg)
        holder["rc"] = max(holder["rc"], int(rc or 0))

    # hydra.main reads sys.argv.
    old = sys.argv
    sys.argv = [prog, *argv]
    try:
        _app()
    finally:
        sys.argv = old
    return holder["rc"]


#: Flags that print something instead of running the app.
_INFO_FLAGS = {"--cfg", "-c", "--info", "-i", "--hydra-help", "--version",
               "--shell-completion", "-sc"}


def standard_main(*, prog: str, description: str, config_name: str, groups: Sequence[str],
                  task: Callable[[Any], int | None], argv: Sequence[str] | None,
                  examples: Sequence[str] = (), detect: bool = True,
                  config_in_help: bool = True,
                  preflight: Callable[[Any], None] | None = None,
                  adjust: Callable[[list[str]], list[str]] | None = None,
                  log_file: bool = True) -> int:
    """The shared shape of every ezpz CLI: argv → one composition checked and converted to
    the schema dataclasses (a bad value: one line, exit 2, no run directory) → ``preflight``
    on those settings for a single run (the app's own checks before anything is written) →
    Hydra runs ``task``. ``adjust`` may add overrides once the machine is known (e.g. its
    default launcher); ``config_in_help``: --help also prints the composed config;
    ``log_file``: the log is also written to ``<run dir>/<prog>.log``."""
    args = list(sys.argv[1:] if argv is None else argv)
    _run_id["id"] = new_run_id()  # every run of a command its own (tests run several)
    split = split_argv(args)
    if "--version" in split.flags:
        print(version_line(prog))
        return 0
    overrides = split.overrides
    detected = None
    if detect:
        overrides, detected = resolve_machine(overrides)
    if adjust is not None:
        overrides = adjust(overrides)
    if any(f in ("--help", "-h") for f in split.flags):
        print_help(prog, description, config_name, groups,
                   [o for o in overrides if "," not in o], examples, config_in_help)
        return 0
    if "--hydra-help" in split.flags or "-sc" in split.flags \
            or "--shell-completion" in split.flags:
        return run_hydra(config_name, task, hydra_argv(split.flags, overrides), prog, log_file)
    try:
        settings = validate_overrides(config_name, overrides, split.multirun)
        if preflight is not None and settings is not None and not split.multirun \
                and not any(f in _INFO_FLAGS for f in split.flags):
            preflight(settings)
    except EzpzError as exc:
        if ezlog.debug_enabled():
            traceback.print_exc()
        return fail(str(exc), exc.exit_code)
    if split.multirun:
        overrides = with_repeat_sweep(overrides, settings)
    if detected is not None and "--cfg" not in split.flags and "-c" not in split.flags:
        ezlog.get_logger("ezpz.cli").info("machine=auto resolved to %s", detected)
    return run_hydra(config_name, guard(task), hydra_argv(split.flags, overrides), prog,
                     log_file)


def hydra_argv(flags: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """Hydra's command line: the overrides first, then the flags, so that a flag with an
    optional value (``--info``) never takes an override for its value."""
    return [*overrides, *flags]


def version_line(prog: str) -> str:
    """What ``--version`` prints: the command, ezpz's version and its distribution name."""
    from .. import DIST_NAME, __version__

    return f"{prog} {__version__} ({DIST_NAME})"
