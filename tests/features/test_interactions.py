"""The generic interaction-log adapter on small generated files: contract tables, fills, quarantine."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.adapters import InteractionsConfig, adapt_interactions
from features.adapters.interactions import parse_event_map
from features.config import ConfigValueError
from features.contract import TABLE_ORDER
from features.validation import validate_logs
from infra.cli import main

CSV = """uid,sku,when,what,cost,qty,cat,shop
1,10,1700000000,pv,,,5,7
1,10,1700000005,fav,,,5,7
1,10,1700000009,buy,2.5,2,5,7
2,10,1700000100,pv,,,,
2,11,1700000101,buy,,,6,8
2,11,1700000102
x,11,1700000103,pv,,,6,8
2,12,1700000104,share,,,6,8
3,12,1700000105,buy,-1,,6,8
3,12,yesterday,pv,,,6,8
3,13,1700000107,cart,4.0,,6,8
"""
MAPPING = "pv=view,fav=click,cart=add_to_cart,buy=purchase"


def _tables(out) -> dict[str, pd.DataFrame]:
    return {t: pq.read_table(out / t).to_pandas() for t in TABLE_ORDER}


@pytest.fixture()
def adapted(tmp_path):
    source = tmp_path / "log.csv"
    source.write_text(CSV)
    config = InteractionsConfig(user="uid", item="sku", timestamp="when", event="what",
                                event_map=parse_event_map(MAPPING), price="cost", quantity="qty", category="cat",
                                seller="shop")
    return adapt_interactions(source, tmp_path / "logs", config), tmp_path / "logs"


def test_rows_that_do_not_fit_are_quarantined_with_record_and_reason(adapted):
    report, out = adapted
    q = pq.read_table(out / "_quarantine" / "interactions.parquet").to_pandas()
    reasons = dict(zip(q["line"], q["reason"], strict=True))
    assert reasons == {7: "row: expected 8 fields, got 3", 8: "uid: not an integer",
                       9: "what: must be one of ['pv', 'fav', 'cart', 'buy']", 10: "cost: must be > 0",
                       11: "when: not a number"}
    assert q.loc[q["line"] == 8, "raw_line"].item() == "x,11,1700000103,pv,,,6,8"
    assert report.lines == 12 and report.quarantined == 5
    assert report.lines - 1 == sum(report.behaviours.values()) + report.quarantined  # header + nothing dropped


def test_the_tables_satisfy_the_contract_with_documented_fills(adapted):
    report, out = adapted
    tables = _tables(out)
    assert all(len(r.quarantined) == 0 for r in validate_logs(tables).values())
    imps, events, items = tables["impressions"], tables["events"], tables["items"].set_index("item_id")
    assert sorted(imps["impression_id"]) == [2, 5] and imps["position"].isna().all()
    assert events.set_index("event_id")["type"].to_dict() == {3: "click", 4: "purchase", 6: "purchase",
                                                             12: "add_to_cart"}
    e = events.set_index("event_id")
    assert e.loc[3, "impression_id"] == 2 and e.loc[4, "impression_id"] == 2 and pd.isna(e.loc[6, "impression_id"])
    assert e.loc[4, "quantity"] == 2 and e.loc[4, "price_paid"] == 2.5
    # item 11 never had a price: the placeholder, paid by its purchase; item 10 keeps its latest price
    assert items.loc[11, "price"] == 1.0 and e.loc[6, "price_paid"] == 1.0 and items.loc[10, "price"] == 2.5
    assert items.loc[10, "category_id"] == 5 and items.loc[10, "seller_id"] == 7  # row 5's empty cat: filled
    assert set(tables["sellers"]["seller_id"]) == {7, 8}
    assert (tables["users"]["country"] == "unknown").all()
    meta = json.loads((out / "_source.json").read_text())
    assert meta["time"] == "timestamp" and "items.price" in meta["report"]["imputations"]
    assert report.tables == {t: len(tables[t]) for t in TABLE_ORDER}


def test_an_order_column_gives_synthetic_timestamps_that_keep_the_order(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user": rng.integers(0, 20, 200), "item": rng.integers(0, 50, 200),
                          "step": rng.permutation(200)})
    frame.to_parquet(tmp_path / "log.parquet")
    config = InteractionsConfig(user="user", item="item", timestamp=None, order="step")
    report = adapt_interactions(tmp_path / "log.parquet", tmp_path / "logs", config)
    events = _tables(tmp_path / "logs")["events"]
    assert report.quarantined == 0 and len(events) == 200 and (events["type"] == "click").all()
    by_step = frame.assign(event_id=np.arange(1, 201)).set_index("event_id")["step"]
    ts = events.set_index("event_id")["ts"]
    assert (ts.sort_values().index == by_step.sort_values().index).all()
    assert ts.max() - ts.min() < pd.Timedelta(seconds=1)
    assert json.loads((tmp_path / "logs" / "_source.json").read_text())["time"] == "order"


def test_string_ids_are_mapped_when_asked(tmp_path):
    (tmp_path / "log.csv").write_text("u,i,t\nann,apple,2024-01-01T10:00:00Z\nbob,apple,2024-01-01T11:00:00\n"
                                      "ann,pear,2024-01-02T10:00:00+01:00\n")
    config = InteractionsConfig(user="u", item="i", timestamp="t", timestamp_unit="iso", map_ids=True)
    report = adapt_interactions(tmp_path / "log.csv", tmp_path / "logs", config)
    assert report.quarantined == 0
    users = pq.read_table(tmp_path / "logs" / "_id_maps" / "u.parquet").to_pandas()
    assert users.set_index("source")["id"].to_dict() == {"ann": 0, "bob": 1}
    events = _tables(tmp_path / "logs")["events"].sort_values("event_id")
    assert events["ts"].dt.hour.tolist() == [10, 11, 9]  # naive = UTC; +01:00 converted
    unmapped = InteractionsConfig(user="u", item="i", timestamp="t", timestamp_unit="iso")
    report = adapt_interactions(tmp_path / "log.csv", tmp_path / "logs2", unmapped)
    assert report.quarantined == 3 and "u: not an integer" in next(iter(report.reasons))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"timestamp": None}, "exactly one of a timestamp column and an order column"),
    ({"order": "o"}, "exactly one of a timestamp column and an order column"),
    ({"event": "e", "event_map": (("a", "like"),)}, "event_map must be targets in"),
    ({"event_map": (("a", "click"),)}, "event_map must be an event column to map"),
    ({"timestamp_unit": "days"}, "timestamp_unit must be one of"),
    ({"imputed_price": 0.0}, "imputed_price must be > 0"),
    ({"columns": ("user_id", "x")}, "columns must be to name every mapped column"),
])
def test_invalid_configurations_name_the_field(kwargs, match):
    with pytest.raises(ConfigValueError, match=match):
        InteractionsConfig(**kwargs)


def test_missing_columns_and_bad_mappings_are_clear_errors(tmp_path):
    (tmp_path / "log.csv").write_text("user_id,item_id,ts\n1,2,3\n")
    with pytest.raises(ValueError, match=r"columns \['timestamp'\] not found"):
        adapt_interactions(tmp_path / "log.csv", tmp_path / "logs", InteractionsConfig())
    with pytest.raises(ValueError, match="each entry must be RAW=TYPE"):
        parse_event_map("pv=view,fav")


def test_the_cli_adapts_a_plain_csv(tmp_path, capsys):
    source = tmp_path / "log.csv"
    source.write_text(CSV)
    code = main(["adapt", "interactions", str(source), "--out", str(tmp_path / "logs"), "--user", "uid", "--item",
                 "sku", "--timestamp", "when", "--event", "what", "--event-map", MAPPING, "--price", "cost"])
    assert code == 0
    assert "5 quarantined" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "logs" / "events").num_rows == 4
    assert main(["adapt", "interactions", str(source), "--out", str(tmp_path / "bad"), "--user", "nope"]) == 2
    assert "columns ['item_id', 'nope', 'timestamp'] not found" in capsys.readouterr().err
