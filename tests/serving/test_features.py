"""The serving feature assembler gives exactly the matrix of the plain pandas assembly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.derived import DERIVED_FEATURES, REALTIME_INPUTS, derived_features, user_inputs
from serving.features import FeatureAssembler

DAY_US = 86_400 * 1_000_000
TS = 1_767_600_000 * 1_000_000 + 123


def _reference(item_frame: pd.DataFrame, user_columns: list[str], feature_names: list[str], *, ts_us: int,
               device: str | None, user_row: dict[str, Any] | None, realtime_row: dict[str, Any] | None,
               rows: np.ndarray) -> np.ndarray:
    """The straightforward assembly: every snapshot column, user values broadcast, derived features on top."""
    frame = item_frame.iloc[rows].reset_index(drop=True)
    n = len(frame)
    extra: dict[str, Any] = {"ts_us": np.full(n, ts_us, dtype=np.int64), "device": [device] * n}
    for col in list(user_columns) + list(REALTIME_INPUTS):
        row = realtime_row if col in REALTIME_INPUTS else user_row
        value = None if row is None else row.get(col)
        extra[col] = np.full(n, np.nan if value is None else value, dtype=np.float64)
    frame = pd.concat([frame, pd.DataFrame(extra)], axis=1)
    derived = derived_features(frame)
    frame = pd.concat([frame.drop(columns=[c for c in derived.columns if c in frame.columns]), derived], axis=1)
    return frame[feature_names].to_numpy(dtype=np.float64, na_value=np.nan)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(4)
    n = 300
    items = pd.DataFrame({
        "item_id": np.arange(1000, 1000 + n), "item_category_id": rng.integers(0, 6, n),
        "item_seller_id": rng.integers(0, 20, n), "item_created_us": TS - rng.integers(1, 90, n) * DAY_US,
        "f_item_price": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2, 20, n)),
        "f_item_ctr_7d": rng.random(n), "f_seller_rating": pd.array(
            np.where(rng.random(n) < 0.2, None, rng.integers(1, 6, n)), dtype="Int64"),
    })
    user_cols = list(user_inputs(2, 2, 2)) + ["f_user_ctr_30d"]
    user_row = {c: float(rng.integers(0, 20)) for c in user_cols}
    user_row.update({"top_cat_id_1": 3.0, "top_seller_id_1": 7.0, "top_item_id_2": 1005.0, "user_signup_us": TS - 9 * DAY_US,
                     "f_user_click_price_mean_30d": None})
    rt_row = {"rt_day": TS // DAY_US, "rt_views": 4, "rt_clicks": 1, "rt_carts": None, "rt_purchases": 0,
              "rt_last_view_us": TS - 3_600_000_000, "rt_last_event_us": TS - 60_000_000}
    names = ["f_item_ctr_7d", "f_user_ctr_30d", *DERIVED_FEATURES, "f_seller_rating", "f_item_price", "rt_views"]
    return items, user_cols, names, user_row, rt_row


@pytest.mark.parametrize("who", ["known", "cold", "no_realtime"])
@pytest.mark.parametrize("device", ["mobile", "fridge", None])
def test_assembly_matches_the_plain_pandas_assembly(inputs, who, device):
    items, user_cols, names, user_row, rt_row = inputs
    user = None if who == "cold" else user_row
    rt = None if who != "known" else rt_row
    rows = np.random.default_rng(1).permutation(len(items))[:120]
    got = FeatureAssembler(feature_names=names, item_frame=items, user_columns=user_cols).assemble(
        ts_us=TS, device=device, user_row=user, realtime_row=rt, rows=rows)
    want = _reference(items, user_cols, names, ts_us=TS, device=device, user_row=user, realtime_row=rt, rows=rows)
    assert got.shape == (120, len(names))
    np.testing.assert_array_equal(got, want)


def test_a_feature_no_input_provides_is_named(inputs):
    items, user_cols, names, *_ = inputs
    assembler = FeatureAssembler(feature_names=[*names, "f_item_nowhere"], item_frame=items, user_columns=user_cols)
    with pytest.raises(KeyError, match="f_item_nowhere"):
        assembler.assemble(ts_us=TS, device=None, user_row=None, realtime_row=None, rows=np.arange(3))
