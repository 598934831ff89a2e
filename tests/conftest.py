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


@pytest.fixture(scope="session")
def spark():
    """One local Spark session (2 cores, small shuffles) shared by every test that needs Spark."""
    from features.config import SparkConfig
    from features.spark import build_spark

    session = build_spark(SparkConfig(master="local[2]", driver_memory="2g", shuffle_partitions=2,
                                      progress_seconds=0))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def small_features(tmp_path_factory: pytest.TempPathFactory, spark, small_logs: Path) -> Path:
    """The ETL's output over ``small_logs``: ``training/``, ``user_features/``, ``item_features/``,
    ``seller_features/``, ``user_realtime/`` (schema in docs/training-data.md). Read-only: copy it
    before writing, and point Feast at a temp ``repo_dir``."""
    from features.config import FeaturesConfig
    from features.etl import FeatureEtl

    out = tmp_path_factory.mktemp("features") / "small"
    FeatureEtl(FeaturesConfig()).run(spark, str(small_logs), str(out))
    return out
