"""Assembling a day's training rows in the Python workers: joins, labels, sampling, files and order."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.assemble import (
    IMPRESSION_COLUMNS,
    KEEP_DRAW,
    AssemblyRules,
    DayTables,
    assemble,
    load_lookups,
    write_day_part,
)
from features.config import EtlConfig
from features.derived import DAY_US, HOUR_US, REALTIME_INPUTS
from features.outputs import (
    ITEM_AUX,
    item_feature_names,
    seller_feature_names,
    training_schema,
    user_aux_names,
    user_feature_names,
)

CFG = EtlConfig()
DAY = "2026-01-07"
T0 = 20_460 * DAY_US + 10 * HOUR_US  # 2026-01-07 10:00 UTC
USER_COLUMNS = tuple(dict.fromkeys(user_feature_names(CFG) + user_aux_names(CFG)))
ITEM_COLUMNS = tuple(dict.fromkeys(item_feature_names(CFG) + ITEM_AUX))


def rules(**overrides) -> AssemblyRules:
    base = AssemblyRules(schema=training_schema(CFG), user_columns=USER_COLUMNS, item_columns=ITEM_COLUMNS,
                         seller_columns=seller_feature_names(CFG), purchase_days=7.0, log_end_us=T0 + 8 * DAY_US,
                         negative_keep_rate=1.0)
    return replace(base, **overrides)


def write(folder: Path, columns: dict) -> None:
    folder.mkdir(parents=True)
    pq.write_table(pa.table(columns), folder / "part-00000.parquet")


@pytest.fixture
def day(tmp_path: Path) -> DayTables:
    """Users 1 (with a snapshot, intraday row and top category 5) and 2 (none); items 10 (category 5) and 11."""
    write(tmp_path / "labels", {"impression_id": [101, 102], "clicked": [True, True], "carted": [False, True],
                                "purchased_24h": [False, False], "purchased_7d": [False, True],
                                "gmv_7d": [0.0, 40.0]})
    rt = {"user_id": [1, 1], "ts_us": [T0 + 1, T0 + 1 + 2_000_000]}  # the rows impressions 101 and 103 see
    rt.update({c: [20_460 if c == "rt_day" else T0 - HOUR_US if c.endswith("_us") else 3] * 2 for c in REALTIME_INPUTS})
    write(tmp_path / "rt", rt)
    users = {"user_id": [1]}
    users.update({c: [np.nan] for c in USER_COLUMNS})
    users.update({"f_user_views_1d": [4.0], "user_signup_us": [float(T0 - 10 * DAY_US)], "top_cat_id_1": [5.0],
                  "top_cat_w_1": [0.6]})
    write(tmp_path / "users", users)
    items = {"item_id": [10, 11]}
    items.update({c: [1.0, 2.0] for c in ITEM_COLUMNS})
    items.update({"item_category_id": [5.0, 6.0], "f_item_price": [20.0, 30.0]})
    write(tmp_path / "items", items)
    sellers = {"seller_id": [7]}
    sellers.update({c: [0.5] for c in seller_feature_names(CFG)})
    write(tmp_path / "sellers", sellers)
    return DayTables(date=DAY, labels=str(tmp_path / "labels"), realtime=str(tmp_path / "rt"),
                     users=str(tmp_path / "users"), items=str(tmp_path / "items"), sellers=str(tmp_path / "sellers"),
                     target=str(tmp_path / "out" / f"date={DAY}"))


def impressions(n: int = 4, start: int = 101) -> pa.Table:
    ids = np.arange(start, start + n)
    return pa.table({
        "impression_id": ids, "request_id": ids // 2, "ts_us": T0 + 1 + np.arange(n) * 1_000_000,
        "user_id": np.where(np.arange(n) % 2 == 0, 1, 2), "item_id": np.where(np.arange(n) < 2, 10, 11),
        "seller_id": np.full(n, 7), "category_id": np.where(np.arange(n) < 2, 5, 6),
        "position": pa.array(np.arange(n), pa.int32()), "randomized": np.zeros(n, bool),
        "propensity": np.full(n, 0.5), "policy": ["ranker"] * n, "device": ["mobile"] * n,
        "item_price": np.full(n, 20.0), "margin_rate": np.full(n, 0.1), "_keep_u": np.linspace(0.05, 0.95, n)})


def test_rows_join_their_labels_and_lookups_like_left_joins(day):
    out = assemble(impressions(), load_lookups(day, rules()), rules()).to_pydict()
    assert out["impression_id"] == [101, 102, 103, 104]
    assert out["label"] == [1, 3, 0, 0]  # click; purchase over cart and click; no events
    assert out["gmv_7d"] == [0.0, 40.0, 0.0, 0.0] and out["clicked"] == [True, True, False, False]
    assert out["f_user_views_1d"] == [4.0, None, 4.0, None]  # user 2 has no snapshot row: nulls
    assert out["f_item_price"] == [20.0, 20.0, 30.0, 30.0] and out["f_seller_n_items"] == [0.5] * 4
    assert out["f_ui_cat_affinity"] == [0.6, 0.0, 0.0, 0.0]  # user 1's top category is item 10's
    assert out["f_user_views_today"] == [3.0, 0.0, 3.0, 0.0]  # user 1's intraday row, seen at ts
    assert out["f_user_tenure_days"][1] is None  # no signup known
    assert out["label_complete"] == [True] * 4 and out["sample_weight"] == [1.0] * 4


def test_negatives_are_downsampled_by_the_draw_and_reweighted(day):
    sampled = rules(negative_keep_rate=0.5)
    out = assemble(impressions(6), load_lookups(day, sampled), sampled).to_pydict()
    draws = dict(zip(impressions(6).column("impression_id").to_pylist(),
                     impressions(6).column("_keep_u").to_pylist(), strict=True))
    kept_negatives = [i for i, label in zip(out["impression_id"], out["label"], strict=True) if label == 0]
    assert {101, 102} <= set(out["impression_id"])  # positives always stay
    assert kept_negatives == [i for i in range(103, 107) if draws[i] < 0.5]
    weights = dict(zip(out["impression_id"], out["sample_weight"], strict=True))
    assert weights[101] == 1.0 and all(weights[i] == 2.0 for i in kept_negatives)


def test_a_partition_becomes_one_file_and_its_statistics(day):
    batches = impressions(6).to_batches(max_chunksize=4)
    stats = next(write_day_part(day, rules(), iter(batches))).to_pylist()[0]
    files = sorted(Path(day.target).iterdir())
    assert [f.name for f in files] == ["part-00000.parquet"]  # no temporary file left
    first_bytes = files[0].read_bytes()
    written = pq.read_table(files[0])
    assert written.schema.equals(training_schema(CFG))
    assert stats["rows"] == written.num_rows == 6 and stats["positives"] == 2
    assert json.loads(stats["nulls"]) == {c: written.column(c).null_count for c in written.column_names}
    assert written.column("impression_id").to_pylist() == list(range(101, 107))
    # A retried task writes the same file again, over the first.
    next(write_day_part(day, rules(), iter(impressions(6).to_batches(max_chunksize=4))))
    assert sorted(p.name for p in Path(day.target).iterdir()) == ["part-00000.parquet"]
    assert files[0].read_bytes() == first_bytes


def test_rows_out_of_order_fail_without_a_file(day):
    shuffled = impressions(4).take([0, 2, 1, 3])
    with pytest.raises(RuntimeError, match=f"training rows of {DAY} arrived out of \\(ts, impression_id\\) order"):
        next(write_day_part(day, rules(), iter(shuffled.to_batches())))
    later_first = [impressions(2, start=103).to_batches()[0], impressions(2, start=101).to_batches()[0]]
    with pytest.raises(RuntimeError, match="out of"):
        next(write_day_part(day, rules(), iter(later_first)))
    assert not list(Path(day.target).glob("part-*"))


def test_missing_lookup_folders_are_empty_tables(day, tmp_path):
    bare = replace(day, users=str(tmp_path / "none"), realtime=str(tmp_path / "none"), labels=str(tmp_path / "none"))
    out = assemble(impressions(), load_lookups(bare, rules()), rules()).to_pydict()
    assert out["label"] == [0] * 4 and out["f_user_views_1d"] == [None] * 4
    assert out["f_user_views_today"] == [0.0] * 4 and out["f_item_price"] == [20.0, 20.0, 30.0, 30.0]


def test_the_columns_crossing_from_spark_are_what_assembly_reads():
    assert KEEP_DRAW in IMPRESSION_COLUMNS and len(set(IMPRESSION_COLUMNS)) == len(IMPRESSION_COLUMNS)
    assert set(impressions().column_names) == set(IMPRESSION_COLUMNS)
