"""Metrics cut by slices with bootstrap intervals (experiments.slices, ``feedrank evaluate --slices``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments.slices import SliceConfig, slice_metrics, write_slice_report


def _scored(n_requests: int = 400, slots: int = 10, seed: int = 0) -> pd.DataFrame:
    """Mobile requests are ranked by a model that knows the labels; desktop ones by noise."""
    rng = np.random.default_rng(seed)
    n = n_requests * slots
    request = np.repeat(np.arange(n_requests), slots)
    device = np.where(request % 2 == 0, "mobile", "desktop")
    label = (rng.random(n) < 0.15).astype(float) * rng.integers(1, 4, n)
    score = np.where(device == "mobile", label + rng.normal(0, 0.1, n), rng.normal(0, 1, n))
    purchased = (label == 3).astype(int)
    return pd.DataFrame({
        "request_id": request, "item_id": rng.integers(0, 500, n), "position": np.tile(np.arange(slots), n_requests),
        "label": label, "score": score, "p_purchase": np.clip(purchased * 0.5 + 0.02, 0, 1), "purchased": purchased,
        "price": rng.lognormal(3, 0.5, n), "propensity": np.tile(1 / np.arange(1, slots + 1), n_requests),
        "is_new_seller": rng.random(n) < 0.2, "device": device, "category_id": rng.integers(0, 5, n),
        "is_new_buyer": np.repeat(rng.random(n_requests) < 0.3, slots)})


def test_slices_find_where_the_model_beats_the_logged_order():
    table = slice_metrics(_scored(), config=SliceConfig(k=5, n_boot=50))
    by = table.set_index(["slice", "value"])
    mobile, desktop = by.loc[("device", "mobile")], by.loc[("device", "desktop")]
    assert mobile["ndcg_difference_low"] > 0  # a model that knows the labels beats the logged order there
    assert desktop["ndcg_difference_low"] < 0 < desktop["ndcg_difference_high"] or desktop["ndcg_difference"] < 0
    assert mobile["requests"] == 200 and mobile["level"] == "request"
    assert {"device", "is_new_buyer", "is_new_seller", "category_id", "price_band"} == set(table["slice"])
    assert by.loc[("is_new_seller", "new seller items"), "level"] == "item"
    bands = table[table["slice"] == "price_band"]
    assert len(bands) == 4 and bands["impressions"].sum() == 4000
    for metric in ("ndcg_model", "purchase_rate", "predicted_over_observed"):
        assert (table[f"{metric}_low"] <= table[metric] + 1e-12).all()
        assert (table[metric] <= table[f"{metric}_high"] + 1e-12).all()


def test_the_slice_report_renders(tmp_path):
    table = slice_metrics(_scored(200), slices=["device", "price_band"], config=SliceConfig(n_boot=20))
    page = write_slice_report(table, tmp_path)
    assert "device" in page.read_text() and (tmp_path / "slices.png").read_bytes()[:4] == b"\x89PNG"
    assert len(pd.read_json(tmp_path / "slices.json")) == len(table)


def test_bad_slices_and_config():
    with pytest.raises(KeyError, match="needs a column 'country'"):
        slice_metrics(_scored(50), slices=["country"])
    with pytest.raises(ValueError, match="n_boot must be"):
        SliceConfig(n_boot=1)
    few = slice_metrics(_scored(50), slices=["device"], config=SliceConfig(min_requests=100, n_boot=10))
    assert few.empty
