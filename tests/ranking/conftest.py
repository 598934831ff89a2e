"""Fixtures of the ranking tests: a synthetic training frame and one small trained model folder."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest

from ranking.config import GBDTParams, RankingConfig
from ranking.train import TrainingResult, train_ranking_models
from tests.ranking.synthetic import make_training_frame

SMALL_TREES = GBDTParams(num_boost_round=40, early_stopping_rounds=10, num_leaves=15, min_data_in_leaf=20,
                         learning_rate=0.1)
SMALL_CONFIG = RankingConfig(ranker=SMALL_TREES, purchase=SMALL_TREES)


@pytest.fixture(scope="session")
def synthetic_frame() -> pd.DataFrame:
    """3,000 requests of 20 slots over 20 days, negatives kept at rate 0.5."""
    frame, _ = make_training_frame(n_requests=3000, negative_keep=0.5, days=20, seed=1)
    return frame


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_frame: pd.DataFrame) -> TrainingResult:
    """The pipeline run once on the synthetic frame (compiled with the machine's gcc)."""
    out: Path = tmp_path_factory.mktemp("ranking") / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # compiling must work here; a fallback would hide a bug
        return train_ranking_models(synthetic_frame, SMALL_CONFIG, out)
