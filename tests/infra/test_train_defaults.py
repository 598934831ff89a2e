"""Defaults that work together: the purchase label a short log can train, the torch thread default."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from infra.config import load_config
from infra.train import effective_purchase_label
from ranking.config import RankingConfig


def _frame(complete_share: float, requests: int = 200) -> pd.DataFrame:
    rid = np.repeat(np.arange(requests), 3)
    return pd.DataFrame({"request_id": rid, "label_complete": rid < complete_share * requests})


@pytest.mark.parametrize(("share", "config", "expected"), [
    (0.0, RankingConfig(), "purchased_24h"),  # a 7-day log: no 7-day window has closed
    (0.1, RankingConfig(), "purchased_24h"),
    (0.5, RankingConfig(), "purchased_7d"),  # a 14-day log
    (0.0, RankingConfig(purchase_label="purchased_24h"), "purchased_24h"),
    (0.0, RankingConfig(complete_labels_only=False), "purchased_7d"),
])
def test_the_purchase_label_falls_back_to_24h_when_few_7d_labels_are_complete(share, config, expected):
    label, reason = effective_purchase_label(_frame(share), config)
    assert label == expected
    assert (reason is not None) == (label != config.purchase_label)
    if reason:
        assert f"only {int(share * 200)} of 200 requests have a complete purchased_7d label" in reason


def test_training_threads_default_to_one():
    # benchmarks/bench_retrieval.py --threads: on a busy 2-core machine two torch threads ran far slower
    config = load_config(env={})
    assert config.retrieval.training.num_threads == 1 and config.ranking.num_threads == 1
