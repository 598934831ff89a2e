"""The ranking pipeline on the features ETL's real output (the shared ``small_features`` fixture)."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow.dataset as ds
import pytest

from features.config import EtlConfig
from features.outputs import training_feature_names
from ranking.config import CompileConfig, GBDTParams, PropensityConfig, RankingConfig
from ranking.scorer import ExpectedGMVScorer
from ranking.train import check_training_frame, train_ranking_models

SMALL = GBDTParams(num_boost_round=30, early_stopping_rounds=10, num_leaves=15, min_data_in_leaf=20)


@pytest.fixture(scope="module")
def training(small_features):
    frame = ds.dataset(small_features / "training", format="parquet", partitioning="hive").to_table().to_pandas()
    return frame.drop(columns=["date"], errors="ignore")


def test_the_etl_table_is_what_the_pipeline_expects(training):
    features = check_training_frame(training, RankingConfig())
    assert features == list(training_feature_names(EtlConfig()))
    assert set(training["label"].unique()) <= {0, 1, 2, 3}
    assert training["randomized"].any() and training.loc[training["randomized"], "propensity"].notna().any()


def test_trains_and_serves_from_the_etl_output(training, tmp_path):
    # small_logs covers 3 days with 2% randomized requests: 24-hour purchase labels (7-day
    # windows never close in 3 days) and a low bar for estimating position bias.
    config = RankingConfig(ranker=SMALL, purchase=SMALL, purchase_label="purchased_24h",
                           propensity=PropensityConfig(min_impressions=20), compile=CompileConfig(enabled=False))
    result = train_ranking_models(training, config, tmp_path / "model", figures=False)
    meta = result.metadata
    assert meta["propensity"]["examination"][0] == 1.0
    assert meta["metrics"]["purchase"]["calibrated"]["auc"] > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compiling is off here: the LightGBM fallback warns by design
        scorer = ExpectedGMVScorer.from_dir(tmp_path / "model")
    rows = training.iloc[:500]
    out = scorer.score(rows[scorer.feature_names].to_numpy(dtype=np.float64, na_value=np.nan),
                       price=rows["price"].to_numpy(), request_index=rows["request_id"].to_numpy())
    assert np.all(np.isfinite(out.score)) and np.all((out.purchase_probability >= 0) & (out.purchase_probability <= 1))
