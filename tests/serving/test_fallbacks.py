"""Fallbacks over real gRPC on loopback: the online store stopped, a broken model version.

The model pipeline here is :class:`serving.model_pipeline.ModelPipeline` with the real feature
assembler, user-feature source (Feast's interface) and re-ranker; the retriever and the scorer
are small stand-ins (the full trained stack is served in tests/infra/test_train_serve.py). The
stand-in scorer's P(purchase) is the user's ``f_user_ctr_30d`` feature, so a response shows
which row the request was served with: the online store's, or the bundle snapshot's.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import grpc
import numpy as np
import pandas as pd
import pytest

from features.derived import DERIVED_FEATURES, user_inputs
from serving.config import ServingConfig
from serving.exploration import ExplorationConfig
from serving.features import FeastUserFeatures, FeatureAssembler, SnapshotUserFeatures
from serving.metrics import ServingMetrics
from serving.model_pipeline import ModelPipeline
from serving.proto_gen import feedrank_pb2 as pb
from serving.proto_gen import feedrank_pb2_grpc as pb_grpc
from serving.rerank import RerankConfig, Reranker
from serving.router import ModelVersions, Router, RouterState
from serving.server import create_server, stop_gracefully

ONLINE_CTR, SNAPSHOT_CTR = 0.9, 0.1
KNOWN_USER = 12


class OnlineStore:
    """Feast's online-read interface over a dict; ``stop()`` makes every read fail as a down server does."""

    def __init__(self, rows: dict[int, dict[str, float]]) -> None:
        self.rows = rows
        self.running = True
        self.reads = 0

    def stop(self) -> None:
        self.running = False

    def start(self) -> None:
        self.running = True

    def get_online_features(self, *, features: list[str], entity_rows: list[dict[str, int]]):
        self.reads += 1
        if not self.running:
            raise ConnectionError("online store: connection refused")
        row = self.rows.get(entity_rows[0]["user_id"], {})
        names = [f.split(":", 1)[1] for f in features]
        return SimpleNamespace(to_dict=lambda: {n: [row.get(n)] for n in names})


class PopularRetriever:
    """Stand-in retriever: the most popular snapshot items, minus the excluded ones."""

    def __init__(self, snapshot) -> None:
        self.ids = snapshot.item_ids[np.argsort(-snapshot.popularity, kind="stable")]

    def recommend(self, user_ids, context=None, *, k, exclude):
        keep = self.ids[~np.isin(self.ids, exclude[0])]
        return keep[None, :k], np.zeros((1, min(k, len(keep))), dtype=np.float32)


class UserCtrScorer:
    """Stand-in scorer: P(purchase) is the user's f_user_ctr_30d (NaN, i.e. cold start, gives 0)."""

    feature_names = ["f_user_ctr_30d", *DERIVED_FEATURES]

    def score(self, X, *, price, margin=None):
        p = np.nan_to_num(X[:, 0], nan=0.0)
        gmv = p * price
        return SimpleNamespace(score=gmv + 1e-6 * X[:, 8], purchase_probability=p, expected_gmv=gmv)


def _model_pipeline(snapshot, store: OnlineStore, version: str) -> ModelPipeline:
    table = pd.DataFrame({"user_id": [KNOWN_USER], "f_user_ctr_30d": [SNAPSHOT_CTR]})
    users = SnapshotUserFeatures(table.assign(**{c: np.nan for c in user_inputs(2, 2, 2)}))
    items = pd.DataFrame({"item_id": snapshot.item_ids, "item_category_id": snapshot.category_ids,
                          "item_seller_id": snapshot.seller_ids, "item_created_us": np.zeros(len(snapshot), np.int64),
                          "f_item_price": snapshot.price})
    return ModelPipeline(
        retriever=PopularRetriever(snapshot), scorer=UserCtrScorer(),
        users=FeastUserFeatures(store, snapshot_refs=["user_snapshot:f_user_ctr_30d"], realtime_refs=[],
                                fallback=users),
        assembler=FeatureAssembler(feature_names=UserCtrScorer.feature_names, item_frame=items,
                                   user_columns=users.columns),
        snapshot=snapshot, reranker=Reranker(RerankConfig()), exploration=ExplorationConfig(share=0.0),
        versions=ModelVersions(retrieval=version, ranker=version, purchase_model=version))


