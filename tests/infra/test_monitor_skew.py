"""Training/serving skew on the bundle the session trained: served rows against Feast's point-in-time path.

Requests go through the trained bundle's serving pipeline (the code path of RankFeed after
request parsing) with user rows read online from Feast, stamped just after the online store's
materialization, when the online rows are exactly what the point-in-time join finds. Every
request's served feature vectors are sampled; ``monitoring.recompute_offline`` rebuilds them
through ``features.store.build_training_set`` and ``monitoring.feature_skew`` compares.
The planted bug is the simulated A/B's: the real-time (user_realtime) row never read at serving.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.derived import DERIVED_FEATURES, REALTIME_INPUTS
from features.store import latest_snapshot_time, open_store
from monitoring import feature_drift, feature_skew, recompute_offline
from serving.exploration import ExplorationConfig
from serving.features import FeastUserFeatures
from serving.impression_log import ServedFeatureLog, read_served_features
from serving.metrics import StageTimer
from serving.model_pipeline import ModelPipeline
from serving.requests import FeedRequest
from serving.rerank import RerankConfig, Reranker

REQUESTS = 200
REALTIME_FEATURES = {f for f in DERIVED_FEATURES if f.endswith("_today") or f.startswith("f_user_hours_since")}


@pytest.fixture(scope="module")
def world(trained):
    config, report, root = trained
    features_dir = root / "data" / "train" / "features"
    store = open_store(features_dir, config.features.feast)
    return config, report, features_dir, store


def _serve(world, out_dir, *, realtime: bool) -> pd.DataFrame:
    """Serve REQUESTS requests (every one sampled) and return the logged served rows."""
    config, report, features_dir, store = world
    log = ServedFeatureLog(out_dir, share=1.0, drain_seconds=0.05).start()

    def source(snapshot):
        return FeastUserFeatures(store, snapshot_refs=[f"user_snapshot:{c}" for c in snapshot.columns],
                                 realtime_refs=[f"user_realtime:{c}" for c in REALTIME_INPUTS] if realtime else [],
                                 fallback=snapshot)

    pipeline = ModelPipeline.from_bundle(report.bundle_dir, version=report.version, reranker=Reranker(RerankConfig()),
                                         exploration=ExplorationConfig(share=0.0), user_source=source,
                                         feature_log=log)
    start_us = int(latest_snapshot_time(features_dir).timestamp() * 1e6) + 1  # the materialization's end
    rng = np.random.default_rng(7)
    users = rng.choice(np.arange(config.experiments.simulator.users), REQUESTS)
    for i, user in enumerate(users):
        ts = start_us + int(i * 0.1e6)  # a request every 100 ms: nothing newer than the online rows exists yet
        request = FeedRequest(request_id=f"skew-{realtime}-{i}", user_id=int(user), k=10, candidate_count=100,
                              exclude_item_ids=np.zeros(0, np.int64), device=("mobile", "desktop", "tablet")[i % 3],
                              country=None, hour=0, day_of_week=0, ts_us=ts)
        pipeline.rank(request, arm="champion", timer=StageTimer(), deadline=None)
    log.close()
    return read_served_features(out_dir).to_pandas()


def test_skew_is_nil_when_serving_reads_what_training_reads_and_flags_missing_realtime_rows(world, tmp_path):
    config, *_, store = world
    served = _serve(world, tmp_path / "ok", realtime=True)
    assert served["request_key"].nunique() == REQUESTS
    offline = recompute_offline(store, served, config.features.etl)
    clean = feature_skew(served, offline)
    assert clean.flagged() == [], clean.to_frame().head(8).to_string()
    assert len(clean.features) >= 20  # every model feature was compared

    planted = _serve(world, tmp_path / "bug", realtime=False)
    offline_bug = recompute_offline(store, planted, config.features.etl)
    skew = feature_skew(planted, offline_bug)
    flagged = set(skew.flagged())
    assert flagged and flagged <= REALTIME_FEATURES, skew.to_frame().head(8).to_string()
    assert {"f_user_hours_since_view", "f_user_hours_since_event"} <= flagged
    row = skew.to_frame().set_index("feature").loc["f_user_hours_since_event"]
    assert row["missing_served"] == 1.0 and row["missing_offline"] < 0.5

    # the same bug is drift of the served window against the clean one (the ranking changes too, so
    # the items served and their features differ as well: drift says what moved, skew says why)
    drift = feature_drift(served, planted, reference_name="serving (realtime read)", current_name="serving (bug)")
    moved = drift.to_frame().set_index("feature")
    assert moved.loc["f_user_hours_since_event", "level"] == "alert"
    assert moved.loc["f_user_hours_since_event", "missing_current"] == 1.0
    assert moved.loc["f_user_tenure_days", "level"] == "ok"  # the same users, the same snapshot rows


def test_freshness_of_models_feature_views_and_stream_in_metrics_and_status(world, tmp_path):
    import datetime as dt

    from features.stream.state import WindowStore
    from features.stream.windows import OBS_COLUMNS
    from serving.client import FeedClient
    from serving.config import ServingConfig
    from serving.freshness import FreshnessProbe
    from serving.metrics import FRESHNESS_METRIC, ServingMetrics
    from serving.router import Router, RouterState
    from serving.server import create_server, stop_gracefully

    config, report, features_dir, store = world
    pipeline = ModelPipeline.from_bundle(report.bundle_dir, version=report.version, reranker=Reranker(RerankConfig()),
                                         exploration=ExplorationConfig(share=0.0))
    router = Router(lambda: RouterState(champion=pipeline, challenger=None, challenger_share=0.0, salt="s"))
    materialized = latest_snapshot_time(features_dir) + dt.timedelta(microseconds=1)
    wm_us = int(materialized.timestamp() * 1e6) + 3_600_000_000  # the stream is an hour ahead of the batch
    with WindowStore(tmp_path / "stream" / "state.sqlite") as state:
        obs = pd.DataFrame([(0, 1, 0, wm_us, 1, 1)], columns=list(OBS_COLUMNS)).astype(np.int64)
        with state.apply(obs):
            pass
    now = materialized.timestamp() + 86_400.0  # a day after the materialization
    probe = FreshnessProbe(router, store=store, stream_state=tmp_path / "stream" / "state.sqlite", clock=lambda: now)
    ages = probe.ages()
    views = {"user_snapshot", "user_realtime", "item_snapshot", "seller_snapshot"}
    assert {f"feature_view:{v}" for v in views} <= set(ages)
    for v in views:
        assert ages[f"feature_view:{v}"] == pytest.approx(86_400.0, abs=1e-3)
    assert ages["stream_watermark"] == pytest.approx(86_400.0 - 3_600.0, abs=1e-3)
    trained_at, data_until = pipeline.trained_at, pipeline.data_until
    assert ages["model_trained:champion"] == pytest.approx(now - trained_at.timestamp())
    assert ages["model_data:champion"] == pytest.approx(now - data_until.timestamp())
    assert not FreshnessProbe(router, stream_state=tmp_path / "none.sqlite").times().keys() - {
        "model_trained:champion", "model_data:champion"}  # absent sources are left out, not invented

    metrics = ServingMetrics()
    server, port = create_server(ServingConfig(), router, address="127.0.0.1:0", metrics=metrics, freshness=probe)
    try:
        with FeedClient(f"127.0.0.1:{port}") as client:
            status = client.status()
        assert dict(status.age_seconds) == pytest.approx(ages)
        scraped = metrics.registry.get_sample_value(FRESHNESS_METRIC, {"source": "feature_view:user_realtime"})
        assert scraped == pytest.approx(86_400.0, abs=1e-3)
    finally:
        stop_gracefully(server, 1.0)
