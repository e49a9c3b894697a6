"""Loading, overriding and validating `configs/*.py` configs, and finding a system's trainer.

Configs are Python files with `get_config(arg)`; `path:arg` picks a preset (e.g. `configs/gan.py:smoke`).
On the command line `launch.py` loads them through `ml_collections.config_flags` (`--config.train.lr=1e-4`
overrides); in Python use `load_config`::

    config = load_config("configs/gan.py:smoke", ["train.batch_size=8"])   # or {"train.batch_size": 8}

Configs are locked: overriding a key that does not exist raises instead of silently adding it.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path, tuple_parser

from pikagen_jax.errors import ConfigError, ConfigKeyError, UserError

KNOWN_SYSTEMS = ("gan", "l1", "diffusion", "dcgan", "alignment")
POWER_OF_TWO_SIZES = (64, 128, 256)
# Systems that also train at the Kaggle sprites' native 215 px (seed 000/001 decoder, seed 003 VAE).
NATIVE_215_SYSTEMS = ("l1", "diffusion")
REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigFileNotFoundError(UserError, FileNotFoundError):
    """A --config path that does not exist."""


def define_config_flag(name: str = "config", default: str | None = None) -> flags.FlagHolder:
    """The absl flag `--<name>=configs/x.py[:preset]` with `--<name>.key=value` overrides, locked."""
    return config_flags.DEFINE_config_file(
        name, default, "Config file and optional preset, e.g. configs/gan.py:smoke. Override fields with "
        f"--{name}.train.batch_size=8.", lock_config=True)


def _resolve_config_file(path: str) -> Path:
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    if not candidate.is_absolute() and (REPO_ROOT / candidate).is_file():
        return REPO_ROOT / candidate
    available = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.py") if p.name != "__init__.py")
    raise ConfigFileNotFoundError(f"config file {path!r} not found (looked in {Path.cwd()} and {REPO_ROOT}); "
                            f"available configs: {available}")


def load_config(path_with_arg: str, overrides: Mapping[str, Any] | Sequence[str] | None = None
                ) -> ml_collections.ConfigDict:
    """Loads `path[:arg]` like `--config` does (locked), then applies `overrides`.

    `overrides` is a dict {'train.batch_size': 8} or a list of 'key=value' strings whose values are parsed
    by the type of the existing field (as on the command line). Unknown keys raise KeyError.
    """
    path, sep, arg = path_with_arg.partition(":")
    resolved = _resolve_config_file(path)
    argv = ["load_config", f"--config={resolved}{sep}{arg}"]
    flag_values = flags.FlagValues()  # a private flag registry: the same loader as launch.py's --config
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(f"{resolved}: get_config({arg!r}) must return an ml_collections.ConfigDict, "
                        f"got {type(config).__name__}")
    return apply_overrides(config, overrides or {})


def _parse_override_value(text: str, field_type: type) -> Any:
    if field_type is str:
        return text
    if field_type is bool:
        return flags.BooleanParser().parse(text)
    if field_type is int:
        return int(text)
    if field_type is float:
        return float(text)
    if field_type is tuple:
        return tuple_parser.TupleParser().parse(text)
    try:  # None-valued or other fields: a Python literal, else the plain string
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _unknown_key_error(config: ml_collections.ConfigDict, key: str) -> ConfigKeyError:
    parts = key.split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        if isinstance(node, ml_collections.ConfigDict) and part in node:
            node = node[part]
            continue
        where = ".".join(parts[:depth]) or "the top level"
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; it has {known}" if known else ""
        return ConfigKeyError(f"config override {key!r}: no field {part!r} in {where}{hint} "
                        "(configs are locked: only existing fields can be overridden)")
    return ConfigKeyError(f"config override {key!r}: not a settable field")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | Sequence[str]
                    ) -> ml_collections.ConfigDict:
    """Sets dotted keys in `config` (in place, returned). String values (from 'key=value' lists or dicts)
    are parsed by the existing field's type; other values are assigned as given (type-checked)."""
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for entry in overrides:
            key, sep, text = str(entry).partition("=")
            if not sep or not key:
                raise ConfigError(f"config override {entry!r} must look like key=value, e.g. train.batch_size=8")
            items.append((key.strip(), text))
    for key, value in items:
        try:
            field_type = config_path.get_type(key, config)
        except (KeyError, AttributeError, IndexError, ValueError):
            raise _unknown_key_error(config, key) from None
        if isinstance(value, str):
            value = _parse_override_value(value, field_type)
        try:
            config_path.set_value(key, config, value)
        except TypeError as error:
            raise ConfigError(f"config override {key}={value!r}: {error}") from None
    return config


