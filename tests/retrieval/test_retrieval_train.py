"""Training: seeded and deterministic, logs progress, fails loudly, keeps its window."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from retrieval import ModelFitError, train_two_tower
from retrieval.inputs import DAY_US
from tests.retrieval.helpers import small_config


def test_same_seed_same_model_and_torch_settings_restored(small_log, small_split, small_fit):
    threads = torch.get_num_threads()
    again = train_two_tower(small_log, small_config(), train_end_us=small_split)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    first, second = small_fit.model.arrays(), again.model.arrays()
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert [e.loss for e in small_fit.epochs] == [e.loss for e in again.epochs]
    other = train_two_tower(small_log, small_config(seed=1, max_epochs=1), train_end_us=small_split)
    assert not np.array_equal(other.model.arrays()["item_mlp.0.weight"], first["item_mlp.0.weight"])


def test_fit_reports_window_epochs_and_trained_ids(small_fit, small_split, small_log):
    window = small_fit.window
    assert window.train_end_us == small_split
    assert window.validation_start_us == small_split - DAY_US
    assert 1 <= small_fit.best_epoch <= len(small_fit.epochs) <= 4
    assert all(e.examples_per_second > 0 and np.isfinite(e.loss) for e in small_fit.epochs)
    assert small_fit.validation_recall == max(e.validation_recall for e in small_fit.epochs)
    # Only items with enough examples before the validation window have trained id embeddings.
    ev = small_log.events
    before = ev[(ev["ts_us"] < window.validation_start_us) & ev["type"].isin([0, 2])]
    counts = before["item_id"].value_counts()
    assert set(small_fit.trained_item_ids) == set(counts.index[counts.values >= 2])


def test_progress_is_logged_per_epoch(small_log, small_split, caplog):
    with caplog.at_level(logging.INFO, logger="retrieval.train"):
        train_two_tower(small_log, small_config(max_epochs=2, patience=5), train_end_us=small_split)
    lines = [r.getMessage() for r in caplog.records if "examples/s" in r.getMessage()]
    assert len(lines) == 2 and "loss" in lines[0] and "validation recall@100" in lines[0]


def test_divergence_raises_model_fit_error(small_log, small_split):
    with pytest.raises(ModelFitError, match="loss became"):
        train_two_tower(small_log, small_config(temperature=1e-45, max_epochs=1), train_end_us=small_split)


def test_windows_without_data_are_rejected(small_log):
    lo, hi = small_log.time_range_us
    with pytest.raises(ValueError, match="no training window"):
        train_two_tower(small_log, small_config(), train_end_us=lo + DAY_US // 2)
    with pytest.raises(ValueError, match="validation window"):
        train_two_tower(small_log, small_config(), train_end_us=hi + 10 * DAY_US)
