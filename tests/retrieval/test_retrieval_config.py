"""RetrievalConfig: every rule is checked once, with the field's name in the message."""

from __future__ import annotations

import pytest

from features.config import ConfigValueError
from infra.config import ConfigError, load_config
from retrieval import IndexConfig, RetrievalConfig, ServingConfig, TrainingConfig, TwoTowerConfig


@pytest.mark.parametrize(("cls", "kwargs", "match"), [
    (TwoTowerConfig, {"embedding_dim": 0}, "embedding_dim must be >= 1"),
    (TwoTowerConfig, {"hour_bands": (3, 12)}, "hour_bands must be ascending hours"),
    (TwoTowerConfig, {"hour_bands": (0, 12, 12)}, "hour_bands must be ascending hours"),
    (TwoTowerConfig, {"id_dropout": 1.0}, r"id_dropout must be in \[0, 1\)"),
    (TwoTowerConfig, {"min_item_examples": 0}, "min_item_examples must be >= 1"),
    (TrainingConfig, {"positive_types": ("view",)}, "positive_types must be a non-empty subset"),
    (TrainingConfig, {"temperature": 0.0}, "temperature must be > 0"),
    (TrainingConfig, {"batch_size": 1}, "batch_size must be >= 2"),
    (TrainingConfig, {"validation_positives": "some"}, "validation_positives must be one of"),
    (TrainingConfig, {"feed_weight": 0.0}, "feed_weight must be > 0"),
    (TrainingConfig, {"hard_negatives": -1}, "hard_negatives must be >= 0"),
    (IndexConfig, {"ann": "lsh"}, "ann must be one of"),
    (IndexConfig, {"hnsw_ef_search": 0}, "hnsw_ef_search must be >= 1"),
    (ServingConfig, {"k": 0}, "k must be >= 1"),
    (ServingConfig, {"popularity_weights": (1.0, 2.0)}, "popularity_weights must be 3 non-negative weights"),
])
def test_invalid_values_name_the_field(cls, kwargs, match):
    with pytest.raises(ConfigValueError, match=match):
        cls(**kwargs)


def test_yaml_section_builds_the_dataclass():
    cfg = load_config(env={"FEEDRANK_RETRIEVAL__INDEX__ANN": "ivf", "FEEDRANK_RETRIEVAL__SERVING__K": "300"})
    assert cfg.retrieval.index.ann == "ivf" and cfg.retrieval.serving.k == 300
    assert load_config(env={}).retrieval == RetrievalConfig()
    with pytest.raises(ConfigError, match="retrieval.training.temperature must be > 0"):
        load_config(env={"FEEDRANK_RETRIEVAL__TRAINING__TEMPERATURE": "0"})
