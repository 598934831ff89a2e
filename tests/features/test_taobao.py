"""The Taobao adapter on the real sample, and the ETL on its output (skipped without ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from features.adapters import adapt_taobao
from features.adapters.taobao import IMPUTED_PRICE, POLICY, TaobaoConfig
from features.config import ConfigValueError, FeaturesConfig
from features.contract import TABLE_ORDER
from features.etl import FeatureEtl
from features.validation import validate_logs

SOURCE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "taobao" / "UserBehavior_head.csv"
pytestmark = pytest.mark.skipif(not SOURCE.is_file(), reason=f"{SOURCE} not available")


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    out = tmp_path_factory.mktemp("taobao") / "logs"
    return adapt_taobao(SOURCE, out), out


def test_broken_and_out_of_period_rows_are_quarantined_with_reasons(adapted):
    report, out = adapted
    q = pq.read_table(out / "_quarantine" / "taobao.parquet").to_pandas()
    assert report.quarantined == len(q) == 36
    out_of_period = q[q["reason"].str.startswith("unix_ts: outside the period")]
    assert len(out_of_period) == 35
    broken = q[q["reason"] == "row: expected 5 fields, got 4"]
    assert len(broken) == 1 and broken["line"].iloc[0] == report.lines  # the cut-off last line
    assert report.lines == sum(report.behaviours.values()) + report.quarantined  # nothing dropped


def test_mapping_into_the_contract(adapted):
    report, out = adapted
    tables = {t: pq.read_table(out / t) for t in TABLE_ORDER}
    assert all(len(r.quarantined) == 0 for r in validate_logs(tables).values())
    imps, events, items = (tables[t].to_pandas() for t in ("impressions", "events", "items"))
    assert len(imps) == report.behaviours["pv"]
    assert imps["position"].isna().all() and imps["propensity"].isna().all() and imps["device"].isna().all()
    assert (imps["policy"] == POLICY).all() and not imps["randomized"].any()
    assert (items["price"] == IMPUTED_PRICE).all() and items["list_price"].isna().all()
    counts = events["type"].value_counts().to_dict()
    assert counts == {"add_to_cart": report.behaviours["cart"], "click": report.behaviours["fav"],
                      "purchase": report.behaviours["buy"]}
    linked = events.dropna(subset=["impression_id"]).merge(
        imps[["impression_id", "ts", "user_id", "item_id"]], on="impression_id", suffixes=("", "_imp"))
    assert len(linked) > 0 and (linked["ts_imp"] <= linked["ts"]).all()
    assert (linked["user_id"] == linked["user_id_imp"]).all() and (linked["item_id"] == linked["item_id_imp"]).all()
    meta = json.loads((out / "_source.json").read_text())
    assert "items.price" in meta["report"]["imputations"] and "impressions.position" in meta["unlogged_columns"]


def test_period_config_is_checked():
    with pytest.raises(ConfigValueError, match="period_end must be after period_start"):
        TaobaoConfig(period_start="2017-12-04", period_end="2017-11-25")


def test_the_etl_runs_on_taobao(spark, tmp_path):
    # The last three of the nine days keep the ETL short (its cost grows with the days); the
    # mapping tests above cover the whole sample.
    logs = tmp_path / "logs"
    report = adapt_taobao(SOURCE, logs, config=TaobaoConfig(period_start="2017-12-01T00:00:00+08:00"))
    etl = FeatureEtl(FeaturesConfig()).run(spark, str(logs), str(tmp_path / "features"))
    assert len(etl.dates) == 4  # three days in UTC+8 touch four UTC dates
    assert etl.status == "ok" and etl.tables["impressions"]["quarantined"] == 0
    training = ds.dataset(tmp_path / "features" / "training", format="parquet", partitioning="hive").to_table()
    frame = training.to_pandas()
    assert len(frame) == report.behaviours["pv"]
    assert set(frame["label"].unique()) >= {0, 1, 2, 3}
    assert frame["position"].isna().all()
    # repeat interactions reach the user x item features (the strongest signal on this sample)
    assert (frame["f_ui_item_interactions"] > 0).mean() > 0.01
    skipped = {r["column"] for r in etl.checks["results"] if r["check"] == "null_rate"}
    assert "f_ctx_device" not in skipped and "f_item_stock_qty" not in skipped  # unlogged: exempt, not failed
    assert pd.Series(etl.dates).is_monotonic_increasing
