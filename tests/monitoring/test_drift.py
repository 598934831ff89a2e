"""PSI and Jensen-Shannon drift per feature (monitoring.drift)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.config import ConfigValueError
from monitoring.config import DriftConfig
from monitoring.drift import (
    bin_shares,
    feature_drift,
    jensen_shannon_distance,
    population_stability_index,
    reference_bins,
)


def _world(n: int, seed: int) -> pd.DataFrame:
    """Feature rows of several kinds: continuous, skewed, a code, a flag, and one often missing."""
    rng = np.random.default_rng(seed)
    missing = rng.random(n) < 0.3
    return pd.DataFrame({
        "f_item_price": rng.lognormal(3.0, 0.8, n),
        "f_user_ctr_30d": rng.beta(2, 30, n),
        "f_ctx_device": rng.choice([0.0, 1.0, 2.0], n, p=[0.6, 0.3, 0.1]),
        "f_ctx_weekend": (rng.random(n) < 2 / 7).astype(float),
        "f_user_hours_since_view": np.where(missing, np.nan, rng.exponential(20.0, n)),
        "f_ui_cat_affinity": rng.random(n) ** 3,
    })


def test_a_shift_in_one_served_feature_flags_that_feature_and_no_other():
    training = _world(50_000, seed=1)
    served = _world(3_000, seed=2)
    served["f_item_price"] *= 1.6  # prices in the served window are 60% higher
    report = feature_drift(training, served, reference_name="training", current_name="serving")
    assert report.flagged("alert") == ["f_item_price"]
    assert report.flagged("warn") == ["f_item_price"]
    frame = report.to_frame()
    assert frame.iloc[0]["feature"] == "f_item_price" and frame.iloc[0]["psi"] > 0.25
    assert (frame.iloc[1:]["psi"] < 0.05).all()


def test_features_gone_missing_at_serving_drift():
    training = _world(20_000, seed=3)
    served = _world(2_000, seed=4)
    served["f_user_hours_since_view"] = np.nan  # the real-time row never arrives
    report = feature_drift(training, served)
    assert report.flagged() == ["f_user_hours_since_view"]
    row = report.to_frame().iloc[0]
    assert row["missing_current"] == 1.0 and row["missing_reference"] == pytest.approx(0.3, abs=0.02)


def test_two_serving_windows_of_the_same_world_do_not_drift_even_when_large():
    # effect sizes do not grow with n: 200k rows against 200k rows of the same distribution stay "ok"
    report = feature_drift(_world(200_000, seed=5), _world(200_000, seed=6))
    assert {f.level for f in report.features} == {"ok"}
    assert max(f.psi for f in report.features) < 0.001


def test_small_samples_judge_nothing():
    report = feature_drift(_world(5_000, seed=7), _world(50, seed=8).assign(f_item_price=1e6))
    assert {f.level for f in report.features} == {"insufficient"} and report.flagged() == []


def test_bins_follow_the_reference():
    ref = np.arange(1000, dtype=float)
    edges = reference_bins(ref, 10)
    assert len(edges) == 9
    shares = bin_shares(ref, edges)
    np.testing.assert_allclose(shares[:-1], 0.1, atol=0.002)
    assert shares[-1] == 0.0
    # few distinct values: one bin each, values on both sides of an edge stay apart
    codes = reference_bins(np.array([0.0, 1.0, 1.0, 3.0]), 10)
    np.testing.assert_allclose(codes, [0.5, 2.0])
    np.testing.assert_allclose(bin_shares(np.array([0.0, 1.0, 3.0, np.nan]), codes), [0.25, 0.25, 0.25, 0.25])
    assert len(reference_bins(np.array([np.nan, np.nan]), 10)) == 0


def test_known_values():
    r = np.array([0.5, 0.5])
    c = np.array([0.9, 0.1])
    assert population_stability_index(r, c) == pytest.approx(0.4 * np.log(1.8) - 0.4 * np.log(0.2))
    assert population_stability_index(r, r) == 0.0
    assert jensen_shannon_distance(r, r) == 0.0
    assert jensen_shannon_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(bins=1), "bins must be in"),
    (dict(psi_warn=0.3, psi_alert=0.2), "psi_alert must be"),
    (dict(js_alert=1.5), "js_alert must be"),
    (dict(min_rows=0), "min_rows must be"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigValueError, match=match):
        DriftConfig(**kwargs)


def test_a_feature_missing_from_one_side_is_named():
    with pytest.raises(KeyError, match="f_nope"):
        feature_drift(_world(10, 0), _world(10, 1), features=["f_item_price", "f_nope"])
