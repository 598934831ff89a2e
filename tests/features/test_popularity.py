"""Popularity: one weighted count, the same numbers in retrieval, the serving snapshot and the policies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments.policies import DEFAULT_EVENT_WEIGHTS, LogHistory, PopularityPolicy
from features.contract import EVENT_TYPES
from features.popularity import (
    DEFAULT_POPULARITY_WEIGHTS,
    POPULARITY_EVENT_WEIGHTS,
    event_weights,
    log_popularity,
    popularity_counts,
)
from infra.train import build_item_snapshot
from retrieval.config import ServingConfig
from retrieval.inputs import Vocabulary
from retrieval.logs import EventLog
from retrieval.popularity import SegmentPopularity

T0 = pd.Timestamp("2024-03-01", tz="UTC")
N_ITEMS = 12


def _tables(seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n = 200
    users = pd.DataFrame({"user_id": [1, 2, 3], "signup_ts": [T0 - pd.Timedelta(days=100)] * 3,
                          "country": ["DE", "FR", "DE"], "device": ["mobile", "desktop", "mobile"]})
    sellers = pd.DataFrame({"seller_id": [10, 11], "created_ts": [T0 - pd.Timedelta(days=400)] * 2,
                            "rating": [4.5, 4.0]})
    ids = np.arange(N_ITEMS)
    items = pd.DataFrame({"item_id": ids, "seller_id": np.where(ids < 6, 10, 11), "category_id": ids % 3,
                          "price": np.linspace(5.0, 60.0, N_ITEMS), "margin_rate": 0.1,
                          "created_ts": [T0 - pd.Timedelta(days=30)] * N_ITEMS, "in_stock": True})
    impressions = pd.DataFrame({"impression_id": [1], "request_id": [1], "ts": [T0], "user_id": [1], "item_id": [0],
                                "position": [0], "policy": ["p"], "randomized": [False], "propensity": [None],
                                "device": ["mobile"]})
    events = pd.DataFrame({
        "event_id": np.arange(n), "ts": T0 + pd.to_timedelta(np.sort(rng.integers(0, 5 * 86_400, n)), unit="s"),
        "user_id": rng.integers(1, 4, n), "item_id": rng.integers(0, N_ITEMS - 2, n),  # the last two: no events
        "type": rng.choice(list(EVENT_TYPES), n, p=[0.7, 0.2, 0.1]),
        "impression_id": pd.array([None] * n, dtype="Int64"), "quantity": 1, "price_paid": None})
    return {"users": users, "sellers": sellers, "items": items, "impressions": impressions, "events": events}


def test_weights_are_declared_once():
    assert dict(POPULARITY_EVENT_WEIGHTS) == {"click": 1.0, "add_to_cart": 2.0, "purchase": 4.0}
    assert DEFAULT_POPULARITY_WEIGHTS == tuple(POPULARITY_EVENT_WEIGHTS[t] for t in EVENT_TYPES)
    assert ServingConfig().popularity_weights == DEFAULT_POPULARITY_WEIGHTS
    assert DEFAULT_EVENT_WEIGHTS is POPULARITY_EVENT_WEIGHTS
    names = np.array(["purchase", "click", "add_to_cart"])
    codes = np.array([EVENT_TYPES.index(t) for t in names], dtype=np.int8)
    np.testing.assert_array_equal(event_weights(names), [4.0, 1.0, 2.0])
    np.testing.assert_array_equal(event_weights(codes), [4.0, 1.0, 2.0])
    np.testing.assert_array_equal(event_weights(names, {"purchase": 1.0}), [1.0, 0.0, 0.0])


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: event_weights(np.array(["view"])), ValueError, "event types must be among"),
    (lambda: event_weights(np.array([3])), ValueError, "event type codes must be in"),
    (lambda: event_weights(np.array(["click"]), {"view": 1.0}), ValueError, "event_weights keys"),
    (lambda: event_weights(np.array(["click"]), {"click": -1.0}), ValueError, r"event_weights\['click'\]"),
    (lambda: event_weights(np.array(["click"]), (1.0, 2.0)), ValueError, "3 finite numbers"),
    (lambda: event_weights(np.array(["click"]), "click"), TypeError, "a mapping or a sequence"),
    (lambda: popularity_counts([1, 2], ["click"]), ValueError, "same length"),
    (lambda: log_popularity([1.0], prior=0.0), ValueError, "prior must be"),
])
def test_invalid_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_retrieval_snapshot_and_policy_count_the_same(tmp_path):
    tables = _tables()
    ev = tables["events"]
    expected = popularity_counts(ev["item_id"].to_numpy(), ev["type"].to_numpy())
    counts = expected.reindex(np.arange(N_ITEMS), fill_value=0.0).to_numpy()
    assert counts[-2:].tolist() == [0.0, 0.0] and counts.sum() == pytest.approx(event_weights(ev["type"]).sum())

    # experiments: the popularity_logs policy scores log(1 + count).
    history = LogHistory(events=ev[["ts", "user_id", "item_id", "type"]], items=tables["items"])
    np.testing.assert_allclose(PopularityPolicy.from_history(history).item_score, log_popularity(counts))

    # retrieval: the global order of the popularity fallback.
    log = EventLog.from_tables(tables)
    seg = SegmentPopularity.fit(log, devices=Vocabulary.fit(log.users["device"].to_numpy()), hour_bands=(0, 12),
                                config=ServingConfig(), end_us=int(ev["ts"].max().value // 1000) + 1)
    got = pd.Series(seg.global_scores, index=seg.global_item_ids)
    pd.testing.assert_series_equal(got.sort_index(), expected[expected > 0].sort_index(), check_names=False,
                                   check_index_type=False)

    # infra: the serving snapshot's popularity column (the window of 7 days holds all 5 days of events).
    logs, features = tmp_path / "logs", tmp_path / "features"
    for name in ("items", "events"):
        (logs / name).mkdir(parents=True)
        tables[name].to_parquet(logs / name / "part-0.parquet")
    for name, key in (("item_features", "item_id"), ("seller_features", "seller_id")):
        part = features / name / "date=2024-03-06"
        part.mkdir(parents=True)
        pd.DataFrame({key: tables[name.split("_")[0] + "s"][key]}).to_parquet(part / "part-0.parquet")
    snapshot = build_item_snapshot(logs, features)
    np.testing.assert_allclose(snapshot.set_index("item_id")["popularity"].reindex(np.arange(N_ITEMS)), counts)
