"""Explanations and the served-feature sample over real gRPC, on the bundle the session trained.

The server runs the trained bundle's ``ModelPipeline`` (two-tower + FAISS, compiled ranker and
purchase model, isotonic calibration); explanations come from the same run's LightGBM models.
"""

from __future__ import annotations

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from serving.client import FeedClient, format_feed
from serving.config import ServingConfig
from serving.exploration import ExplorationConfig
from serving.impression_log import ServedFeatureLog, read_served_features
from serving.model_pipeline import ModelPipeline
from serving.rerank import RerankConfig, Reranker
from serving.router import Router, RouterState
from serving.server import create_server, stop_gracefully


@pytest.fixture()
def explained(trained, tmp_path):
    """(client, pipeline, feature log) over a server of the trained bundle that samples every request."""
    _, report, _ = trained
    log = ServedFeatureLog(tmp_path / "serving", share=1.0, drain_seconds=0.05).start()
    pipeline = ModelPipeline.from_bundle(report.bundle_dir, version=report.version,
                                         reranker=Reranker(RerankConfig()), exploration=ExplorationConfig(share=0.0),
                                         feature_log=log)
    router = Router(lambda: RouterState(champion=pipeline, challenger=None, challenger_share=0.0, salt="s"))
    server, port = create_server(ServingConfig(max_workers=4), router, address="127.0.0.1:0")
    client = FeedClient(f"127.0.0.1:{port}")
    yield client, pipeline, log
    client.close()
    stop_gracefully(server, 1.0)
    log.close()


def _identity_error(e) -> float:
    return abs(e.base_value + sum(c.contribution for c in e.top) + e.other - e.raw_output)


def test_explained_items_add_up_to_each_models_raw_output(explained):
    client, pipeline, _ = explained
    names = set(pipeline.explainer.purchase_feature_names)
    for user in (1, 2, 3, 10**9):  # the last is unknown: a cold start is explained too
        resp = client.rank(user, k=15, candidate_count=200, device="mobile", hour=20, explain=True, explain_top=4)
        assert len(resp.items) == 15
        for it in resp.items:
            assert it.HasField("explanation")
            for e in (it.explanation.ranker, it.explanation.purchase_model):
                assert len(e.top) == 4 and {c.feature for c in e.top} <= names
                assert _identity_error(e) < 1e-6
            # the purchase model's raw output is the log-odds of the funnel's last stage, a probability
            # that, times the earlier stages (click), the calibrated p_purchase comes from
            p_stage = 1.0 / (1.0 + np.exp(-it.explanation.purchase_model.raw_output))
            assert 0.0 < p_stage < 1.0 and 0.0 < it.p_purchase < 1.0
    text = format_feed(resp)
    assert "ranker" in text and "base" in text and "other" in text


def test_without_explain_items_carry_none_and_bad_top_is_refused(explained):
    client, *_ = explained
    resp = client.rank(2, k=10, candidate_count=200)
    assert not any(it.HasField("explanation") for it in resp.items)
    default = client.rank(2, k=3, candidate_count=200, explain=True)
    assert all(len(it.explanation.ranker.top) == 5 for it in default.items)
    for kwargs in (dict(explain=True, explain_top=51), dict(explain=False, explain_top=3)):
        with pytest.raises(grpc.RpcError) as err:
            client.rank(2, k=3, **kwargs)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("explain_top:")


def test_sampled_requests_log_the_feature_vectors_they_scored(explained):
    client, pipeline, log = explained
    feeds = {f"s{u}": client.rank(u, k=8, candidate_count=200, request_id=f"s{u}", device="desktop", explain=True)
             for u in (1, 2, 3)}
    log.close()
    table = read_served_features(log.out_dir.parent)
    assert set(pipeline.assembler.feature_names) <= set(table.column_names)
    frame = table.to_pandas()
    for key, resp in feeds.items():
        rows = frame[frame["request_key"] == key].sort_values("position")
        assert rows["item_id"].tolist() == [it.item_id for it in resp.items]
        assert (rows["device"] == "desktop").all()
        # the logged vector is the one explained: each top contribution's value is the logged value
        for (_, row), it in zip(rows.iterrows(), resp.items, strict=True):
            for c in it.explanation.ranker.top:
                assert row[c.feature] == pytest.approx(c.value, nan_ok=True)
    assert pq.read_schema(next(log.out_dir.glob("part-*.parquet"))).field("ts").type.tz == "UTC"


def test_the_sample_share_is_about_what_is_configured(tmp_path):
    log = ServedFeatureLog(tmp_path, share=0.01)
    hits = sum(log.sampled(f"req-{i}") for i in range(20_000))
    assert 140 <= hits <= 260  # binomial(20000, 0.01): mean 200, sd 14
    assert not ServedFeatureLog(tmp_path, share=0.0).sampled("x") and ServedFeatureLog(tmp_path, share=1.0).sampled("x")
    with pytest.raises(ValueError, match="share must be in"):
        ServedFeatureLog(tmp_path, share=1.5)


def test_training_writes_the_slice_report_and_its_scored_data(trained):
    import pandas as pd

    _, _, root = trained
    evaluation = root / "data" / "train" / "evaluation"
    scored = pd.read_parquet(evaluation / "scored.parquet")
    assert {"device", "category_id", "is_new_buyer", "is_new_seller", "price", "score"} <= set(scored.columns)
    text = (evaluation / "slices.md").read_text()
    assert "device" in text and "price_band" in text
    assert (evaluation / "slices.png").read_bytes()[:4] == b"\x89PNG"
