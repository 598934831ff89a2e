"""Real data (the Taobao sample in ../shared/data) through the features adapter: retrieval beats popularity."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval import (
    IndexConfig,
    PopularityRetriever,
    RetrievalConfig,
    ServingConfig,
    TrainingConfig,
    TwoTowerConfig,
    TwoTowerRetriever,
    evaluate_retrievers,
    read_event_log,
    time_split_queries,
    train_two_tower,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "taobao" / "UserBehavior_head.csv"
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason="../shared/data/taobao is absent")
SPLIT = 1_512_144_000_000_000  # 2017-12-02T00:00:00+08:00
END = SPLIT + 2 * 86_400_000_000


@pytest.mark.slow
def test_taobao_two_tower_beats_popularity(tmp_path):
    adapters = pytest.importorskip("features.adapters.taobao")
    adapters.adapt_taobao(DATA, tmp_path / "logs")
    log = read_event_log(tmp_path / "logs")
    assert len(log.items) > 50_000
    config = RetrievalConfig(
        model=TwoTowerConfig(history_impressions=True, history_length=50),
        training=TrainingConfig(num_threads=1, positive_types=("click", "add_to_cart", "purchase"),
                                validation_positives="all"),
        serving=ServingConfig(exclude_purchased=False, popularity_weights=(2.0, 3.0, 4.0)),
        index=IndexConfig(exact_threshold=100_000))  # exact search here; the ANN figures are in eval_retrieval.py
    fit = train_two_tower(log, config, train_end_us=SPLIT)
    tt = TwoTowerRetriever.from_fitted(fit, log)
    assert tt.index.kind == "exact"
    pop = PopularityRetriever(catalog=tt.catalog, popularity=tt.popularity, users=tt.state, config=config.serving)
    queries = time_split_queries(log, start_us=SPLIT, end_us=END, event_types=("add_to_cart", "purchase"))
    result = evaluate_retrievers({"two_tower": tt, "popularity": pop}, queries)
    assert len(queries) > 400
    assert result["two_tower"]["recall@500"] > 2 * result["popularity"]["recall@500"], result
