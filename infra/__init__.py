"""Wiring: configuration, the feedrank CLI, and (later) the batch job, registry and rollout."""

from infra.config import ConfigError, FeedrankConfig, InfraConfig, load_config

__all__ = ["ConfigError", "FeedrankConfig", "InfraConfig", "load_config"]
