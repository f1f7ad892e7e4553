"""Where the configs are, and ``--config NAME`` for one of them.

The YAML files live in ``configs/`` at the top of a clone, where users read and copy them; the wheel
carries the same files as ``handgrad/configs/`` (pyproject.toml maps the one folder onto the other),
so that ``handgrad-train --config nielsen_ch1`` works after ``pip install`` from any directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from handgrad.errors import ConfigError

DEFAULT_CONFIG = "mnist_mlp"
CANDIDATES = (Path(__file__).resolve().parent / "configs",  # installed from a wheel
              Path(__file__).resolve().parents[2] / "configs")  # a clone: src/handgrad/../../configs


def config_dir() -> Path:
    """The folder of the configs shipped with handgrad."""
    return next((folder for folder in CANDIDATES if folder.is_dir()), CANDIDATES[-1])


def packaged_configs() -> list[str]:
    """The names of the shipped configs: mnist_mlp, nielsen_ch1, ..."""
    return sorted(path.stem for path in config_dir().glob("*.yaml"))


def resolve_config(value: str) -> str:
    """A --config value as a file: an existing file as it is, a shipped config's name as its path."""
    if os.path.isfile(value):
        return value
    given = Path(value)  # a name, or configs/<name>.yaml given outside a clone
    if given.suffix in ("", ".yaml", ".yml") and given.parent in (Path("."), Path("configs")) and (
            given.stem in packaged_configs()):
        return str(config_dir() / f"{given.stem}.yaml")
    raise ConfigError(f"--config {value}: no such file, and no shipped config of that name; pass a YAML file or one "
                      f"of {', '.join(packaged_configs())}")


def with_config_files(args: list[str]) -> list[str]:
    """``args`` with every --config value resolved to a file, and the default config first if none is given."""
    resolved, given = list(args), False
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            resolved[i + 1], given = resolve_config(args[i + 1]), True
        elif arg.startswith("--config="):
            resolved[i], given = "--config=" + resolve_config(arg.split("=", 1)[1]), True
    return resolved if given else ["--config", str(config_dir() / f"{DEFAULT_CONFIG}.yaml"), *resolved]


def config_files(args: list[str]) -> list[str]:
    """The --config files of (resolved) ``args``, in order."""
    return [args[i + 1] if arg in ("-c", "--config") else arg.split("=", 1)[1]
            for i, arg in enumerate(args)
            if (arg in ("-c", "--config") and i + 1 < len(args)) or arg.startswith("--config=")]


def check_config_file(path: str) -> None:
    """Refuse a --config file that is empty, not YAML, or not a mapping of keys, naming it (jsonargparse
    would say "Unexpected config" without the file)."""
    example = config_dir() / f"{DEFAULT_CONFIG}.yaml"
    try:
        with open(path, encoding="utf-8") as file:
            content = yaml.safe_load(file)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--config {path} is not valid YAML: {problem}{where}; fix it there (see {example})") \
            from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config {path} cannot be read ({err}); pass a readable YAML file") from None
    if content is None:
        raise ConfigError(f"--config {path} is empty (or only comments): a config is a mapping of trainer:, model: "
                          f"and data: keys; write some there, or leave --config out (see {example})")
    if not isinstance(content, dict):
        raise ConfigError(f"--config {path} holds a {type(content).__name__}, not a mapping of trainer:, model: and "
                          f"data: keys (see {example})")


def last_config(args: list[str]) -> str:
    """The last --config file of (resolved) ``args``: the one that names the run's folder under logs/."""
    path = str(config_dir() / f"{DEFAULT_CONFIG}.yaml")
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return path


def config_label(path: str, path_too: bool = False) -> str:
    """A config as a person names it: its name if it is a shipped one (with its path if ``path_too``), else its path."""
    shipped = Path(path).resolve().parent == config_dir() and Path(path).stem in packaged_configs()
    if not shipped:
        return path
    if not path_too:
        return Path(path).stem
    relative = os.path.relpath(path)
    return f"{Path(path).stem} ({relative if not relative.startswith('..') else path})"