def _required(config: ml_collections.ConfigDict, key: str) -> Any:
    try:
        return config_path.get_value(key, config)
    except (KeyError, AttributeError):
        raise ConfigKeyError(f"config has no {key!r}: every system config needs system, train.batch_size and "
                       "data.image_size") from None


def allowed_image_sizes(system: str) -> tuple[int, ...]:
    """Image sizes a system accepts: powers of two 64..256, plus 215 for the L1 and diffusion systems."""
    return POWER_OF_TWO_SIZES + ((215,) if system in NATIVE_215_SYSTEMS else ())


def validate_common(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks what every system relies on, once and early, with messages that name the fix.

    `system` is known; `train.batch_size` splits evenly over `num_devices`; `data.image_size` is a
    supported resolution; `train.nonfinite_policy` (if present) is 'stop' or 'skip'.
    """
    from pikagen_jax.training.guards import POLICIES
    from pikagen_jax.training.mesh import check_batch_divisible

    system = _required(config, "system")
    if system not in KNOWN_SYSTEMS:
        raise ConfigError(f"config.system={system!r} is not one of {KNOWN_SYSTEMS}")
    check_batch_divisible(int(_required(config, "train.batch_size")), num_devices, "train.batch_size")
    size = _required(config, "data.image_size")
    allowed = allowed_image_sizes(system)
    if size not in allowed:
        nearest = min(allowed, key=lambda allowed_size: abs(allowed_size - float(size)))
        raise ConfigError(f"data.image_size={size} is not supported by the {system!r} system: use one of "
                         f"{allowed}, e.g. --config.data.image_size={nearest}")
    if "train" in config and "nonfinite_policy" in config.train and config.train.nonfinite_policy not in POLICIES:
        raise ConfigError(f"train.nonfinite_policy={config.train.nonfinite_policy!r} must be one of {POLICIES}")
    for key in ("train.num_steps", "train.num_epochs", "train.max_minutes", "train.log_every", "train.sample_every"):
        value = _optional(config, key)
        if value is not None and value < 0:
            raise ConfigError(f"{key}={value} must be >= 0")
    for key in ("checkpoint.every_steps", "checkpoint.max_to_keep"):
        value = _optional(config, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value} (e.g. --config.{key}=1)")


def _optional(config: ml_collections.ConfigDict, key: str) -> Any:
    try:
        value = config_path.get_value(key, config)
    except (KeyError, AttributeError):
        return None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def trainer_for(system: str) -> Callable[[ml_collections.ConfigDict, str], Any]:
    """`pikagen_jax.<system>.train.train_and_evaluate`, imported on demand."""
    if system not in KNOWN_SYSTEMS:
        raise ConfigError(f"unknown system {system!r}: config.system must be one of {KNOWN_SYSTEMS}")
    module_name = f"pikagen_jax.{system}.train"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name in (f"pikagen_jax.{system}", module_name):
            raise ImportError(f"the {system!r} system has no trainer: module {module_name} is missing") from error
        raise
    trainer = getattr(module, "train_and_evaluate", None)
    if not callable(trainer):
        raise ImportError(f"{module_name} defines no train_and_evaluate(config, workdir)")
    return trainer


def _innermost_message(error: BaseException) -> str:
    """The message of the innermost error: ml_collections wraps a config file's own error, traceback and all,
    into the message of the flag error it raises."""
    text = str(error.args[0]) if error.args else str(error)
    for line in reversed(text.strip().splitlines()):
        match = re.match(r"^[A-Za-z_.]*(?:Error|Exception): (.+)$", line.strip())
        if match:
            return match.group(1)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def explain_flag_error(error: Exception, argv: Sequence[str]) -> str:
    """A one-line reason for a failed command line: the config file or preset that does not load, the first
    override key that does not exist (with the closest names) or value that does not parse, else absl's."""
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is not None:
        try:
            config = load_config(config_arg)
        except Exception as load_error:  # noqa: BLE001  (its message is the explanation)
            if isinstance(load_error, FileNotFoundError):
                return str(load_error)
            return f"--config={config_arg}: {_innermost_message(load_error)}"
        for arg in argv:
            if arg.startswith("--config.") and "=" in arg:
                key, value = arg[len("--config."):].split("=", 1)
                try:
                    apply_overrides(config, [f"{key}={value}"])
                except ConfigKeyError as unknown:
                    return str(unknown.args[0])
                except (UserError, ValueError, TypeError) as bad_value:
                    return f"--config.{key}={value}: {_innermost_message(bad_value)}"
    return _innermost_message(error).removeprefix("FATAL Flags parsing error: ")
