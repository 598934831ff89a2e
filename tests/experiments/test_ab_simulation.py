"""Simulated A/B: the harness, its baseline policies, and an analysis that recovers the true lift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from experiments.ab import assign_arm
from experiments.ab_readout import analyze_experiment, load_experiment, read_metadata
from experiments.ab_simulation import ABSimulationConfig, run_ab_simulation
from experiments.config import SimulatorConfig
from experiments.policies import (
    HistoryAffinityPolicy,
    LogHistory,
    OraclePolicy,
    PopularityPolicy,
    RankingPolicy,
)
from experiments.simulator import MarketplaceSimulator
from experiments.simulator.policy import LOGGING_POLICY_NAME, RANDOM_POLICY_NAME
from features.contract import TABLE_ORDER
from features.validation import validate_logs

CONFIG = SimulatorConfig(users=8000, items=2000, sellers=100, categories=20, days=10, seed=7)
DESIGN = ABSimulationConfig(pre_days=3, experiment_days=7, salt="test-ab-1")


@pytest.fixture(scope="module")
def sim() -> MarketplaceSimulator:
    return MarketplaceSimulator(CONFIG)


@pytest.fixture(scope="module")
def ab_run(tmp_path_factory, sim):
    """Popularity (control) against the history-affinity policy learnt from the pre-period."""
    seen_history: list[LogHistory] = []

    def factory(history: LogHistory) -> HistoryAffinityPolicy:
        seen_history.append(history)
        return HistoryAffinityPolicy.from_history(history, feed_length=CONFIG.feed_length)

    out = tmp_path_factory.mktemp("ab") / "logs"
    result = run_ab_simulation(sim, PopularityPolicy.from_simulator(sim), factory, out, config=DESIGN, progress=False)
    data = load_experiment(out)
    return result, data, analyze_experiment(data), seen_history


@pytest.fixture(scope="module")
def aa_run(tmp_path_factory, sim):
    """The same harness with the same policy in both arms."""
    out = tmp_path_factory.mktemp("aa") / "logs"
    policy = PopularityPolicy.from_simulator(sim)
    result = run_ab_simulation(sim, policy, policy, out, config=DESIGN, progress=False)
    data = load_experiment(out)
    return result, data, analyze_experiment(data)


def _read(root: Path, table: str) -> pd.DataFrame:
    return ds.dataset(root / table, format="parquet").to_table().to_pandas()


# ------------------------------------------------------------------ the analysis recovers the truth


def test_analysis_recovers_the_true_lift_inside_its_intervals(ab_run):
    result, data, readout, _ = ab_run
    truth = result.truth["gmv"]
    assert truth.relative_lift > 0.1  # personalisation from history really helps these buyers
    assert not readout.srm.mismatch and readout.srm.p_value > 0.01
    assert readout.srm.n_control + readout.srm.n_treatment == truth.n_users == len(data.users)
    assert dict(result.users_by_arm) == {"control": readout.srm.n_control, "treatment": readout.srm.n_treatment}
    assert len(data.requests) == truth.n_requests

    per_user = [readout.gmv_per_user, readout.gmv_per_user_cuped.effect]
    per_request = [readout.gmv_per_request, readout.gmv_per_request_clustered]
    for est in per_user:
        assert est.ci_low < truth.per_user_lift < est.ci_high, (est, truth)
    for est in per_request:
        assert est.ci_low < truth.per_request_lift < est.ci_high, (est, truth)
    for est in per_user + per_request:
        assert est.relative_ci_low < truth.relative_lift < est.relative_ci_high, (est, truth)
        assert est.p_value < 0.01 and est.ci_low > 0  # and the experiment detects it


def test_clustered_errors_match_the_delta_method_and_exceed_naive_ones(ab_run):
    _, _, readout, _ = ab_run
    delta, clustered, naive = readout.gmv_per_request, readout.gmv_per_request_clustered, readout.gmv_per_request_naive
    # Same point estimate: OLS on request rows with a binary regressor is the difference of arm ratios.
    assert clustered.estimate == pytest.approx(delta.estimate, rel=1e-9)
    assert clustered.std_error == pytest.approx(delta.std_error, rel=0.02)
    # Requests of one user are correlated; ignoring it understates the error.
    assert naive.std_error < 0.95 * clustered.std_error


def test_cuped_reduces_variance_without_moving_the_target(ab_run):
    result, data, readout, _ = ab_run
    cuped = readout.gmv_per_user_cuped
    assert cuped.variance_reduction > 0.05
    assert cuped.effect.std_error < cuped.unadjusted.std_error
    # The covariate comes from the pre-period, where both arms got control: it is balanced.
    assert readout.pre_period_aa.p_value > 0.05
    assert data.users["pre_gmv"].sum() > 0 and (data.users["pre_requests"] > 0).mean() > 0.5


def test_aa_on_the_same_harness_finds_nothing(aa_run):
    result, _, readout = aa_run
    truth = result.truth["gmv"]
    assert truth.control_total == truth.treatment_total and truth.per_user_lift == 0.0
    assert not readout.srm.mismatch
    for est in (readout.gmv_per_user, readout.gmv_per_user_cuped.effect, readout.gmv_per_request,
                readout.gmv_per_request_clustered):
        assert est.p_value > 0.05 and est.ci_low < 0.0 < est.ci_high, est
    assert readout.gmv_per_user_cuped.variance_reduction > 0.0


# ------------------------------------------------------------------ the harness and its logs


def test_logs_follow_the_contract_and_the_design(ab_run, sim):
    result, _, _, _ = ab_run
    root = Path(result.log_dir)
    # Every dimension table, and the facts of the last pre-period day and the first experiment
    # day (feed events reference impressions of their own chunk; organic events none).
    tables = {t: ds.dataset(root / t, format="parquet").to_table() for t in ("users", "sellers", "items")}
    for t in ("impressions", "events"):
        parts = sorted(p for d in (DESIGN.pre_days - 1, DESIGN.pre_days) for p in (root / t).glob(f"part-{d:03d}-*"))
        tables[t] = ds.dataset(parts, format="parquet").to_table()
    assert set(tables) == set(TABLE_ORDER) and "arm" in tables["impressions"].column_names
    assert tables["impressions"].num_rows > 50_000
    for name, res in validate_logs(tables).items():
        assert len(res.quarantined) == 0, (name, res.reason_counts())

    imp = _read(root, "impressions")
    start = result.experiment_start
    assert start == pd.Timestamp(CONFIG.start_date, tz="UTC") + pd.Timedelta(days=DESIGN.pre_days)
    pre, exp = imp[imp["ts"] < start], imp[imp["ts"] >= start]
    # Pre-period: both arms on the incumbent's exploring policy (noisy popularity, a randomized share).
    assert set(pre["policy"]) == {LOGGING_POLICY_NAME, RANDOM_POLICY_NAME}
    assert set(pre["arm"]) == {"control", "treatment"}
    rand = pre[pre["randomized"]]
    assert 0 < rand["request_id"].nunique() < 0.1 * pre["request_id"].nunique()
    assert rand["propensity"].notna().all() and pre.loc[~pre["randomized"], "propensity"].isna().all()
    # Experiment: each arm's policy, users in the arm the salted hash gives them.
    assert (exp.groupby("arm")["policy"].unique().map(tuple).to_dict()
            == {"control": (result.control_policy,), "treatment": (result.treatment_policy,)})
    users = imp.drop_duplicates("user_id")
    expected = np.where(assign_arm(users["user_id"].to_numpy(), DESIGN.salt, 0.5), "treatment", "control")
    np.testing.assert_array_equal(users["arm"].to_numpy(), expected)
    meta = read_metadata(root)
    assert meta["arms"] == {"control": "popularity-v1", "treatment": "history-affinity-v1"}
    assert meta["truth"]["gmv"]["relative_lift"] == pytest.approx(result.truth["gmv"].relative_lift)


def test_true_control_value_is_the_expected_outcome_of_the_control_feeds(ab_run, sim):
    """Recompute sum_r g_C(r) independently: popularity serves one feed per day to everybody."""
    result, data, _, _ = ab_run
    policy = PopularityPolicy.from_simulator(sim)
    total, n_requests = 0.0, 0
    for day in range(DESIGN.pre_days, DESIGN.pre_days + DESIGN.experiment_days):
        reqs = sim.requests_for_day(day)
        feeds = policy.serve(reqs, sim.available_items(day), np.random.default_rng(0))
        total += sim.expected_outcome(reqs, feeds).gmv.sum()
        n_requests += len(reqs)
    truth = result.truth["gmv"]
    assert truth.control_total == pytest.approx(total, rel=1e-12)
    assert truth.n_requests == n_requests
    # Observed control-arm GMV per request sits near its expectation.
    control = data.requests[data.requests["treated"] == 0]
    assert control["gmv"].mean() == pytest.approx(total / n_requests, rel=0.15)


def test_treatment_factory_sees_only_history_before_the_experiment(ab_run):
    result, _, _, seen = ab_run
    assert len(seen) == 1
    events = seen[0].events
    assert len(events) > 1000 and events["ts"].max() < result.experiment_start
    assert events["impression_id"].isna().any()  # organic events count as history


def test_pre_period_exploration_and_the_exported_history(tmp_path):
    """A factory may export the contract logs before the start (what a trained model learns from)."""
    small = MarketplaceSimulator(SimulatorConfig(users=300, items=200, sellers=20, categories=8, days=3, seed=4))
    design = ABSimulationConfig(pre_days=2, experiment_days=1, pre_period_policy="control",
                                pre_period_randomized_share=0.3)
    exported: list[Path] = []

    def factory(history: LogHistory) -> PopularityPolicy:
        exported.append(history.export_logs(tmp_path / "history"))
        with pytest.raises(FileExistsError, match="out_dir"):
            history.export_logs(tmp_path / "history")
        return PopularityPolicy.from_history(history, feed_length=small.config.feed_length)

    result = run_ab_simulation(small, PopularityPolicy.from_simulator(small), factory, tmp_path / "ab", config=design,
                               progress=False)
    start = result.experiment_start
    tables = {t: ds.dataset(exported[0] / t, format="parquet").to_table() for t in TABLE_ORDER}
    for name, res in validate_logs(tables).items():
        assert len(res.quarantined) == 0, (name, res.reason_counts())
    imp, ev = tables["impressions"].to_pandas(), tables["events"].to_pandas()
    assert imp["ts"].max() < start and ev["ts"].max() < start and "arm" not in imp.columns
    logged = _read(Path(result.log_dir), "impressions")
    pre = logged[logged["ts"] < start]
    assert len(imp) == len(pre)  # every pre-period impression, nothing after
    share = pre.groupby("request_id")["randomized"].first().mean()
    assert 0.2 < share < 0.4 and not logged.loc[logged["ts"] >= start, "randomized"].any()
    rand = pre[pre["randomized"]]
    n = min(small.config.shuffle_top_n, small.config.feed_length)
    assert np.allclose(rand.loc[rand["position"] < n, "propensity"], 1.0 / n)
    # A randomized feed holds the same items as the control's feed, in another order.
    feed = PopularityPolicy.from_simulator(small).serve(small.requests_for_day(0).take(slice(0, 1)),
                                                        small.available_items(0), np.random.default_rng(0))[0]
    first = rand[rand["ts"] < pd.Timestamp(small.config.start_date, tz="UTC") + pd.Timedelta(days=1)]
    one = first[first["request_id"] == first["request_id"].iloc[0]].sort_values("position")["item_id"].to_numpy()
    assert sorted(one) == sorted(feed) and not np.array_equal(one, feed)


# ------------------------------------------------------------------ policies


def test_popularity_policy_serves_the_top_available_items(sim):
    policy = PopularityPolicy.from_simulator(sim)
    reqs = sim.requests_for_day(0).take(slice(0, 5))
    available = sim.available_items(0)
    feeds = policy.serve(reqs, available, np.random.default_rng(0))
    assert feeds.shape == (5, CONFIG.feed_length) and (feeds == feeds[0]).all()
    score = sim.world.item_log_popularity
    assert available[feeds[0]].all() and np.all(np.diff(score[feeds[0]]) <= 0)
    assert score[feeds[0]].min() >= score[available & ~np.isin(np.arange(len(score)), feeds[0])].max()


def test_history_affinity_follows_each_buyers_history():
    items = pd.DataFrame({"item_id": np.arange(12), "category_id": np.repeat([0, 1, 2], 4)})
    events = pd.DataFrame({"user_id": [5, 5, 5, 9, 9, 9, 9], "item_id": [0, 1, 2, 8, 9, 9, 10],
                           "type": ["click", "purchase", "click", "click", "add_to_cart", "purchase", "click"]})
    history = LogHistory(events=events, items=items)
    policy = HistoryAffinityPolicy.from_history(history, feed_length=4, prior_strength=0.5)
    from experiments.simulator import Requests
    reqs = Requests(request_id=np.arange(3), user_id=np.array([5, 9, 77]), ts_us=np.zeros(3, np.int64),
                    device=np.zeros(3, np.int8))
    feeds = policy.serve(reqs, np.ones(12, dtype=bool), np.random.default_rng(0))
    cat = items["category_id"].to_numpy()
    assert (cat[feeds[0]] == 0).all() and feeds[0][0] == 1  # the bought item leads
    assert (cat[feeds[1]] == 2).all() and feeds[1][0] == 9
    assert set(feeds[2][:2]) == {9, 1}  # unknown buyer: the population's favourites
    # Unavailable items are never served, and short catalogs leave empty slots.
    mask = np.zeros(12, dtype=bool)
    mask[[3, 4]] = True
    assert sorted(policy.serve(reqs, mask, np.random.default_rng(0))[0].tolist()) == [-1, -1, 3, 4]
    assert isinstance(policy, RankingPolicy) and isinstance(PopularityPolicy(np.zeros(3)), RankingPolicy)


@pytest.mark.parametrize(("build", "error", "match"), [
    (lambda: PopularityPolicy(np.array([1.0, np.nan])), ValueError, "item_score"),
    (lambda: PopularityPolicy(np.zeros(3), feed_length=0), ValueError, "feed_length"),
    (lambda: PopularityPolicy(np.zeros(3), feed_length=2.0), TypeError, "feed_length"),
    (lambda: PopularityPolicy(np.zeros(3), name=""), ValueError, "name"),
    (lambda: LogHistory(events=pd.DataFrame({"user_id": [1]}), items=pd.DataFrame()), ValueError, "events"),
    (lambda: LogHistory(events=pd.DataFrame({"user_id": [1], "item_id": [0], "type": ["view"]}),
                        items=pd.DataFrame({"item_id": [0], "category_id": [0]})), ValueError, "events.type"),
    (lambda: LogHistory(events=pd.DataFrame({"user_id": [1], "item_id": [0], "type": ["click"]}),
                        items=pd.DataFrame({"item_id": [3], "category_id": [0]})), ValueError, "items.item_id"),
    (lambda: HistoryAffinityPolicy.from_history(
        LogHistory(events=pd.DataFrame({"user_id": [1], "item_id": [0], "type": ["click"]}),
                   items=pd.DataFrame({"item_id": [0], "category_id": [0]})), prior_strength=0.0),
     ValueError, "prior_strength"),
    (lambda: PopularityPolicy.from_history("logs"), TypeError, "history"),
    (lambda: ABSimulationConfig(pre_days=0), ValueError, "pre_days"),
    (lambda: ABSimulationConfig(treatment_share=1.0), ValueError, "treatment_share"),
    (lambda: ABSimulationConfig(pre_period_randomized_share=1.5), ValueError, "pre_period_randomized_share"),
    (lambda: ABSimulationConfig(pre_period_randomized_share=0.2), ValueError, "pre_period_randomized_share"),
    (lambda: ABSimulationConfig(pre_period_policy="random"), ValueError, "pre_period_policy"),
    (lambda: ABSimulationConfig(batch_minutes=0), ValueError, "batch_minutes"),
    (lambda: LogHistory(events=pd.DataFrame({"user_id": [1], "item_id": [0], "type": ["click"]}),
                        items=pd.DataFrame({"item_id": [0], "category_id": [0]})).export_logs("x"),
     ValueError, "log_dir"),
])
def test_invalid_arguments_name_the_argument(build, error, match):
    with pytest.raises(error, match=match):
        build()


class _Broken:
    name = "broken-v0"

    def __init__(self, feeds: np.ndarray) -> None:
        self.feeds = feeds

    def serve(self, requests, available, rng):
        return np.broadcast_to(self.feeds, (len(requests), self.feeds.size)).copy()


@pytest.mark.parametrize(("make_feed", "match"), [
    (lambda ids: ids[[0, 0, 1]], "twice"),
    (lambda ids: np.array([10_000]), "available item ids"),
    (lambda ids: np.setdiff1d(np.arange(100), ids)[:1], "available item ids"),
    (lambda ids: ids[:2].astype(float), "integer item ids"),
])
def test_malformed_feeds_from_a_policy_are_rejected(tmp_path, make_feed, match):
    small = MarketplaceSimulator(SimulatorConfig(users=50, items=100, sellers=10, days=2, out_of_stock_share=0.1,
                                                 seed=1))
    broken = _Broken(make_feed(np.flatnonzero(small.available_items(1))))
    with pytest.raises((ValueError, TypeError), match=match):
        run_ab_simulation(small, PopularityPolicy.from_simulator(small), broken, tmp_path / "x",
                          config=ABSimulationConfig(pre_days=1, experiment_days=1), progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_harness_refuses_a_period_longer_than_the_simulators(tmp_path, sim):
    with pytest.raises(ValueError, match="simulator.config.days"):
        run_ab_simulation(sim, PopularityPolicy.from_simulator(sim), PopularityPolicy.from_simulator(sim),
                          tmp_path / "x", config=ABSimulationConfig(pre_days=5, experiment_days=6))


def test_readout_needs_an_arm_column_and_a_start(tmp_path, small_logs):
    with pytest.raises(ValueError, match="experiment_start must be given"):
        load_experiment(small_logs)
    with pytest.raises(ValueError, match="arm_column"):
        load_experiment(small_logs, experiment_start="2026-01-06")
    with pytest.raises(ValueError, match="policy must hold"):
        load_experiment(small_logs, experiment_start="2026-01-06", arm_column="policy")


# ------------------------------------------------------------------ popularity against the full system


@pytest.mark.slow
def test_analysis_recovers_the_true_lift_of_the_full_system(full_system_ab):
    """Popularity vs a bundle trained on the pre-period and served through the serving pipeline."""
    result, readout, data = full_system_ab["result"], full_system_ab["readout"], full_system_ab["data"]
    truth = result.truth["gmv"]
    assert result.treatment_policy == "full-system-v1" and result.control_policy == "popularity-v1"
    assert truth.treatment_total != truth.control_total  # the two arms really serve different feeds
    assert not readout.srm.mismatch and readout.pre_period_aa.p_value > 0.05
    assert readout.srm.n_control + readout.srm.n_treatment == truth.n_users == len(data.users)
    for est in (readout.gmv_per_user, readout.gmv_per_user_cuped.effect):
        assert est.ci_low < truth.per_user_lift < est.ci_high, (est, truth)
    for est in (readout.gmv_per_request, readout.gmv_per_request_clustered):
        assert est.ci_low < truth.per_request_lift < est.ci_high, (est, truth)
        assert est.relative_ci_low < truth.relative_lift < est.relative_ci_high, (est, truth)
    assert readout.gmv_per_user_cuped.effect.std_error <= readout.gmv_per_user_cuped.unadjusted.std_error


@pytest.mark.slow
def test_the_full_system_is_trained_only_on_logs_before_the_experiment(full_system_ab):
    result, history = full_system_ab["result"], full_system_ab["history"]
    start = result.experiment_start
    assert history.before == start and history.events["ts"].max() < start
    root = Path(full_system_ab["bundle_dir"]).parent.parent / "pre-period-logs"
    imp, ev = _read(root, "impressions"), _read(root, "events")
    assert imp["ts"].max() < start and ev["ts"].max() < start and "arm" not in imp.columns
    # The pre-period (the exploring incumbent) carried the randomized traffic the position-bias
    # estimate needs, in both arms.
    rand = imp[imp["randomized"]]
    assert 0.05 < rand["request_id"].nunique() / imp["request_id"].nunique() < 0.15
    n = min(full_system_ab["sim"].config.shuffle_top_n, full_system_ab["sim"].config.feed_length)
    assert np.allclose(rand.loc[rand["position"] < n, "propensity"], 1.0 / n)
    assert rand.loc[rand["position"] >= n, "propensity"].isna().all()
    assert imp.loc[~imp["randomized"], "propensity"].isna().all()
    assert set(imp["policy"]) == {LOGGING_POLICY_NAME, RANDOM_POLICY_NAME}


@pytest.mark.slow
def test_the_full_system_beats_popularity_on_the_truth(full_system_ab):
    """On the simulator's exact expectations, side by side on the same requests: the trained bundle
    earns more GMV than the popularity incumbent and the oracle bounds everybody."""
    gmv = full_system_ab["result"].per_user("gmv")
    # Four days of logs are little to learn from (measured here: full system 1.05x popularity, its scores before
    # re-ranking 1.10x, category affinity 1.51x); benchmarks/ab_simulation.py's two weeks give 1.65-2.40x.
    assert gmv["treatment"] > gmv["control"], gmv
    assert gmv["stage_model"] > 1.05 * gmv["control"], gmv
    assert gmv["oracle"] > max(v for k, v in gmv.items() if k != "oracle"), gmv
    assert gmv["stage_retrieval_ceiling"] >= gmv["stage_model"], gmv


def test_side_by_side_arms_are_judged_on_the_same_requests_and_observers_see_the_stream(tmp_path):
    """Side arms are asked on every experiment request and judged on the truth, never served; the
    oracle beats popularity; a policy with ``observe`` gets every logged row, in time order."""
    small = MarketplaceSimulator(SimulatorConfig(users=300, items=200, sellers=20, categories=8, days=3, seed=5))
    design = ABSimulationConfig(pre_days=2, experiment_days=1, batch_minutes=60)
    control = PopularityPolicy.from_simulator(small)
    seen: list[tuple[pd.Timestamp, int, int]] = []

    class Observing(PopularityPolicy):
        def observe(self, impressions: pd.DataFrame, events: pd.DataFrame) -> None:
            seen.append((impressions["ts"].max(), len(impressions), len(events)))

    watcher = Observing(item_score=control.item_score, feed_length=control.feed_length, name="observing")
    result = run_ab_simulation(small, control, control, tmp_path / "ab", config=design, progress=False,
                               arms={"oracle": OraclePolicy(small), "watcher": watcher,
                                     "logs": lambda h: PopularityPolicy.from_history(h, feed_length=20)})
    per_user = result.per_user("gmv")
    assert set(per_user) == {"control", "treatment", "oracle", "watcher", "logs"}
    assert per_user["watcher"] == pytest.approx(per_user["control"])  # same feeds, same requests
    assert per_user["oracle"] > 2 * per_user["control"]
    assert result.arm_policies["oracle"] == "oracle"
    logged = _read(Path(result.log_dir), "impressions")
    assert set(logged["policy"]) >= {"popularity-v1"} and "oracle" not in set(logged["policy"])
    # the pre-period in one call, then one call per served batch, in time order
    assert seen[0][1] == (logged["ts"] < result.experiment_start).sum()
    stamps = [t for t, _, _ in seen[1:]]
    assert len(stamps) >= 12 and stamps == sorted(stamps)
    with pytest.raises(ValueError, match="arms keys"):
        run_ab_simulation(small, control, control, tmp_path / "x", config=design, arms={"control": control})


def test_oracle_policy_serves_the_best_available_items_by_true_value():
    small = MarketplaceSimulator(SimulatorConfig(users=50, items=120, sellers=10, categories=5, days=1, seed=2))
    reqs = small.requests_for_day(0).take(slice(0, 20))
    available = small.available_items(0)
    oracle = OraclePolicy(small, feed_length=10, block=7)
    feeds = oracle.serve(reqs, available, np.random.default_rng(0))
    ids = np.flatnonzero(available)
    value = oracle.true_values(reqs, np.broadcast_to(ids, (len(reqs), ids.size)))
    best = ids[np.argsort(-value, axis=1, kind="stable")[:, :10]]
    np.testing.assert_array_equal(feeds, best)
