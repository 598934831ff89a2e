"""PipelinePolicy: the serving request path as a ranking policy of the simulated A/B.

The adapter is checked on serving's cheapest real pipeline (``PopularityPipeline`` over an item
snapshot, which runs the same re-ranking and exploration stages as the model pipeline); the
full system -- a bundle trained on an A/B's pre-period -- is checked in
``test_ab_simulation.py`` through the shared ``full_system_ab`` fixture.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments.policies import PipelinePolicy, RankingPolicy
from experiments.simulator import Requests
from serving.exploration import ExplorationConfig
from serving.pipeline import PopularityPipeline
from serving.rerank import RerankConfig, Reranker
from serving.router import ModelVersions
from serving.snapshot import ItemSnapshot

N_ITEMS = 60
DAY_US = 86_400_000_000


def _pipeline(*, exploration: float = 0.0, in_stock: np.ndarray | None = None) -> PopularityPipeline:
    ids = np.arange(N_ITEMS, dtype=np.int64)
    snapshot = ItemSnapshot(
        item_ids=ids, seller_ids=ids % 15, category_ids=ids % 6, price=np.full(N_ITEMS, 10.0),
        margin_rate=np.full(N_ITEMS, 0.1), in_stock=np.ones(N_ITEMS, bool) if in_stock is None else in_stock,
        is_new_seller=ids % 10 == 0, popularity=np.linspace(100.0, 1.0, N_ITEMS),
        features=pd.DataFrame(index=range(N_ITEMS)))
    return PopularityPipeline(snapshot=snapshot, reranker=Reranker(RerankConfig()),
                              exploration=ExplorationConfig(share=exploration, top_n=5),
                              versions=ModelVersions(retrieval="pop", ranker="pop-v7", purchase_model="pop"))


def _requests(n: int) -> Requests:
    ts = 20_458 * DAY_US + np.arange(n, dtype=np.int64) * 3_600_000_000
    return Requests(request_id=np.arange(n, dtype=np.int64) + 1000, user_id=np.arange(n, dtype=np.int64) % 7,
                    ts_us=ts, device=(np.arange(n) % 3).astype(np.int8))


def test_serves_k_distinct_available_items_through_the_pipeline():
    policy = PipelinePolicy(_pipeline(), feed_length=8, candidate_count=40)
    assert isinstance(policy, RankingPolicy) and policy.name == "pop-v7"
    feeds = policy.serve(_requests(12), np.ones(N_ITEMS, bool), np.random.default_rng(0))
    assert feeds.shape == (12, 8) and feeds.dtype == np.int64
    assert ((feeds >= 0) & (feeds < N_ITEMS)).all()
    assert all(len(set(row)) == 8 for row in feeds.tolist())
    # The re-ranker ran: no more than 40 % of a feed in one category, and the top item leads.
    assert all(np.bincount(row % 6).max() <= 0.4 * 8 for row in feeds)
    assert (feeds[:, 0] == 0).all()


def test_respects_availability_and_pads_short_feeds():
    policy = PipelinePolicy(_pipeline(), feed_length=8, candidate_count=40)
    available = np.ones(N_ITEMS, bool)
    available[:20] = False  # today's most popular items are off sale
    feeds = policy.serve(_requests(6), available, np.random.default_rng(0))
    assert available[feeds].all() and (feeds >= 20).all()
    # Only three items left: they fill the first slots, the rest stay empty.
    few = np.zeros(N_ITEMS, bool)
    few[[41, 50, 59]] = True
    short = PipelinePolicy(_pipeline(), feed_length=8, candidate_count=N_ITEMS).serve(
        _requests(3), few, np.random.default_rng(0))
    assert (np.sort(short[:, :3], axis=1) == [41, 50, 59]).all() and (short[:, 3:] == -1).all()
    # Items the snapshot has out of stock are never served, whatever the mask says.
    in_stock = np.ones(N_ITEMS, bool)
    in_stock[0] = False
    feeds = PipelinePolicy(_pipeline(in_stock=in_stock), feed_length=8).serve(
        _requests(3), np.ones(N_ITEMS, bool), np.random.default_rng(0))
    assert not (feeds == 0).any()


def test_serving_is_deterministic_and_explores_by_request():
    policy = PipelinePolicy(_pipeline(exploration=0.5), feed_length=10, candidate_count=40)
    reqs = _requests(40)
    first = policy.serve(reqs, np.ones(N_ITEMS, bool), np.random.default_rng(1))
    again = PipelinePolicy(_pipeline(exploration=0.5), feed_length=10, candidate_count=40).serve(
        reqs, np.ones(N_ITEMS, bool), np.random.default_rng(99))
    np.testing.assert_array_equal(first, again)
    # The pipeline's exploration shuffles the top 5 slots of some requests, never the rest.
    plain = PipelinePolicy(_pipeline(), feed_length=10, candidate_count=40).serve(
        reqs, np.ones(N_ITEMS, bool), np.random.default_rng(0))
    shuffled = (first != plain).any(axis=1)
    assert 0 < shuffled.sum() < len(reqs)
    np.testing.assert_array_equal(first[:, 5:], plain[:, 5:])
    np.testing.assert_array_equal(np.sort(first[:, :5], axis=1), np.sort(plain[:, :5], axis=1))


@pytest.mark.parametrize(("build", "error", "match"), [
    (lambda: PipelinePolicy("bundle/"), TypeError, "pipeline"),
    (lambda: PipelinePolicy(_pipeline(), feed_length=0), ValueError, "feed_length"),
    (lambda: PipelinePolicy(_pipeline(), feed_length=20, candidate_count=10), ValueError, "candidate_count"),
    (lambda: PipelinePolicy(_pipeline(), candidate_count=100.0), TypeError, "candidate_count"),
    (lambda: PipelinePolicy(_pipeline(), name=""), ValueError, "name"),
    (lambda: PipelinePolicy(_pipeline()).serve(_requests(1), np.ones(N_ITEMS), np.random.default_rng(0)),
     ValueError, "available"),
])
def test_invalid_arguments_name_the_argument(build, error, match):
    with pytest.raises(error, match=match):
        build()


# ------------------------------------------------------------------ the full system (a trained bundle)


@pytest.mark.slow
def test_a_trained_bundle_serves_valid_deterministic_feeds(full_system_ab):
    sim, policy = full_system_ab["sim"], full_system_ab["policy"]
    assert isinstance(policy, RankingPolicy) and policy.name == "full-system-v1"
    day = sim.config.days - 1
    reqs = sim.requests_for_day(day).take(slice(0, 40))
    available = sim.available_items(day)
    feeds = policy.serve(reqs, available, np.random.default_rng(0))
    k = sim.config.feed_length
    assert feeds.shape == (40, k) and (feeds >= 0).all() and available[feeds].all()
    assert all(len(set(row)) == k for row in feeds.tolist())
    assert len({tuple(row) for row in feeds.tolist()}) > 10  # personalised, not one feed for all
    np.testing.assert_array_equal(feeds, policy.serve(reqs, available, np.random.default_rng(5)))
    # Take today's most served items off sale: they disappear, the feeds stay full.
    top = np.bincount(feeds.ravel(), minlength=sim.world.n_items).argsort()[-10:]
    fewer = available.copy()
    fewer[top] = False
    again = policy.serve(reqs, fewer, np.random.default_rng(0))
    assert (again >= 0).all() and fewer[again].all() and not np.isin(again, top).any()
