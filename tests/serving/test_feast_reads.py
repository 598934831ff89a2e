"""FeastUserFeatures over a real (tiny) Feast SQLite store: the direct online_read path gives
exactly what get_online_features gives, and a failing store takes the snapshot fallback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from serving.features import FeastUserFeatures, SnapshotUserFeatures

T0 = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def feast_store(tmp_path_factory):
    """Two user views (snapshot and real-time, as features.store defines them), materialized."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig
    from feast.types import Float64, Int64
    from feast.value_type import ValueType

    root = tmp_path_factory.mktemp("feast_reads")
    rng = np.random.default_rng(3)
    users = np.arange(1, 41, dtype=np.int64)
    snap = pd.DataFrame({"user_id": users, "event_timestamp": pd.Timestamp(T0 - timedelta(hours=2)),
                         "f_user_ctr_30d": rng.random(40), "f_user_purchases_30d": rng.integers(0, 9, 40)})
    snap.loc[3, "f_user_ctr_30d"] = np.nan  # a null value in a present row
    snap = snap[snap["user_id"] != 7]  # user 7 has a real-time row only
    rt = pd.DataFrame({"user_id": users[::3], "event_timestamp": pd.Timestamp(T0 - timedelta(hours=1)),
                       "rt_views": rng.integers(0, 50, len(users[::3])), "rt_last_view_us": rng.random(len(users[::3]))})
    snap.to_parquet(root / "snap.parquet")
    rt.to_parquet(root / "rt.parquet")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    views = [
        FeatureView(name="user_snapshot", entities=[user], ttl=timedelta(days=30),
                    schema=[Field(name="f_user_ctr_30d", dtype=Float64), Field(name="f_user_purchases_30d", dtype=Int64)],
                    source=FileSource(name="snap_source", path=str(root / "snap.parquet"),
                                      timestamp_field="event_timestamp")),
        FeatureView(name="user_realtime", entities=[user], ttl=timedelta(days=2),
                    schema=[Field(name="rt_views", dtype=Int64), Field(name="rt_last_view_us", dtype=Float64)],
                    source=FileSource(name="rt_source", path=str(root / "rt.parquet"),
                                      timestamp_field="event_timestamp")),
    ]
    config = RepoConfig(project="feedrank_test", provider="local", repo_path=root,
                        registry={"registry_type": "file", "path": str(root / "registry.db"), "cache_ttl_seconds": 60},
                        online_store={"type": "sqlite", "path": str(root / "online.db")},
                        offline_store={"type": "file"}, entity_key_serialization_version=3)
    store = FeatureStore(config=config, repo_path=str(root))
    store.apply([user, *views])
    store.materialize(start_date=T0 - timedelta(days=3), end_date=T0)
    fallback = SnapshotUserFeatures(pd.DataFrame({"user_id": [7, 99], "f_user_ctr_30d": [0.5, 0.25],
                                                  "f_user_purchases_30d": [1.0, 2.0]}))
    return store, fallback


def _users(store, fallback) -> FeastUserFeatures:
    return FeastUserFeatures(store, snapshot_refs=["user_snapshot:f_user_ctr_30d", "user_snapshot:f_user_purchases_30d"],
                             realtime_refs=["user_realtime:rt_views", "user_realtime:rt_last_view_us"],
                             fallback=fallback)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(
        (x == y and type(x) is type(y)) or (x != x and y != y) for x, y in ((a[k], b[k]) for k in a))


def test_direct_reads_equal_get_online_features(feast_store):
    store, fallback = feast_store
    direct = _users(store, fallback)
    generic = _users(store, fallback)
    generic._reader = None  # what every store object without online_read gets
    assert direct._reader is not None
    seen = {"snapshot": 0, "realtime": 0, "fallback": 0}
    for uid in [*range(0, 45), 99, 10**12]:
        got, want = direct.user_rows(uid), generic.user_rows(uid)
        assert _same(got[0], want[0]) and _same(got[1], want[1]) and got[2] == want[2] == (), uid
        seen["snapshot"] += got[0] is not None and uid not in (7, 99)
        seen["realtime"] += got[1] is not None
        seen["fallback"] += uid in (7, 99) and got[0] == fallback.snapshot_row(uid)
    assert seen == {"snapshot": 39, "realtime": 14, "fallback": 2}
    row = direct.user_rows(4)[0]
    assert row is not None and row["f_user_ctr_30d"] is None  # NaN was stored as null, as Feast reads it


def test_failing_online_store_takes_the_snapshot_fallback(feast_store):
    store, fallback = feast_store
    users = _users(store, fallback)

    class Broken:
        def online_read(self, **_):
            raise ConnectionError("online store down")

    users._reader._online_store = Broken()
    assert users.user_rows(7) == (fallback.snapshot_row(7), None, ("online_store",))
