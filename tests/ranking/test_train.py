"""The training pipeline on frames in the ETL's schema: slices, artifacts, metadata, fallbacks, refusals."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest

from ranking.artifacts import read_metadata
from ranking.calibration import load_calibrator
from ranking.compile import CompiledModelUnavailableWarning
from ranking.config import FUNNELS, CompileConfig, RankingConfig, TuningConfig
from ranking.scorer import ExpectedGMVScorer
from ranking.train import check_training_frame, split_by_time, train_ranking_models
from tests.ranking.conftest import SMALL_CONFIG, SMALL_TREES
from tests.ranking.synthetic import make_training_frame


@pytest.fixture(scope="module")
def small_frame():
    frame, _ = make_training_frame(n_requests=1200, days=20, seed=9)
    return frame


def test_split_by_time_keeps_requests_whole_and_ordered(synthetic_frame):
    shuffled = synthetic_frame.sample(frac=1.0, random_state=0)
    slices = split_by_time(shuffled, valid_fraction=0.2, test_fraction=0.1)
    parts = [slices.train, slices.valid, slices.test]
    ids = [set(p["request_id"]) for p in parts]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    assert sum(len(p) for p in parts) == len(synthetic_frame)
    assert slices.train["ts"].max() <= slices.valid["ts"].min() <= slices.valid["ts"].max() <= slices.test["ts"].min()
    n = synthetic_frame["request_id"].nunique()
    assert len(ids[1]) == round(0.2 * n) and len(ids[2]) == round(0.1 * n)
    for part in parts:  # each request's rows are contiguous
        req = part["request_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, req[1:] != req[:-1]])
        assert len(starts) == part["request_id"].nunique()
    # Within a request the order does not follow the logged slot (ties must not replay the logging
    # policy), and it does not depend on the input order.
    in_slot_order = slices.train.groupby("request_id")["position"].apply(lambda s: s.is_monotonic_increasing)
    assert in_slot_order.mean() < 0.05
    again = split_by_time(synthetic_frame, valid_fraction=0.2, test_fraction=0.1)
    assert again.train["impression_id"].tolist() == slices.train["impression_id"].tolist()
    window = slices.window()
    assert window["train"]["requests"] == len(ids[0]) and window["test"]["end"] is not None


def test_artifacts_and_metadata(trained, synthetic_frame):
    root = trained.model_dir
    meta = read_metadata(root)
    assert meta["format_version"] == 1
    assert meta["features"] == [c for c in synthetic_frame.columns if c.startswith("f_")]
    # the purchase funnel: P(click | examined) with the slot, then the later stages without it
    assert meta["funnel"] == list(FUNNELS[RankingConfig().purchase_model])
    stages = meta["funnel"][:-1]
    assert meta["stage_features"]["click"] == meta["features"] + ["position"]
    assert meta["purchase_features"] == meta["features"]
    for name in ("ranker.txt", "purchase.txt", *(f"{s}.txt" for s in stages)):
        assert (root / name).read_text().startswith("tree")
    assert load_calibrator(root / "calibrator.npz").kind == meta["purchase"]["calibrator"]
    for name in ("ranker.so", "purchase.so", *(f"{s}.so" for s in stages), "reliability.png", "examination.png"):
        assert (root / name).stat().st_size > 0
    for name in ("ranker", "purchase"):
        assert meta["compile"][name]["ok"] and meta["compile"][name]["max_abs_diff"] <= 1e-5
    window = meta["training_window"]["ranker"]
    assert window["train"]["end"] <= window["valid"]["start"] and window["valid"]["end"] <= window["test"]["start"]
    ranker_metrics = meta["metrics"]["ranker"]
    # The IPS ranker is early-stopped on the IPS-weighted NDCG; the plain one is reported beside it.
    assert set(ranker_metrics["valid"]) == {"ndcg@10", "ndcg@20", "ips_ndcg@10", "ips_ndcg@20"}
    assert 0.3 < ranker_metrics["test"]["ndcg@10"] <= 1.0
    assert {"randomized_ndcg@10", "ips_ndcg@10"} <= set(ranker_metrics["test"])
    purchase = meta["metrics"]["purchase"]
    assert purchase["heldout"] == "test" and purchase["calibrated"]["auc"] > 0.7
    # The synthetic log's examination is (p + 1) ** -1.
    curve = np.asarray(meta["propensity"]["examination"])
    assert np.max(np.abs(curve - 1.0 / np.arange(1, len(curve) + 1))) < 0.1
    assert meta["ranker"]["ips_weighting"] is True and meta["config"]["propensity"]["max_weight"] == SMALL_CONFIG.propensity.max_weight
    assert meta["versions"]["lightgbm"] == "4.7.0"
    assert json.loads((root / "metadata.json").read_text()) == meta  # plain JSON, no NaN


def test_ranking_metrics_use_the_model_at_its_best_iteration(trained):
    from ranking.train import ranking_metrics

    test = trained.slices.test
    ips = trained.propensity.ips_weights(test["position"].astype(float).to_numpy(),
                                         max_weight=SMALL_CONFIG.propensity.max_weight)
    again = ranking_metrics(trained.ranker.predict(test[trained.ranker.feature_names_]), test, (10, 20),
                            ips_weight=ips)
    assert again == trained.metadata["metrics"]["ranker"]["test"]
    history = trained.ranker.evals_result_["valid"]["ips_ndcg@20"]
    assert max(history) == pytest.approx(history[trained.ranker.best_iteration_ - 1])


def test_without_a_compiler_the_models_fall_back_to_lightgbm(small_frame, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/bin/cc")
    with pytest.warns(CompiledModelUnavailableWarning, match="/nonexistent/bin/cc"):
        result = train_ranking_models(small_frame, SMALL_CONFIG, tmp_path / "model", figures=False)
    meta = result.metadata
    assert not meta["compile"]["ranker"]["ok"] and "not found" in meta["compile"]["ranker"]["error"]
    assert not (tmp_path / "model" / "ranker.so").exists() and "ranker_lib" not in meta["files"]
    with pytest.warns(CompiledModelUnavailableWarning, match="no compiled (ranker|purchase) library was built"):
        scorer = ExpectedGMVScorer.from_dir(tmp_path / "model")
    assert scorer.ranker.kind == scorer.purchase.kind == "lightgbm"
    rows = small_frame.iloc[:200]
    out = scorer.score(rows[meta["features"]].to_numpy(dtype=float), price=rows["price"].to_numpy())
    np.testing.assert_allclose(out.ranker_score, result.ranker.predict(rows[meta["features"]]))


def test_naive_pipeline_needs_no_randomized_traffic_but_ips_does(small_frame, tmp_path):
    no_random = small_frame.assign(randomized=False, propensity=np.nan)
    with pytest.raises(ValueError, match="ips_weighting=false"):
        train_ranking_models(no_random, SMALL_CONFIG, tmp_path / "ips", figures=False)
    naive = replace(SMALL_CONFIG, ips_weighting=False, compile=CompileConfig(enabled=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = train_ranking_models(no_random, naive, tmp_path / "naive", figures=False)
    assert result.propensity is None and result.metadata["propensity"] is None
    assert result.metadata["compile"]["ranker"]["error"].startswith("compiling disabled")


def test_tuning_runs_inside_the_pipeline(small_frame, tmp_path):
    cfg = replace(SMALL_CONFIG, tuning=TuningConfig(n_trials=3, seed=1), compile=CompileConfig(enabled=False))
    result = train_ranking_models(small_frame, cfg, tmp_path / "tuned", figures=False)
    summary = json.loads((tmp_path / "tuned" / "tuning.json").read_text())
    assert len(summary["trials"]) == 3 and summary["seed"] == 1
    assert result.metadata["tuning"]["best_params"] == summary["best_params"]
    assert result.metadata["ranker"]["tuned"] is True
    assert result.metadata["ranker"]["params"]["num_boost_round"] == SMALL_TREES.num_boost_round
    assert result.metadata["ranker"]["params"]["num_leaves"] == summary["best_params"]["num_leaves"]


def test_seven_day_labels_must_be_complete_somewhere(small_frame, tmp_path):
    incomplete = small_frame.assign(label_complete=False)
    with pytest.raises(ValueError, match="complete purchased_7d label"):
        train_ranking_models(incomplete, replace(SMALL_CONFIG, ips_weighting=False), tmp_path / "m", figures=False)


@pytest.mark.parametrize("mutate, error, match", [
    (lambda f: f.drop(columns=["sample_weight"]), ValueError, r"missing columns \['sample_weight'\]"),
    (lambda f: f.drop(columns=["label_complete"]), ValueError, r"missing columns \['label_complete'\]"),
    (lambda f: f.drop(columns=[c for c in f.columns if c.startswith("f_")]), ValueError, "no feature columns"),
    (lambda f: f.assign(f_item_name="x"), TypeError, "feature columns must be numeric"),
    (lambda f: f.iloc[:0], ValueError, "no rows"),
    (lambda f: f.assign(label=f["label"] - 1), ValueError, "integer grades"),
    (lambda f: f.assign(price=0.0), ValueError, "price must be > 0"),
    (lambda f: f.assign(sample_weight=np.nan), ValueError, "sample_weight must not contain nulls"),
    (lambda f: f.assign(ts=f["ts"].astype("int64")), TypeError, "ts must be a timestamp"),
    (lambda f: f.to_numpy(), TypeError, "frame must be a pandas DataFrame"),
])
def test_invalid_frames(small_frame, mutate, error, match):
    with pytest.raises(error, match=match):
        check_training_frame(mutate(small_frame), RankingConfig())


def test_config_must_be_a_ranking_config(small_frame, tmp_path):
    with pytest.raises(TypeError, match="config must be a RankingConfig"):
        train_ranking_models(small_frame, {"ips_weighting": True}, tmp_path)  # type: ignore[arg-type]
