"""Evaluation: the marketplace simulator, ranking metrics, off-policy estimates, A/B statistics."""

from experiments.config import ExperimentsConfig, SimulatorConfig

__all__ = ["ExperimentsConfig", "SimulatorConfig"]
