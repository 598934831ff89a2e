"""Isotonic calibration, expected calibration error and the reliability diagram."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from ranking.calibration import (
    PROB_FLOOR,
    IsotonicCalibrator,
    expected_calibration_error,
    load_calibrator,
    plot_reliability_diagram,
    reliability_curve,
    select_calibrator,
)


def _miscalibrated(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    true_p = rng.beta(0.5, 20, n)
    y = (rng.random(n) < true_p).astype(float)
    return y, np.sqrt(true_p)  # monotone but badly calibrated scores


def test_predictions_equal_sklearn_isotonic():
    y, s = _miscalibrated()
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(y))
    cal = IsotonicCalibrator().fit(s, y, sample_weight=w)
    ref = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y, sample_weight=w)
    probe = np.r_[s[:500], -1.0, 2.0]  # outside the fitted range too
    # scikit-learn's fit, kept off exactly 0 and 1 (PROB_FLOOR)
    expected = np.clip(ref.predict(probe), PROB_FLOOR, 1 - PROB_FLOOR)
    np.testing.assert_allclose(cal.predict(probe), expected, atol=1e-12)
    assert cal.predict(probe).min() >= PROB_FLOOR


def test_calibration_removes_most_of_the_error():
    y, s = _miscalibrated(seed=2)
    y_test, s_test = _miscalibrated(seed=3)
    cal = IsotonicCalibrator().fit(s, y)
    before = expected_calibration_error(y_test, s_test)
    after = expected_calibration_error(y_test, cal.predict(s_test))
    assert before > 0.05 and after < before / 5


def test_save_and_load_without_pickle(tmp_path):
    y, s = _miscalibrated(n=2000)
    cal = IsotonicCalibrator().fit(s, y)
    path = cal.save(tmp_path / "cal.npz")
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"kind", "x_thresholds", "y_thresholds", "format_version"}
        assert all(data[k].dtype != object for k in data.files)
    again = IsotonicCalibrator.load(path)
    np.testing.assert_array_equal(again.predict(s), cal.predict(s))


def test_load_refuses_foreign_files(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.arange(3))
    with pytest.raises(ValueError, match="not an IsotonicCalibrator file"):
        IsotonicCalibrator.load(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="(?i)calibrator"):
        load_calibrator(tmp_path / "other.npz")
    np.savez(tmp_path / "bad.npz", x_thresholds=np.array([0.0, 1.0]), y_thresholds=np.array([0.5, 0.1]),
             format_version=np.array(1))
    with pytest.raises(ValueError, match="non-decreasing"):
        IsotonicCalibrator.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("kind", ["isotonic", "platt", "none"])
def test_every_calibrator_round_trips_without_pickle(tmp_path, kind):
    y, s = _miscalibrated(n=4000)
    cal, _ = select_calibrator(s, y, kind=kind)
    assert cal.kind == kind
    path = cal.save(tmp_path / f"{kind}.npz")
    again = load_calibrator(path)
    assert type(again) is type(cal)
    np.testing.assert_allclose(again.predict(s), cal.predict(s))
    assert PROB_FLOOR <= again.predict(s).min() and again.predict(s).max() <= 1 - PROB_FLOOR


def test_auto_selection_never_makes_held_out_log_loss_worse():
    """Calibrated model scores: 'none' should win or tie; badly scaled ones: a fitted map wins."""
    rng = np.random.default_rng(3)
    true_p = rng.beta(0.5, 20, 20_000)
    y = (rng.random(len(true_p)) < true_p).astype(float)
    cal, losses = select_calibrator(true_p, y)
    assert losses[cal.kind] <= losses["none"]
    assert losses["none"] <= min(losses.values()) + 2e-3  # calibrated input: nothing beats it by much
    y2, s2 = _miscalibrated(n=20_000, seed=4)
    cal2, losses2 = select_calibrator(s2, y2)
    assert cal2.kind in ("isotonic", "platt") and losses2[cal2.kind] < losses2["none"]


def test_ece_known_answer():
    # Two equal-mass bins: predictions 0.1 (observed 0.0) and 0.5 (observed 0.5).
    y = np.array([0, 0, 1, 0])
    p = np.array([0.1, 0.1, 0.5, 0.5])
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.5 * 0.1 + 0.5 * 0.0)
    curve = reliability_curve(y, p, n_bins=2)
    np.testing.assert_allclose(curve.mean_predicted, [0.1, 0.5])
    np.testing.assert_allclose(curve.observed_rate, [0.0, 0.5])
    # Uniform bins put everything below 0.5 together.
    assert expected_calibration_error(y, p, n_bins=2, strategy="uniform") == pytest.approx(0.05)


def test_ece_of_a_perfect_predictor_is_small_and_weights_count():
    rng = np.random.default_rng(4)
    p = rng.uniform(0, 0.2, 200_000)
    y = rng.random(len(p)) < p
    assert expected_calibration_error(y, p) < 0.003
    # Weighting: duplicating rows equals weighting them by 2.
    w = np.where(np.arange(len(p)) % 2 == 0, 2.0, 1.0)
    dup = np.r_[np.arange(len(p)), np.flatnonzero(w == 2.0)]
    assert expected_calibration_error(y, p, sample_weight=w) == pytest.approx(
        expected_calibration_error(y[dup], p[dup]), abs=2e-4)


@pytest.mark.parametrize("y, p, kwargs, error, match", [
    ([0, 1], [0.1], {}, ValueError, "same length"),
    ([], [], {}, ValueError, "must be non-empty"),
    ([0, 2], [0.1, 0.2], {}, ValueError, "y_true must be binary"),
    ([0, 1], [0.1, 1.2], {}, ValueError, r"y_prob must be in \[0.0, 1.0\]"),
    ([0, 1], [0.1, np.nan], {}, ValueError, "finite"),
    ([0, 1], ["a", "b"], {}, TypeError, "y_prob must hold numbers"),
    ([0, 1], [0.1, 0.2], {"n_bins": 0}, ValueError, "n_bins must be"),
    ([0, 1], [0.1, 0.2], {"strategy": "kmeans"}, ValueError, "strategy must be"),
    ([0, 1], [0.1, 0.2], {"sample_weight": [1.0, -1.0]}, ValueError, "sample_weight must be"),
])
def test_invalid_inputs(y, p, kwargs, error, match):
    with pytest.raises(error, match=match):
        expected_calibration_error(np.asarray(y), np.asarray(p), **kwargs)


def test_unfitted_calibrator_is_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        IsotonicCalibrator().predict([0.1])


def test_reliability_diagram_png(tmp_path):
    y, s = _miscalibrated(n=5000)
    cal = IsotonicCalibrator().fit(s, y)
    path = plot_reliability_diagram(y, {"raw": s, "isotonic": cal.predict(s)}, tmp_path / "rel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one"):
        plot_reliability_diagram(y, {}, tmp_path / "none.png")
