"""Request-time features: known answers for each formula, and bad input rejected."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.derived import (
    DAY_US,
    DERIVED_FEATURES,
    HOUR_US,
    OTHER_DEVICE,
    derived_features,
    user_inputs,
)

# 2026-01-07 (a Wednesday) 10:30 UTC
TS = int(pd.Timestamp("2026-01-07 10:30", tz="UTC").value // 1000)
TODAY = TS // DAY_US


def frame(**overrides) -> pd.DataFrame:
    row = {c: np.nan for c in user_inputs(2, 2, 2)}
    row.update({
        "ts_us": TS, "device": "desktop",
        "user_signup_us": TS - 3 * DAY_US, "f_user_purchase_price_mean_30d": 20.0, "f_user_click_price_mean_30d": np.nan,
        "top_cat_id_1": 7, "top_cat_w_1": 0.75, "top_cat_id_2": 3, "top_cat_w_2": 0.25,
        "top_seller_id_1": 40, "top_seller_n_1": 5.0, "top_item_id_1": 900, "top_item_n_1": 2.0,
        "rt_day": TODAY, "rt_views": 12, "rt_clicks": 2, "rt_carts": 1, "rt_purchases": 0,
        "rt_last_view_us": TS - 2 * HOUR_US, "rt_last_event_us": TS - HOUR_US // 2,
        "item_id": 900, "item_category_id": 3, "item_seller_id": 40, "item_created_us": TS - DAY_US // 2,
        "f_item_price": 30.0,
    })
    row.update(overrides)
    return pd.DataFrame([row])


def test_known_answers():
    out = derived_features(frame()).iloc[0]
    assert list(out.index) == list(DERIVED_FEATURES)
    assert out["f_user_tenure_days"] == pytest.approx(3.0)
    assert out["f_item_age_days"] == pytest.approx(0.5)
    assert (out["f_user_views_today"], out["f_user_clicks_today"], out["f_user_carts_today"]) == (12, 2, 1)
    assert out["f_user_hours_since_view"] == pytest.approx(2.0)
    assert out["f_user_hours_since_event"] == pytest.approx(0.5)
    assert out["f_ui_cat_affinity"] == pytest.approx(0.25)  # the item's category is the user's second
    assert out["f_ui_cat_is_top"] == 0.0
    assert out["f_ui_seller_interactions"] == 5.0
    assert out["f_ui_item_interactions"] == 2.0
    assert out["f_ui_price_to_purchase_mean"] == pytest.approx(1.5)
    assert np.isnan(out["f_ui_price_to_click_mean"])  # no clicked prices: undefined, not 0
    assert (out["f_ctx_hour"], out["f_ctx_dow"], out["f_ctx_weekend"], out["f_ctx_device"]) == (10, 2, 0, 1)


def test_yesterdays_intraday_row_counts_zero_today():
    out = derived_features(frame(rt_day=TODAY - 1)).iloc[0]
    assert out["f_user_views_today"] == 0 and out["f_user_clicks_today"] == 0
    assert out["f_user_hours_since_view"] == pytest.approx(2.0)  # recency does not reset at midnight


def test_missing_rows_give_zero_counts_and_null_recency():
    empty = {c: np.nan for c in ("rt_day", "rt_views", "rt_clicks", "rt_carts", "rt_purchases", "rt_last_view_us",
                                 "rt_last_event_us", "top_cat_id_1", "top_cat_w_1", "top_cat_id_2", "top_cat_w_2",
                                 "top_seller_id_1", "top_seller_n_1", "top_item_id_1", "top_item_n_1")}
    out = derived_features(frame(**empty)).iloc[0]
    assert out["f_user_views_today"] == 0 and np.isnan(out["f_user_hours_since_event"])
    assert out["f_ui_cat_affinity"] == 0 and out["f_ui_item_interactions"] == 0


def test_devices_and_top_category():
    batch = pd.concat([frame(device="tablet", item_category_id=7), frame(device="smart-tv"), frame(device=None)],
                      ignore_index=True)
    out = derived_features(batch)
    assert out["f_ctx_device"].iloc[0] == 2 and out["f_ctx_device"].iloc[1] == OTHER_DEVICE
    assert np.isnan(out["f_ctx_device"].iloc[2])
    assert out["f_ui_cat_is_top"].iloc[0] == 1 and out["f_ui_cat_affinity"].iloc[0] == pytest.approx(0.75)


def test_nullable_integer_columns_as_spark_delivers_them():
    batch = frame()
    for c in ("top_cat_id_1", "top_cat_id_2", "item_category_id", "rt_views"):
        batch[c] = pd.array(batch[c].astype("int64"), dtype="Int64")
    batch.loc[0, "top_cat_id_2"] = pd.NA
    out = derived_features(batch).iloc[0]
    assert out["f_ui_cat_affinity"] == 0.0 and out["f_user_views_today"] == 12


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"ts_us": None}, ValueError, "ts_us must not be null"),
    ({"drop": "item_category_id"}, KeyError, "item_category_id"),
    ({"rename": ("top_cat_id_2", "top_cat_id_3")}, ValueError, "top_cat_id_1..top_cat_id_K"),
])
def test_invalid_input(change, error, match):
    batch = frame()
    if "drop" in change:
        batch = batch.drop(columns=[change["drop"]])
    elif "rename" in change:
        batch = batch.rename(columns=dict([change["rename"]]))
    else:
        batch = batch.astype({"ts_us": object})
        batch.loc[0, "ts_us"] = None
    with pytest.raises(error, match=match):
        derived_features(batch)
