"""The simulator: ground truth that is consistent with the logs it writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from scipy import stats

from experiments.config import SimulatorConfig
from experiments.simulator import MarketplaceSimulator, Requests
from experiments.simulator.simulator import ORGANIC_SLOT

DAY = pd.Timedelta(days=1)


def _read(root: Path, table: str) -> pd.DataFrame:
    return ds.dataset(root / table, format="parquet").to_table().to_pandas()


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def explored(tmp_path_factory):
    """A marketplace with much randomized traffic, to check position effects precisely."""
    cfg = SimulatorConfig(users=1500, items=2000, sellers=80, categories=10, days=3, randomized_share=0.35, seed=5)
    sim = MarketplaceSimulator(cfg)
    out = tmp_path_factory.mktemp("explored") / "logs"
    sim.run(out, progress=False)
    imp, ev = _read(out, "impressions"), _read(out, "events")
    clicks = ev.loc[(ev["type"] == "click") & ev["impression_id"].notna(), "impression_id"].astype("int64")
    imp["clicked"] = imp["impression_id"].isin(clicks)
    return sim, imp, ev


def test_same_seed_gives_byte_identical_files(tmp_path):
    cfg = SimulatorConfig(users=200, items=400, sellers=20, days=2, seed=3, chunk_requests=100)
    MarketplaceSimulator(cfg).run(tmp_path / "a", progress=False)
    MarketplaceSimulator(cfg).run(tmp_path / "b", progress=False)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b and len(a) > 5
    MarketplaceSimulator(SimulatorConfig(users=200, items=400, sellers=20, days=2, seed=4, chunk_requests=100)).run(
        tmp_path / "c", progress=False)
    assert _digest(tmp_path / "c") != a


def test_randomized_ctr_follows_the_examination_curve(explored):
    """On shuffled feeds, items are independent of slots, so CTR(p) = c * e(p) for one constant c."""
    sim, imp, _ = explored
    rand = imp[imp["randomized"]]
    by_pos = rand.groupby("position")["clicked"].agg(["sum", "count"])
    exam = sim.examination(by_pos.index.to_numpy())
    c = by_pos["sum"].sum() / (exam * by_pos["count"]).sum()
    expected = c * exam * by_pos["count"]
    chi2 = (((by_pos["sum"] - expected) ** 2) / (expected * (1 - c * exam))).sum()
    p_value = stats.chi2.sf(chi2, df=len(by_pos) - 2)
    assert p_value > 1e-3, (p_value, by_pos.assign(expected=expected))
    # and the curve is really decreasing as the truth says: top slot ~ 1/e(p) times the 10th
    assert by_pos["sum"].iloc[0] / by_pos["count"].iloc[0] > 3 * by_pos["sum"].iloc[9] / by_pos["count"].iloc[9]


def test_logged_ctr_by_position_matches_the_truth_on_all_traffic(explored):
    """Observed clicks per slot agree with the summed true click probabilities within sampling error."""
    sim, imp, _ = explored
    for randomized in (False, True):
        part = imp[imp["randomized"] == randomized]
        device = part["device"].map({"mobile": 0, "desktop": 1, "tablet": 2}).to_numpy()
        hour = part["ts"].dt.hour.to_numpy()
        p_true = sim.click_probability(part["user_id"].to_numpy(), part["item_id"].to_numpy(), devices=device,
                                       hours=hour, positions=part["position"].to_numpy())
        frame = pd.DataFrame({"pos": part["position"].to_numpy(), "obs": part["clicked"].to_numpy(),
                              "p": p_true, "var": p_true * (1 - p_true)})
        g = frame.groupby("pos").sum()
        z = (g["obs"] - g["p"]) / np.sqrt(g["var"])
        assert (z.abs() < 4.0).all(), z  # 20 slots x 2 traffic types: 4 sigma is a < 0.3% family-wise miss


def test_randomized_propensities_are_exact(explored):
    sim, imp, _ = explored
    rand = imp[imp["randomized"]]
    assert np.allclose(rand["propensity"], 1.0 / sim.config.shuffle_top_n)
    assert (rand["policy"] == "random").all()
    assert imp.loc[~imp["randomized"], "propensity"].isna().all()
    # each shuffled request shows each slot exactly once
    assert (rand.groupby("request_id")["position"].nunique() == sim.config.feed_length).all()


def test_events_respect_time_and_funnel(explored):
    sim, imp, ev = explored
    feed = ev[ev["impression_id"].notna()].merge(imp[["impression_id", "ts"]], on="impression_id",
                                                 suffixes=("", "_imp"))
    assert (feed["ts"] > feed["ts_imp"]).all()
    buys = feed[feed["type"] == "purchase"]
    assert (buys["ts"] - buys["ts_imp"] <= 7 * DAY).all()
    assert ((buys["ts"] - buys["ts_imp"]) > DAY).any(), "some purchases come days later"
    end = pd.Timestamp(sim.config.start_date, tz="UTC") + sim.config.days * DAY
    assert (ev["ts"] < end).all()
    # funnel: every purchase and cart follows a click of the same impression
    clicks = set(feed.loc[feed["type"] == "click", "impression_id"])
    assert set(feed.loc[feed["type"] != "click", "impression_id"]) <= clicks
    assert ev["impression_id"].isna().any(), "organic (search) events exist"


def test_new_sellers_join_during_the_period(small_sim, small_logs):
    sellers = _read(small_logs, "sellers")
    start = pd.Timestamp(small_sim.config.start_date, tz="UTC")
    new = sellers["created_ts"] >= start
    assert new.any() and (~new).any()
    assert sellers.loc[new, "rating"].isna().all()
    items = _read(small_logs, "items")
    assert items["seller_id"].isin(sellers.loc[new, "seller_id"]).any()


def test_respond_runs_any_policy_against_the_buyers(small_sim):
    reqs = small_sim.requests_for_day(1)
    reqs = reqs.take(slice(0, 300))
    rng = np.random.default_rng(0)
    served = np.tile(np.arange(10), (len(reqs), 1))
    served[:, -1] = -1  # empty slot
    outcome = small_sim.respond(reqs, served, rng=rng, policy="static-v0")
    assert outcome.impressions.num_rows == 9 * len(reqs)
    assert set(outcome.impressions["policy"].to_pylist()) == {"static-v0"}
    exp = small_sim.expected_outcome(reqs, served)
    assert exp.click.shape == served.shape and (exp.click[:, -1] == 0).all()
    assert (exp.purchase <= exp.click).all()
    assert np.all(exp.gmv_per_request() >= 0)


def test_expected_outcome_is_the_mean_of_respond(small_sim):
    reqs = small_sim.requests_for_day(0).take(slice(0, 200))
    served = np.tile(np.arange(20, 40), (len(reqs), 1))
    exp = small_sim.expected_outcome(reqs, served)
    clicks = []
    for seed in range(30):
        ev = small_sim.respond(reqs, served, rng=np.random.default_rng(seed), policy="x").events.to_pandas()
        clicks.append((ev["type"] == "click").sum())
    mean, sd = np.mean(clicks), np.std(clicks) / np.sqrt(len(clicks))
    assert abs(mean - exp.click.sum()) < 4 * sd + 1


def test_respond_rejects_bad_served(small_sim):
    reqs = small_sim.requests_for_day(0).take(slice(0, 5))
    with pytest.raises(ValueError, match="served must have shape"):
        small_sim.respond(reqs, np.zeros((4, 3), dtype=int), rng=np.random.default_rng(0), policy="x")
    with pytest.raises(ValueError, match="item ids in"):
        small_sim.respond(reqs, np.full((5, 3), 10**9), rng=np.random.default_rng(0), policy="x")
    with pytest.raises(ValueError, match="at most"):
        small_sim.respond(reqs, np.zeros((5, ORGANIC_SLOT + 1), dtype=int), rng=np.random.default_rng(0),
                          policy="x")


def test_requests_are_deterministic_and_sorted(small_sim):
    a, b = small_sim.requests_for_day(2), small_sim.requests_for_day(2)
    assert isinstance(a, Requests)
    assert np.array_equal(a.user_id, b.user_id) and np.array_equal(a.ts_us, b.ts_us)
    assert np.all(np.diff(a.ts_us) >= 0)
    assert (a.ts_us > small_sim.world.user_signup_us[a.user_id]).all()
    with pytest.raises(ValueError, match="day must be in"):
        small_sim.requests_for_day(99)


def test_from_logs_rebuilds_the_same_truth(small_sim, small_logs):
    again = MarketplaceSimulator.from_logs(small_logs)
    assert again.config == small_sim.config
    assert np.array_equal(again.world.user_taste, small_sim.world.user_taste)
    with pytest.raises(FileNotFoundError):
        MarketplaceSimulator.from_logs(small_logs / "users")


@pytest.mark.parametrize(("field", "value", "match"), [
    ("users", 0, "users must be >= 1"),
    ("items", 10, "items must be >= 2 \\* feed_length"),
    ("randomized_share", 1.5, "randomized_share must be in \\[0, 1\\]"),
    ("shuffle_top_n", 50, "shuffle_top_n must be in"),
    ("start_date", "soon", "start_date must be an ISO-8601"),
])
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        SimulatorConfig(**{field: value})
