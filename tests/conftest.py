"""Shared fixtures: small simulated marketplaces, written once per test session into temp folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.config import SimulatorConfig
from experiments.simulator import MarketplaceSimulator

SMALL = SimulatorConfig(users=600, items=1200, sellers=60, categories=12, days=3, seed=11)


@pytest.fixture(scope="session")
def small_sim() -> MarketplaceSimulator:
    return MarketplaceSimulator(SMALL)


@pytest.fixture(scope="session")
def small_logs(tmp_path_factory: pytest.TempPathFactory, small_sim: MarketplaceSimulator) -> Path:
    """Event logs of a small marketplace (600 users, 3 days)."""
    out = tmp_path_factory.mktemp("logs") / "small"
    small_sim.run(out, progress=False)
    return out
