"""The Optuna study: reproducible for a seed, prunes, and returns parameters inside the search space."""

from __future__ import annotations

import pytest

from ranking.config import GBDTParams, TuningConfig
from ranking.tuning import SEARCH_SPACE, tune_ranker
from tests.ranking.synthetic import make_training_frame

FEATURES = ["f_item_quality", "f_item_popularity", "f_ui_affinity", "f_ctx_hour", "f_item_log_price", "f_user_noise"]
BASE = GBDTParams(num_boost_round=25, early_stopping_rounds=5)


@pytest.fixture(scope="module")
def data():
    frame, _ = make_training_frame(n_requests=500, seed=11)
    train, valid = frame[frame.request_id < 380], frame[frame.request_id >= 380]
    return ((train[FEATURES], train["label"], train["request_id"]),
            (valid[FEATURES], valid["label"], valid["request_id"]))


def _tune(data, n_trials=6, seed=0, warmup=2):
    (X, y, g), valid = data
    return tune_ranker(X, y, g, eval_set=valid, base_params=BASE,
                       tuning=TuningConfig(n_trials=n_trials, seed=seed, pruning_warmup_rounds=warmup))


def test_study_summary_and_best_params(data):
    result = _tune(data)
    s = result.summary
    assert len(s["trials"]) == 6 and sum(s["counts"].values()) == 6
    assert s["best_value"] == result.best_value == max(t["value"] for t in s["trials"] if t["state"] == "COMPLETE")
    for name, (kind, low, high, _) in SEARCH_SPACE.items():
        value = getattr(result.best_params, name)
        assert low <= value <= high and isinstance(value, int if kind == "int" else float)
    assert result.best_params.num_boost_round == BASE.num_boost_round  # outside the space: kept
    assert 1 <= result.best_iteration <= BASE.num_boost_round
    assert s["counts"].get("PRUNED", 0) >= 1  # the median pruner stopped someone


def test_same_seed_same_study(data):
    a, b = _tune(data, n_trials=3, seed=5), _tune(data, n_trials=3, seed=5)
    assert [t["params"] for t in a.summary["trials"]] == [t["params"] for t in b.summary["trials"]]
    assert a.best_value == b.best_value


@pytest.mark.parametrize("tuning, error, match", [
    (TuningConfig(n_trials=0), ValueError, "n_trials must be >= 1"),
    ({"n_trials": 3}, TypeError, "tuning must be a TuningConfig"),
])
def test_invalid_budget(data, tuning, error, match):
    (X, y, g), valid = data
    with pytest.raises(error, match=match):
        tune_ranker(X, y, g, eval_set=valid, tuning=tuning)
