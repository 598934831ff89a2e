"""Shadow replay of logged requests against a challenger, on the bundle the session trained."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.shadow import shadow_replay
from monitoring.sources import read_log_table
from serving.exploration import ExplorationConfig
from serving.impression_log import ImpressionLog
from serving.metrics import StageTimer
from serving.model_pipeline import ModelPipeline
from serving.pipeline import PopularityPipeline
from serving.requests import FeedRequest
from serving.rerank import RerankConfig, Reranker


def test_a_challenger_identical_to_the_champion_agrees_and_popularity_does_not(trained, tmp_path):
    _, report, _ = trained

    def load(**kw):
        return ModelPipeline.from_bundle(report.bundle_dir, version=report.version, reranker=Reranker(RerankConfig()),
                                         exploration=ExplorationConfig(share=0.0), **kw)

    log = ImpressionLog(tmp_path, drain_seconds=0.05).start()
    champion = load(impression_log=log)
    for i, user in enumerate(np.random.default_rng(3).integers(0, 500, 40)):
        champion.rank(FeedRequest(request_id=f"sh{i}", user_id=int(user), k=10, candidate_count=500,
                                  exclude_item_ids=np.zeros(0, np.int64), device="mobile", country=None, hour=20,
                                  day_of_week=2, ts_us=1_768_000_000_000_000 + i), arm="champion",
                      timer=StageTimer(), deadline=None)
    log.close()
    impressions = read_log_table(tmp_path, "impressions")
    same = shadow_replay(impressions, load(), k=10)
    assert same.summary["requests"] == 40
    assert same.summary["overlap_at_10"] == 1.0 and same.summary["kendall_tau_mean"] == pytest.approx(1.0)
    assert same.summary["top_score_shift_mean"] == pytest.approx(0.0, abs=1e-9)
    assert same.summary["challenger_latency_p50_ms"] > 0
    popular = PopularityPipeline(snapshot=champion.snapshot, reranker=Reranker(RerankConfig()),
                                 exploration=ExplorationConfig(share=0.0), versions=champion.versions)
    other = shadow_replay(impressions, popular, k=10, max_requests=20)
    assert other.summary["requests"] == 20 and other.summary["overlap_at_10"] < 1.0
    with pytest.raises(ValueError, match="missing"):
        shadow_replay(impressions.drop(columns=["score"]), popular)