@pytest.fixture()
def model_server(snapshot, tmp_path):
    """(stub, admin stub, store, metrics, versions) over a server whose loader builds versions[-1]."""
    store = OnlineStore({KNOWN_USER: {"f_user_ctr_30d": ONLINE_CTR}})
    broken = tmp_path / "broken-bundle"
    broken.mkdir()
    (broken / "bundle.json").write_text('{"format_version": 1, "components": {"ranker": "ranker"}}')
    versions = ["v1"]

    def load() -> RouterState:
        version = versions[-1]
        if version.endswith("-broken"):  # the registry hands out a bundle that cannot load
            pipeline = ModelPipeline.from_bundle(broken, version=version, reranker=Reranker(RerankConfig()),
                                                 exploration=ExplorationConfig())
        else:
            pipeline = _model_pipeline(snapshot, store, version)
        return RouterState(champion=pipeline, challenger=None, challenger_share=0.0, salt="s")

    metrics = ServingMetrics()
    srv, port = create_server(ServingConfig(max_workers=4), Router(load), address="127.0.0.1:0", metrics=metrics)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.FeedRankerStub(channel), pb_grpc.FeedRankerAdminStub(channel), store, metrics, versions
    channel.close()
    stop_gracefully(srv, 1.0)


def _rank(stub, user: int, i: int = 0) -> pb.RankFeedResponse:
    return stub.RankFeed(pb.RankFeedRequest(request_id=f"f{user}-{i}", user_id=str(user), k=10, candidate_count=100,
                                            context=pb.Context(device="mobile", hour=9)), timeout=5)


def _fallbacks(metrics: ServingMetrics, kind: str) -> float:
    return metrics.registry.get_sample_value("feedrank_fallbacks_total", {"kind": kind}) or 0.0


def test_online_store_stopped_serves_the_snapshot_row_and_counts_the_fallback(model_server):
    stub, _, store, metrics, _ = model_server
    up = _rank(stub, KNOWN_USER)
    assert len(up.items) == 10 and "online_store" not in up.fallbacks
    assert up.items[0].p_purchase == pytest.approx(ONLINE_CTR)

    store.stop()
    for i in range(3):
        down = _rank(stub, KNOWN_USER, i + 1)
        assert len(down.items) == 10 and "online_store" in down.fallbacks
        assert down.items[0].p_purchase == pytest.approx(SNAPSHOT_CTR)  # the bundle's row, not a cold start
    cold = _rank(stub, 424242)  # unknown to the snapshot too: cold start, still a feed
    assert len(cold.items) == 10 and {"online_store", "cold_start"} <= set(cold.fallbacks)
    assert _fallbacks(metrics, "online_store") == 4 and _fallbacks(metrics, "cold_start") == 1

    store.start()  # after its back-off (at most 2 s) the store is read again, without a restart
    calls, deadline = 5, time.monotonic() + 20.0
    while True:
        again = _rank(stub, KNOWN_USER, 9 + calls)
        calls += 1
        if "online_store" not in again.fallbacks or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "online_store" not in again.fallbacks and again.items[0].p_purchase == pytest.approx(ONLINE_CTR)
    assert metrics.registry.get_sample_value("feedrank_requests_total", {"arm": "champion", "code": "OK"}) == calls


def test_a_broken_model_version_keeps_the_loaded_one_serving_under_load(model_server):
    stub, admin, _, metrics, versions = model_server
    errors, served = [], []
    stop = threading.Event()

    def client(tid: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                served.append(_rank(stub, KNOWN_USER, 1000 * tid + i).model_versions.ranker)
            except grpc.RpcError as exc:
                errors.append(exc)
            i += 1

    threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        versions.append("v2-broken")
        with pytest.raises(grpc.RpcError) as err:
            admin.Reload(pb.ReloadRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors and served and set(served) == {"v1"}
    assert metrics.registry.get_sample_value("feedrank_reloads_total", {"outcome": "failed"}) == 1
    assert admin.Status(pb.StatusRequest(), timeout=5).champion.ranker == "v1"
    versions.append("v3")  # a fixed version loads, and is served
    assert admin.Reload(pb.ReloadRequest(), timeout=10).champion.ranker == "v3"
    assert _rank(stub, KNOWN_USER, 5).model_versions.ranker == "v3"
