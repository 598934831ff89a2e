"""Position bias from randomized traffic: it recovers the simulator's true examination curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from experiments.config import SimulatorConfig
from experiments.simulator import MarketplaceSimulator
from ranking.propensity import PositionBiasEstimator, examination_inputs_from_logs

# Stated tolerance: on a simulator with 30% randomized requests (about 6,000 shuffled feeds of
# 20 slots), every position's estimate lies within 0.05 of the true (p + 1) ** -eta, and the
# fitted power-law exponent within 0.1 of eta. The estimate's own standard error at p = 1 is
# about 0.02 here, so 0.05 is a 2.5-sigma bound on the worst of 19 positions.
MAX_ABS_ERROR = 0.05
ETA_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def randomized_logs(tmp_path_factory):
    cfg = SimulatorConfig(users=6000, items=3000, sellers=100, categories=12, days=3, randomized_share=0.3, seed=21)
    sim = MarketplaceSimulator(cfg)
    out = tmp_path_factory.mktemp("propensity") / "logs"
    sim.run(out, progress=False)
    read = lambda t: ds.dataset(out / t, format="parquet").to_table().to_pandas()  # noqa: E731
    return sim, read("impressions"), read("events")


def test_estimated_curve_matches_the_simulator_truth(randomized_logs):
    sim, impressions, events = randomized_logs
    est = PositionBiasEstimator().fit(**examination_inputs_from_logs(impressions, events))
    positions = np.arange(sim.config.shuffle_top_n)
    assert len(est.examination_) == sim.config.shuffle_top_n
    truth = sim.examination(positions)
    assert est.examination_[0] == 1.0
    assert np.max(np.abs(est.examination_ - truth)) <= MAX_ABS_ERROR
    assert abs(est.eta_ - sim.config.examination_eta) <= ETA_TOLERANCE
    # The raw ratios' intervals are honest: most of them cover the truth.
    ok = positions > 0
    z = np.abs(est.raw_examination_[ok] - truth[ok]) / est.stderr_[ok]
    assert np.mean(z < 1.96) >= 0.75
    # Beyond the randomized range the power law continues the curve.
    assert est.propensity(np.array([39]))[0] == pytest.approx(40.0 ** -est.eta_, rel=1e-9)


def _pbm_sample(n_requests, eta, seed, slots=10):
    rng = np.random.default_rng(seed)
    pos = np.tile(np.arange(slots), n_requests)
    a = rng.uniform(0.05, 0.4, len(pos))
    clicked = rng.random(len(pos)) < a * (pos + 1.0) ** -eta
    return pos, clicked


def test_recovers_a_known_curve_with_sample_weights():
    pos, clicked = _pbm_sample(40_000, eta=0.7, seed=3)
    # Downsample non-clicks at rate 0.25 and weight the kept ones by 4: the estimate must not move.
    rng = np.random.default_rng(4)
    keep = clicked | (rng.random(len(pos)) < 0.25)
    weight = np.where(clicked, 1.0, 4.0)[keep]
    est = PositionBiasEstimator().fit(pos[keep], clicked[keep], np.ones(keep.sum(), bool), sample_weight=weight)
    assert np.max(np.abs(est.examination_ - (np.arange(10) + 1.0) ** -0.7)) < 0.05
    assert np.all(np.diff(est.examination_) <= 0)  # monotone smoothing


def test_ips_weights_are_clipped_inverse_propensities():
    pos, clicked = _pbm_sample(20_000, eta=1.0, seed=5)
    est = PositionBiasEstimator().fit(pos, clicked, np.ones(len(pos), bool))
    w = est.ips_weights(np.array([0, 1, 9, 50, np.nan]), max_weight=5.0)
    assert w[0] == 1.0
    assert w[1] == pytest.approx(1.0 / est.examination_[1])
    assert w[2] == 5.0 and w[3] == 5.0  # clipped
    assert w[4] == 1.0  # no slot logged
    with pytest.raises(ValueError, match="max_weight must be >= 1"):
        est.ips_weights(np.array([0]), max_weight=0.5)


def test_round_trips_through_its_dict_form():
    pos, clicked = _pbm_sample(5_000, eta=1.0, seed=6)
    est = PositionBiasEstimator(min_impressions=50).fit(pos, clicked, np.ones(len(pos), bool))
    again = PositionBiasEstimator.from_dict(est.to_dict())
    probe = np.array([0, 3, 9, 30])
    np.testing.assert_array_equal(again.propensity(probe), est.propensity(probe))
    assert again.eta_ == est.eta_


def test_sparse_positions_are_interpolated():
    pos, clicked = _pbm_sample(20_000, eta=1.0, seed=7)
    keep = (pos != 4) | (np.arange(len(pos)) % 200 == 0)  # position 4 nearly unobserved
    est = PositionBiasEstimator(min_impressions=500).fit(pos[keep], clicked[keep], np.ones(keep.sum(), bool))
    assert np.isnan(est.raw_examination_[4])
    assert est.examination_[5] <= est.examination_[4] <= est.examination_[3]


@pytest.mark.parametrize("args, kwargs, error, match", [
    (([0, 1], [True], [True, True]), {}, ValueError, "same length"),
    (([0, 1], [True, False], [False, False]), {}, ValueError, "no true rows"),
    (([0, -1], [True, False], [True, True]), {}, ValueError, "non-negative integers"),
    (([0, 1.5], [True, False], [True, True]), {}, ValueError, "non-negative integers"),
    (([[0, 1]], [True, False], [True, True]), {}, ValueError, "1-dimensional"),
    (([0, 1], [True, False], [True, True]), {"sample_weight": [1.0, -1.0]}, ValueError, "sample_weight must be"),
    (([0, 1], [True, False], [True, True]), {}, ValueError, "fewer than min_impressions"),
    ((["a", "b"], [True, False], [True, True]), {}, TypeError, "position must be array-like"),
])
def test_invalid_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        PositionBiasEstimator().fit(*args, **kwargs)


def test_no_clicks_at_the_top_is_refused():
    with pytest.raises(ValueError, match="no clicks at position 0"):
        PositionBiasEstimator(min_impressions=1).fit([0, 0, 1], [False, False, True], [True, True, True])


def test_unfitted_use_is_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        PositionBiasEstimator().propensity([0])


def test_inputs_from_logs_need_the_contract_columns():
    with pytest.raises(ValueError, match="impressions is missing columns"):
        examination_inputs_from_logs(pd.DataFrame({"impression_id": [1]}), pd.DataFrame({"type": [], "impression_id": []}))


def test_plot_writes_a_png(tmp_path):
    pos, clicked = _pbm_sample(5_000, eta=1.0, seed=8)
    est = PositionBiasEstimator(min_impressions=50).fit(pos, clicked, np.ones(len(pos), bool))
    path = est.plot(tmp_path / "curve.png", truth=(np.arange(10) + 1.0) ** -1.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
