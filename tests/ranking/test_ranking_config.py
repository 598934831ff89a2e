"""RankingConfig: defaults are valid, every bad value is refused with the field's name, and infra loads it."""

from __future__ import annotations

import pytest

from features.config import ConfigValueError
from infra.config import ConfigError, load_config
from ranking.config import CompileConfig, GBDTParams, PropensityConfig, RankingConfig, TuningConfig


def test_defaults_are_valid_and_consistent():
    cfg = RankingConfig()
    assert cfg.stop_at in cfg.eval_at
    assert cfg.purchase.num_boost_round == 400 and cfg.ranker.num_boost_round == 300
    assert GBDTParams().lightgbm_params()["num_leaves"] == 31


@pytest.mark.parametrize("make, match", [
    (lambda: GBDTParams(num_boost_round=0), "num_boost_round must be >= 1"),
    (lambda: GBDTParams(learning_rate=0.0), "learning_rate must be in"),
    (lambda: GBDTParams(num_leaves=1), "num_leaves must be >= 2"),
    (lambda: GBDTParams(max_depth=0), "max_depth must be -1"),
    (lambda: GBDTParams(feature_fraction=1.5), "feature_fraction must be in"),
    (lambda: GBDTParams(lambda_l2=-1.0), "lambda_l2 must be >= 0"),
    (lambda: PropensityConfig(max_weight=0.5), "max_weight must be >= 1"),
    (lambda: PropensityConfig(min_impressions=0), "min_impressions must be >= 1"),
    (lambda: TuningConfig(n_trials=-1), "n_trials must be >= 0"),
    (lambda: TuningConfig(timeout_s=-1.0), "timeout_s must be >= 0"),
    (lambda: CompileConfig(parallel_comp=-2), "parallel_comp must be >= 0"),
    (lambda: RankingConfig(eval_at=()), "eval_at must be a non-empty list"),
    (lambda: RankingConfig(eval_at=(10, 0)), "eval_at must be a non-empty list"),
    (lambda: RankingConfig(stop_at=5), "stop_at must be one of eval_at"),
    (lambda: RankingConfig(valid_fraction=0.0), "valid_fraction must be in"),
    (lambda: RankingConfig(test_fraction=1.0), "test_fraction must be in"),
    (lambda: RankingConfig(valid_fraction=0.5, test_fraction=0.45), "valid_fraction \\+ test_fraction < 0.9"),
    (lambda: RankingConfig(purchase_label="bought"), "purchase_label must be one of"),
    (lambda: RankingConfig(calibration_bins=1), "calibration_bins must be >= 2"),
    (lambda: RankingConfig(blend_weight=-0.1), "blend_weight must be >= 0"),
    (lambda: RankingConfig(num_threads=0), "num_threads must be >= 1"),
])
def test_invalid_values_are_refused_naming_the_field(make, match):
    with pytest.raises(ConfigValueError, match=match):
        make()


def test_infra_builds_the_ranking_section_from_yaml_and_env():
    cfg = load_config(env={})
    assert cfg.ranking == RankingConfig()
    cfg = load_config(env={"FEEDRANK_RANKING__RANKER__NUM_LEAVES": "63", "FEEDRANK_RANKING__EVAL_AT": "[5, 10]",
                           "FEEDRANK_RANKING__STOP_AT": "10", "FEEDRANK_RANKING__COMPILE__QUANTIZE": "false"})
    assert cfg.ranking.ranker.num_leaves == 63
    assert cfg.ranking.eval_at == (5, 10) and cfg.ranking.stop_at == 10
    assert cfg.ranking.compile.quantize is False


@pytest.mark.parametrize("env, match", [
    ({"FEEDRANK_RANKING__PROPENSITY__MAX_WEIGHT": "0.5"}, "ranking.propensity.max_weight must be >= 1"),
    ({"FEEDRANK_RANKING__RANKER__NUM_LEAVES": "many"}, "ranking.ranker.num_leaves: expected an integer"),
    ({"FEEDRANK_RANKING__NO_SUCH_KEY": "1"}, "ranking.no_such_key: unknown key"),
])
def test_infra_errors_name_the_full_key(env, match):
    with pytest.raises(ConfigError, match=match):
        load_config(env=env)
