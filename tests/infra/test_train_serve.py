"""End to end on a small simulated marketplace: train -> register -> serve over gRPC, with fallbacks.

One training run (real Spark ETL, Feast, two-tower + FAISS, LightGBM + Treelite, MLflow) is
shared by the session (the ``trained`` fixture of ``conftest.py``; the rollout's end-to-end tests
use it too); it is kept small so it takes a few minutes on 2 cores.
"""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest

from infra.registry import FeedRegistry
from infra.serve import build_router
from infra.train import STEPS, run_training
from serving.bundle import read_bundle_manifest
from serving.client import FeedClient
from serving.features import FeastUserFeatures
from serving.server import create_server, stop_gracefully


@pytest.fixture()
def served(trained):
    config, report, _ = trained
    router = build_router(config)
    server, port = create_server(config.serving, router, address="127.0.0.1:0")
    client = FeedClient(f"127.0.0.1:{port}")
    yield client, router
    client.close()
    stop_gracefully(server, 1.0)


def test_training_registers_a_challenger_bundle(trained):
    config, report, root = trained
    assert list(report.steps) == list(STEPS)
    registry = FeedRegistry(config.infra.registry, data_dir=config.infra.data_dir)
    assert registry.alias_version("challenger") == report.version
    manifest = read_bundle_manifest(report.bundle_dir)
    assert {"retrieval", "ranker", "purchase_model", "item_snapshot", "user_snapshot"} <= set(manifest.components)
    assert len(manifest.feature_list) > 20
    assert (root / "data" / "train" / "evaluation" / "report.md").exists()
    assert report.metrics["gate_difference_ci_high"] >= 0.0
    # the default 7-day purchase label has no complete rows on a 4-day log: the job says so and uses 24 h
    assert config.ranking.purchase_label == "purchased_7d"
    assert report.steps["ranking"]["purchase_label"] == "purchased_24h"
    assert "complete purchased_7d label" in report.steps["ranking"]["purchase_label_fallback"]


def test_a_rerun_resumes_after_the_last_completed_step(trained, tmp_path):
    config, report, root = trained
    run = tmp_path / "train"
    shutil.copytree(root / "data" / "train", run)
    import json

    state = json.loads((run / "train_state.json").read_text())
    for step in ("snapshots", "evaluate", "register"):
        del state["completed"][step]
    (run / "train_state.json").write_text(json.dumps(state))
    ran: list[str] = []
    again = run_training(config, logs_dir=root / "data" / "logs", run_dir=run, register=False, on_step=ran.append)
    assert ran == ["snapshots", "evaluate"]
    assert again.metrics["gate_model_gmv_per_request"] == pytest.approx(report.metrics["gate_model_gmv_per_request"])


def test_served_feeds_come_from_the_registered_models(served, trained):
    client, _ = served
    _, report, _ = trained
    for user in (1, 2, 3):
        resp = client.rank(user, k=20, candidate_count=200, device="mobile", hour=20)
        ids = [it.item_id for it in resp.items]
        assert len(ids) == 20 and len(set(ids)) == 20
        assert resp.model_versions.ranker == report.version
        assert "popularity" not in resp.fallbacks
        assert all(0.0 <= it.p_purchase <= 1.0 for it in resp.items)
        assert any(it.expected_gmv > 0 for it in resp.items)
    cold = client.rank(10**9, k=10)
    assert len(cold.items) == 10 and "cold_start" in cold.fallbacks


def test_candidates_fetched_in_one_batch_give_the_feeds_of_calls_alone(served):
    from serving.config import LimitsConfig
    from serving.metrics import StageTimer
    from serving.proto_gen import feedrank_pb2 as pb
    from serving.requests import parse_request

    _, router = served
    pipeline = router.state.champion
    requests = [parse_request(pb.RankFeedRequest(
        request_id=f"b{i}", user_id=str(user), k=15, candidate_count=(200, 200, 120)[i % 3],
        exclude_item_ids=[] if i % 2 else [1, 2, 3], context=pb.Context(device=("mobile", "desktop", "")[i % 3],
                                                                      hour=(i * 5) % 24)), LimitsConfig())
        for i, user in enumerate([1, 2, 3, 4, 5, 10**9, 7])]  # one unknown user: cold start in the batch
    batched = pipeline.retrieve_many(requests)
    assert all(rows is not None for rows in batched)
    for request, rows in zip(requests, batched, strict=True):
        alone = pipeline.rank(request, arm="champion", timer=StageTimer(), deadline=None)
        timer = StageTimer()
        got = pipeline.rank(request, arm="champion", timer=timer, deadline=None, candidates=rows)
        assert "retrieve" not in timer.stages_ms
        assert [(it.item_id, it.reasons) for it in got.items] == [(it.item_id, it.reasons) for it in alone.items]


def test_online_store_down_takes_the_snapshot_fallback(served):
    client, router = served

    class DownStore:  # fault injection: every online read fails
        def get_online_features(self, **_):
            raise ConnectionError("online store unreachable")

    pipeline = router.state.champion
    snapshot_source = pipeline.users
    pipeline.users = FeastUserFeatures(DownStore(), snapshot_refs=[], realtime_refs=[], fallback=snapshot_source)
    try:
        resp = client.rank(1, k=10)
        assert len(resp.items) == 10 and "online_store" in resp.fallbacks
    finally:
        pipeline.users = snapshot_source


def test_a_broken_model_version_falls_back_to_the_previous_champion(trained, tmp_path):
    config, report, _ = trained
    registry = FeedRegistry(config.infra.registry, data_dir=config.infra.data_dir)
    registry.promote(report.version, reason="test: first champion")
    broken = tmp_path / "broken"
    shutil.copytree(report.bundle_dir, broken)
    shutil.rmtree(broken / "retrieval")
    (broken / "retrieval").mkdir()  # the folder exists, its model files do not
    bad = registry.register_bundle(broken, description="test: a bundle that cannot load", check=False)  # forced in
    registry.promote(str(bad.version), reason="test: promote the broken bundle")
    router = build_router(config)
    assert router.state.champion.versions.ranker == report.version  # previous champion serves
    server, port = create_server(config.serving, router, address="127.0.0.1:0")
    try:
        with FeedClient(f"127.0.0.1:{port}") as client:
            assert len(client.rank(5, k=10).items) == 10
            with pytest.raises(grpc.RpcError) as err:
                client.rank(5, k=0)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stop_gracefully(server, 1.0)
        registry.rollback(reason="test: restore", to_version=report.version)
    assert np.isfinite(report.metrics["gate_model_gmv_per_request"])
