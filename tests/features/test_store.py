"""Feast over the ETL output: apply, materialize, online reads, push, and parity with training rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from features.config import EtlConfig, FeastConfig
from features.outputs import training_feature_names
from features.store import (
    PUSH_SOURCE,
    VIEWS,
    apply_definitions,
    assemble_features,
    build_training_set,
    load_repo_config,
    materialize,
    online_rows,
    open_store,
)

ETL = EtlConfig()
FEATURES = list(training_feature_names(ETL))


def same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


@pytest.fixture(scope="module")
def training(small_features) -> pd.DataFrame:
    return ds.dataset(small_features / "training", format="parquet", partitioning="hive").to_table().to_pandas()


@pytest.fixture(scope="module")
def request_at_t(training) -> pd.DataFrame:
    """The impressions of one request in the middle of the last day; its time is T."""
    last = training[training["date"] == training["date"].max()]
    rid = last.sort_values("ts")["request_id"].iloc[len(last) // 2]
    return last[last["request_id"] == rid].reset_index(drop=True)


@pytest.fixture(scope="module")
def store(small_features, request_at_t, tmp_path_factory):
    """A Feast store in a temp folder over the shared ETL output, materialized as of T."""
    repo = tmp_path_factory.mktemp("feast")
    feast_store = open_store(small_features, FeastConfig(repo_dir=str(repo)))
    apply_definitions(feast_store, small_features, ETL)
    materialize(feast_store, small_features, ETL, end=request_at_t["ts"].iloc[0].to_pydatetime())
    return feast_store


def test_apply_registers_entities_views_and_push_source(store, tmp_path):
    assert {e.name for e in store.list_entities()} == {"user", "item", "seller"}
    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == {v.name for v in VIEWS}
    assert views["user_snapshot"].ttl.days == ETL.snapshot_ttl_days
    assert views["user_realtime"].ttl.days == ETL.realtime_ttl_days
    assert store.get_data_source(PUSH_SOURCE).name == PUSH_SOURCE
    stored = {f.name for v in views.values() for f in v.features}
    assert set(FEATURES) - stored == {f for f in FEATURES if f.startswith(("f_ui_", "f_ctx_"))
                                      or f in ("f_user_tenure_days", "f_item_age_days")
                                      or f.endswith("_today") or "hours_since" in f}
    assert str(store.config.registry.path).startswith(str(store.repo_path))  # nothing outside the temp folder


def test_online_features_equal_offline_point_in_time_features(store, request_at_t):
    """Parity: the online rows as of T, through the serving assembly, give the ETL's training features at T."""
    user = int(request_at_t["user_id"].iloc[0])
    items = online_rows(store, "item_snapshot", request_at_t["item_id"].tolist())
    sellers = online_rows(store, "seller_snapshot", request_at_t["seller_id"].tolist())
    user_rows = pd.concat([online_rows(store, "user_snapshot", [user]).drop(columns="user_id"),
                           online_rows(store, "user_realtime", [user]).drop(columns="user_id")], axis=1)
    rows = pd.concat([items.reset_index(drop=True), sellers.drop(columns="seller_id").reset_index(drop=True),
                      pd.concat([user_rows] * len(items), ignore_index=True)], axis=1)
    rows["ts_us"] = int(request_at_t["ts"].iloc[0].value // 1000)
    rows["device"] = request_at_t["device"].to_numpy()
    online = assemble_features(rows, ETL).to_numpy()
    offline = request_at_t[FEATURES].to_numpy()
    ok = same(online, offline)
    assert ok.all(), [f for f, good in zip(FEATURES, ok.all(axis=0), strict=True) if not good]
    assert user_rows.notna().any(axis=None)
    assert (online[:, FEATURES.index("f_item_views_30d")] > 0).any()  # real history was served


def test_training_set_from_feast_equals_the_etl_rows(store, training):
    sample = training.sample(n=min(300, len(training)), random_state=3).reset_index(drop=True)
    built = build_training_set(store, sample.drop(columns=FEATURES), ETL)
    assert len(built) == len(sample) and built["impression_id"].equals(sample["impression_id"])
    ok = same(built[FEATURES].to_numpy(), sample[FEATURES].to_numpy())
    assert ok.all(), [f for f, good in zip(FEATURES, ok.all(axis=0), strict=True) if not good]
    assert built["label"].equals(sample["label"])


def test_unknown_entities_read_as_missing_rows(store):
    rows = online_rows(store, "user_snapshot", [10**12])
    assert rows.drop(columns="user_id").isna().all(axis=None)


def test_push_source_updates_the_online_intraday_row(store, request_at_t):
    user = 10**9  # a user of its own: the other tests' online rows stay as materialized
    t = request_at_t["ts"].iloc[0] + pd.Timedelta(seconds=1)
    day = int(t.value // 1000 // 86_400_000_000)
    pushed = pd.DataFrame({"user_id": [user], "event_timestamp": [t], "rt_day": [day], "rt_views": [999],
                           "rt_clicks": [7], "rt_carts": [0], "rt_purchases": [0],
                           "rt_last_view_us": [t.value // 1000], "rt_last_event_us": [t.value // 1000]})
    store.push(PUSH_SOURCE, pushed)
    row = online_rows(store, "user_realtime", [user]).iloc[0]
    assert (row["rt_views"], row["rt_clicks"]) == (999, 7)


def test_redis_profile_builds_a_config(tmp_path):
    config = load_repo_config(tmp_path, FeastConfig(repo_dir=str(tmp_path), online_store="redis",
                                                   redis_connection="redis.internal:6380,db=2"))
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == "redis.internal:6380,db=2"


def test_apply_before_the_etl_says_so(tmp_path):
    store = open_store(tmp_path, FeastConfig(repo_dir=str(tmp_path / "feast")))
    with pytest.raises(FileNotFoundError, match="run `feedrank etl` first"):
        apply_definitions(store, tmp_path, ETL)
