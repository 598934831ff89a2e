"""Load the one feedrank configuration: defaults, then a file, then environment overrides.

Each package owns a frozen dataclass for its section (``features.FeaturesConfig``,
``experiments.ExperimentsConfig``, ...); this module only reads YAML and environment
variables, checks every key against those dataclasses' typed fields, and builds them.
An unknown key, a value of the wrong type, or a value a section's ``__post_init__``
rejects stops start-up with a :class:`ConfigError` naming the full key.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiments.config import ExperimentsConfig
from features.config import ConfigValueError, FeaturesConfig, check
from infra.release_config import RegistryConfig, RolloutConfig
from monitoring.config import MonitoringConfig
from ranking.config import RankingConfig
from retrieval.config import RetrievalConfig
from serving.config import ServingConfig

__all__ = ["ConfigError", "FeedrankConfig", "InfraConfig", "RegistryConfig", "RolloutConfig", "DEFAULTS_PATH",
           "ENV_PREFIX", "load_config"]

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
ENV_PREFIX = "FEEDRANK_"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key (e.g. ``experiments.simulator.users``)."""


@dataclass(frozen=True)
class InfraConfig:
    """The ``infra`` section: where data goes, how much the CLI logs, the registry and the rollout."""

    data_dir: str = "data"
    log_level: str = "INFO"
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    def __post_init__(self) -> None:
        check(self.log_level in ("DEBUG", "INFO", "WARNING", "ERROR"), "log_level",
              "one of DEBUG, INFO, WARNING, ERROR", self.log_level)


@dataclass(frozen=True)
class FeedrankConfig:
    """The whole configuration, one section per package."""

    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    infra: InfraConfig = field(default_factory=InfraConfig)


def _merge(base: dict[str, Any], override: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [a for a in options if a is not type(None)]
        return _coerce(value, inner[0], key)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(annotation, value, key)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        elem = args[0]
        return tuple(_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, datetime.date):  # YAML reads unquoted dates as dates
            return value.isoformat()
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {annotation!r}")  # a programming error in a section


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(names))})".lstrip("."))
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigValueError as exc:
        raise ConfigError(f"{where}.{exc}".lstrip(".")) from None


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``FEEDRANK_A__B__C=v`` becomes ``{"a": {"b": {"c": yaml(v)}}}``; other FEEDRANK_ names are ignored."""
    out: dict[str, Any] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if any(not p for p in path):
            raise ConfigError(f"{name}: malformed override name (use FEEDRANK_SECTION__KEY)")
        try:
            value = yaml.safe_load(env[name])
        except yaml.YAMLError:
            value = env[name]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config: file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of sections")
    return data


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> FeedrankConfig:
    """Build the configuration.

    Layers, later winning: ``infra/defaults.yaml``, the file at ``path``, environment
    variables ``FEEDRANK_<SECTION>__<KEY>=value`` (values parsed as YAML scalars), then
    ``overrides`` (a nested mapping, e.g. from command-line flags).

    Raises
    ------
    ConfigError
        Naming the key, for unknown keys, wrong types and out-of-range values.
    """
    data = _read_yaml(DEFAULTS_PATH)
    if path is not None:
        data = _merge(data, _read_yaml(Path(path)), "")
    data = _merge(data, _env_overrides(os.environ if env is None else env), "")
    if overrides:
        data = _merge(data, overrides, "")
    return _build(FeedrankConfig, data, "")
