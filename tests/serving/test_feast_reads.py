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
                             fallback=fallback, timeout_seconds=30.0)  # equality here; the time limit: test_hardening


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


def test_a_locked_then_missing_store_costs_no_call_and_reads_resume(feast_store, snapshot, caplog):
    """Over real gRPC: an exclusive lock on the SQLite file, then the file gone and restored."""
    import os
    import sqlite3
    import threading
    import time

    import grpc

    from serving.config import ServingConfig
    from serving.metrics import ServingMetrics
    from serving.model_pipeline import ModelPipeline
    from serving.proto_gen import feedrank_pb2 as pb
    from serving.proto_gen import feedrank_pb2_grpc as pb_grpc
    from serving.router import Router, RouterState
    from serving.server import create_server, stop_gracefully
    from tests.serving.test_fallbacks import _model_pipeline

    store, _ = feast_store
    db = store.config.online_store.path
    base: ModelPipeline = _model_pipeline(snapshot, None, "v1")  # stand-in retriever and scorer (test_fallbacks)
    base.users = FeastUserFeatures(store, snapshot_refs=["user_snapshot:f_user_ctr_30d"], realtime_refs=[],
                                   fallback=SnapshotUserFeatures(pd.DataFrame({"user_id": [1], "f_user_ctr_30d": [0.5]})),
                                   timeout_seconds=0.025)
    metrics = ServingMetrics()
    srv, port = create_server(ServingConfig(max_workers=4), Router(lambda: RouterState(base, None, 0.0, "s")),
                              address="127.0.0.1:0", metrics=metrics)
    served, failed, slowest = [], [], [0.0]
    stop = threading.Event()

    def load() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub, i = pb_grpc.FeedRankerStub(channel), 0
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    resp = stub.RankFeed(pb.RankFeedRequest(request_id=f"r{i}", user_id=str(1 + i % 40), k=5),
                                         timeout=1.0)
                    served.append((time.monotonic(), "online_store" in resp.fallbacks))
                except grpc.RpcError as exc:
                    failed.append(exc.code())
                slowest[0] = max(slowest[0], time.perf_counter() - t)
                i += 1

    def fallbacks() -> float:
        return metrics.registry.get_sample_value("feedrank_fallbacks_total", {"kind": "online_store"}) or 0.0

    def resumed(after: float, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(t > after and not fb for t, fb in served[-20:]):
                return True
            time.sleep(0.05)
        return False

    thread = threading.Thread(target=load)
    thread.start()
    try:
        assert resumed(time.monotonic())
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # readers of a rollback-journal database now wait for it
        time.sleep(3.0)
        lock.execute("ROLLBACK")
        lock.close()
        locked_fallbacks = fallbacks()
        assert locked_fallbacks > 0 and resumed(time.monotonic())

        os.replace(db, db + ".away")  # missing: a fresh connection finds no tables ("no such table")
        base.users._reader.reconnect()  # as after any failed read
        time.sleep(1.0)
        os.replace(db + ".away", db)  # restored: the next reconnect reads it again, no restart
        assert fallbacks() > locked_fallbacks and resumed(time.monotonic())
    finally:
        stop.set()
        thread.join()
        stop_gracefully(srv, 1.0)
    assert failed == [] and len(served) > 50
    assert slowest[0] < 1.0
    warnings = [r.getMessage() for r in caplog.records if r.name == "serving.features"]
    assert len(warnings) <= 6, warnings  # one line per distinct error a minute, not one per failed read
