"""The Spark ETL end to end: schema, labels, leakage, quarantine, determinism and failing checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from features.checks import DataCheckError
from features.config import ChecksConfig, EtlConfig, FeaturesConfig
from features.contract import TABLES, arrow_schema
from features.etl import FeatureEtl
from features.logfiles import UNREADABLE_FILES, validate_files
from features.outputs import TRAINING_BASE, training_feature_names, training_schema
from infra.cli import main
from tests.features.messy_logs import plant_messy_files

DOC = Path(__file__).resolve().parents[2] / "docs" / "training-data.md"
DATA_FOLDERS = ("training", "user_features", "item_features", "seller_features", "user_realtime")


def read(folder: Path) -> pd.DataFrame:
    return ds.dataset(folder, format="parquet", partitioning="hive").to_table().to_pandas()


def features_of(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("f_")]


@pytest.fixture(scope="module")
def training(small_features) -> pd.DataFrame:
    return read(small_features / "training").sort_values("impression_id").reset_index(drop=True)


# ---------------------------------------------------------------------------------- schema
def test_training_schema_matches_the_declaration_and_the_doc(small_features, training):
    files = sorted((small_features / "training").glob("date=*/*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet"] * len(files)  # one file per day, stable names
    written = pq.read_schema(files[0])
    assert [(f.name, f.type) for f in written] == [(f.name, f.type) for f in training_schema(EtlConfig())]
    doc = DOC.read_text()
    documented = set(re.findall(r"`(f_[a-z0-9_]+)`", doc))
    assert set(training_feature_names(EtlConfig())) == documented, "docs/training-data.md lists every f_* feature"
    for name, _, _ in TRAINING_BASE:
        assert name in doc
    assert all(training[c].dtype == np.float64 for c in features_of(training))


def test_every_valid_impression_becomes_one_row(small_logs, training):
    imps = pq.read_table(small_logs / "impressions").to_pandas()
    assert len(training) == len(imps) and training["impression_id"].is_unique
    assert (training["sample_weight"] == 1.0).all()  # no downsampling by default
    for day, rows in training.groupby("date", observed=True):
        assert (rows["ts"].dt.strftime("%Y-%m-%d") == day).all()


def test_rows_are_sorted_by_time_within_each_file(small_features):
    for file in (small_features / "training").glob("date=*/*.parquet"):
        t = pq.read_table(file, columns=["ts", "impression_id"]).to_pandas()
        assert t.equals(t.sort_values(["ts", "impression_id"]).reset_index(drop=True))


# ---------------------------------------------------------------------------------- labels
def test_labels_follow_the_attribution_windows(small_logs, training):
    imps = pq.read_table(small_logs / "impressions").to_pandas()[["impression_id", "ts"]]
    ev = pq.read_table(small_logs / "events").to_pandas().dropna(subset=["impression_id"])
    ev = ev.merge(imps.rename(columns={"ts": "imp_ts"}), on="impression_id")
    delta = ev["ts"] - ev["imp_ts"]
    ev["click"] = (ev["type"] == "click") & (delta <= pd.Timedelta(minutes=30))
    ev["cart"] = (ev["type"] == "add_to_cart") & (delta <= pd.Timedelta(hours=24))
    ev["buy24"] = (ev["type"] == "purchase") & (delta <= pd.Timedelta(hours=24))
    ev["buy7"] = (ev["type"] == "purchase") & (delta <= pd.Timedelta(days=7))
    ev["gmv"] = np.where(ev["buy7"], ev["price_paid"] * ev["quantity"], 0.0)
    expected = ev.groupby("impression_id").agg(clicked=("click", "any"), carted=("cart", "any"),
                                               purchased_24h=("buy24", "any"), purchased_7d=("buy7", "any"),
                                               gmv_7d=("gmv", "sum"))
    got = training.set_index("impression_id")
    exp = expected.reindex(got.index)
    exp = exp.assign(**{c: exp[c].astype("boolean").fillna(False).astype(bool)
                        for c in ("clicked", "carted", "purchased_24h", "purchased_7d")},
                     gmv_7d=exp["gmv_7d"].fillna(0.0))
    for col in ("clicked", "carted", "purchased_24h", "purchased_7d"):
        assert (got[col] == exp[col]).all(), col
    assert np.allclose(got["gmv_7d"], exp["gmv_7d"])
    grade = np.select([exp["purchased_7d"], exp["carted"], exp["clicked"]], [3, 2, 1], 0)
    assert (got["label"].to_numpy() == grade).all()
    assert set(got["label"].unique()) == {0, 1, 2, 3}
    assert not got["label_complete"].any()  # 3 days of log: no 7-day window has closed


def test_position_randomized_and_propensity_stay_on_every_row(small_logs, training):
    imps = pq.read_table(small_logs / "impressions").to_pandas().set_index("impression_id")
    got = training.set_index("impression_id")
    for col in ("position", "randomized", "propensity", "policy", "request_id", "device"):
        a, b = got[col], imps.loc[got.index, col]
        assert ((a == b) | (a.isna() & b.isna())).all(), col


# ---------------------------------------------------------------------------------- leakage and quarantine
def _table(frame: pd.DataFrame, name: str) -> pa.Table:
    return pa.Table.from_pandas(frame, schema=arrow_schema(name), preserve_index=False)


def _plant(logs: Path, target: Path, training: pd.DataFrame) -> dict:
    """Copy the logs and add future events (after time T) and bad rows; return what was planted."""
    shutil.copytree(logs, target)
    days = sorted(training["date"].unique())
    middle = training[(training["date"] == days[1]) & (training["label"] == 0)]
    anchor = middle.iloc[len(middle) // 2]
    t = anchor["ts"]
    other_item = int(training.loc[training["item_id"] != anchor["item_id"], "item_id"].iloc[0])
    base = 10**15
    ev = [  # the future, relative to T
        (base + 1, t + pd.Timedelta(seconds=60), anchor["user_id"], anchor["item_id"], "click", anchor["impression_id"], 1, None),
        (base + 2, t + pd.Timedelta(seconds=90), anchor["user_id"], anchor["item_id"], "purchase", None, 3, 999.0),
    ] + [(base + 10 + k, t + pd.Timedelta(minutes=5 + k), anchor["user_id"], other_item, "purchase", None, 1, 50.0)
         for k in range(20)]
    bad_ev = [
        (base + 100, t, anchor["user_id"], anchor["item_id"], "purchase", 123456789, 1, 5.0),  # unknown impression
        (base + 101, t - pd.Timedelta(hours=1), anchor["user_id"], anchor["item_id"], "click",
         anchor["impression_id"], 1, None),  # before its impression
        (base + 102, t, anchor["user_id"], anchor["item_id"], "purchase", None, 1, None),  # no price
        (base + 103, t, anchor["user_id"], anchor["item_id"], "click", None, 0, None),  # quantity 0
    ]
    cols = ["event_id", "ts", "user_id", "item_id", "type", "impression_id", "quantity", "price_paid"]
    events = pd.DataFrame(ev + bad_ev, columns=cols).astype({"impression_id": "Int64", "price_paid": "float64"})
    pq.write_table(_table(events, "events"), target / "events" / "part-planted.parquet")
    original = pq.read_table(logs / "events").to_pandas()
    dup = original.iloc[[0]]  # an exact duplicate: quarantined, the first copy stays
    pq.write_table(_table(dup, "events"), target / "events" / "part-planted-dup.parquet")
    imps = pq.read_table(logs / "impressions").to_pandas()
    bad_imp = imps.iloc[[0]].copy()
    bad_imp["impression_id"] = base + 200
    bad_imp["item_id"] = 10**12  # unknown item
    pq.write_table(_table(bad_imp, "impressions"), target / "impressions" / "part-planted.parquet")
    return {"t": t, "anchor": int(anchor["impression_id"]), "user": int(anchor["user_id"]),
            "bad_events": {base + 100, base + 101, base + 102, base + 103}, "dup_event": int(dup["event_id"].iloc[0]),
            "bad_impression": base + 200, "planted_events": len(ev) + len(bad_ev) + 1}


@pytest.fixture(scope="module")
def planted(spark, small_logs, training, tmp_path_factory):
    """One ETL run over the small log with planted bad rows, future events and the messy files of
    ``tests/features/messy_logs.py`` (whose valid events come after the planted time T too)."""
    root = tmp_path_factory.mktemp("planted")
    info = _plant(small_logs, root / "logs", training)
    messy = plant_messy_files(root / "logs", at=info["t"])
    report = FeatureEtl(FeaturesConfig()).run(spark, str(root / "logs"), str(root / "features"))
    return info, report, root / "features", messy, root / "logs"


def test_no_feature_sees_a_planted_future_event(planted, training, small_features):
    info, _, out, _, _ = planted
    after = read(out / "training").sort_values("impression_id").reset_index(drop=True)
    assert after["impression_id"].equals(training["impression_id"])
    names = features_of(training)
    before_t = (training["ts"] <= info["t"]).to_numpy()
    a, b = training[names].to_numpy(), after[names].to_numpy()
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    assert same[before_t].all(), [n for n, ok in zip(names, same[before_t].all(axis=0), strict=True) if not ok]
    # the test can fail: later rows of the planted user do see the planted events
    later_user = ~before_t & (training["user_id"] == info["user"]).to_numpy()
    assert later_user.any() and (~same[later_user]).any()
    # labels: the anchor impression got the planted click and purchase (with the planted GMV), nothing else changed
    row = after.set_index("impression_id").loc[info["anchor"]]
    assert row["clicked"] and row["label"] == 1 and not row["purchased_7d"]  # the purchase was not linked
    others = after["impression_id"] != info["anchor"]
    assert after.loc[others, "label"].equals(training.loc[others, "label"])
    # snapshot and intraday tables: every row stamped at or before T is unchanged
    for name, key in (("user_features", "user_id"), ("item_features", "item_id"), ("seller_features", "seller_id"),
                      ("user_realtime", "user_id")):
        old, new = read(small_features / name), read(out / name)
        old = old[old["event_timestamp"] <= info["t"]].sort_values([key, "event_timestamp"]).reset_index(drop=True)
        new = new[new["event_timestamp"] <= info["t"]].sort_values([key, "event_timestamp"]).reset_index(drop=True)
        assert len(old) > 0
        pd.testing.assert_frame_equal(old, new, check_categorical=False)


def test_bad_rows_are_quarantined_with_reasons_never_dropped(planted, small_logs):
    info, report, out, messy, _ = planted
    ev = report.tables["events"]
    original = pq.read_table(small_logs / "events").num_rows
    assert ev["input"] == messy.rows["events"] > original + info["planted_events"]
    assert ev["quarantined"] == len(info["bad_events"]) + 1 + len(messy.bad["events"])
    assert ev["valid"] + ev["quarantined"] == ev["input"]
    q = pq.read_table(out / "quarantine" / "events").to_pandas()
    reasons = dict(zip(q["event_id"], q["quarantine_reason"], strict=True))
    base = min(info["bad_events"])
    assert reasons[base] == "impression_id: unknown impression id"
    assert reasons[base + 1] == "ts: event before its impression"
    assert reasons[base + 2] == "price_paid: missing for a purchase"
    assert reasons[base + 3] == "quantity: must be >= 1"
    assert reasons[info["dup_event"]] == "event_id: duplicate primary key"
    assert (q["source_file"].str.startswith("part-")).all()
    qi = pq.read_table(out / "quarantine" / "impressions").to_pandas()
    assert list(qi["impression_id"]) == [info["bad_impression"]]
    assert list(qi["quarantine_reason"]) == ["item_id: unknown item id"]
    saved = json.loads((out / "_reports" / "latest.json").read_text())
    assert saved["tables"]["events"]["reasons"]["event_id: duplicate primary key"] == 1
    assert saved["status"] == "ok" and saved["checks"]["passed"]


def _quarantined(folder: Path, table: str) -> list[tuple[int, str, str]]:
    pk = TABLES[table].primary_key
    if not folder.is_dir():
        return []
    q = pq.read_table(folder).to_pandas()
    return sorted(zip(q[pk].astype("int64"), q["source_file"], q["quarantine_reason"], strict=True))


def test_messy_files_never_abort_the_etl_and_validate_agrees_row_by_row(planted, capsys):
    """The corrupted-log table of issue 20: each bad row or file with its reason, the rest goes on."""
    _, report, out, messy, logs = planted
    for name, t in report.tables.items():
        assert t["valid"] + t["quarantined"] == t["input"] == messy.rows[name], name
    q = pq.read_table(out / "quarantine" / "events").to_pandas().set_index("event_id")
    for key, reason in messy.bad["events"].items():
        assert q.loc[key, "quarantine_reason"].startswith(reason), (key, q.loc[key, "quarantine_reason"])
    assert not set(q.index) & messy.kept["events"]  # "1", "2" and the ids written as text read as numbers
    text_user = q[q["source_file"] == "part-900-text-user.parquet"]
    assert list(text_user["raw_user_id"]) == ["user-7"]
    assert sorted(q.loc[q["source_file"] == "part-901-text-quantity.parquet", "raw_quantity"]) == ["", "2.5"]
    # the column missing from the first file is missing for that file's rows only
    assert report.tables["events"]["reasons"]["type: missing required field (column absent)"] == 12
    assert set(q.index[q["quarantine_reason"].str.contains("column absent")]) == {
        k for k, r in messy.bad["events"].items() if "column absent" in r}
    assert [p["column"] for p in report.tables["events"]["schema_problems"]] == ["quantity", "type", "user_id"]
    unreadable = report.tables["impressions"]["unreadable_files"]
    assert [f["file"] for f in unreadable] == [messy.unreadable["impressions"]]
    assert "Parquet magic bytes not found" in unreadable[0]["reason"]
    assert json.loads((out / "quarantine" / "impressions" / UNREADABLE_FILES).read_text()) == unreadable

    results, scans = validate_files(str(logs))
    for name, res in results.items():
        pk = TABLES[name].primary_key
        mine = sorted(zip(res.quarantined[pk].astype("int64"), res.quarantined["source_file"],
                          res.quarantined["quarantine_reason"], strict=True))
        assert mine == _quarantined(out / "quarantine" / name, name), name
        assert res.n_input == report.tables[name]["input"]
        assert scans[name].unreadable_report() == report.tables[name]["unreadable_files"]
    assert main(["validate", str(logs)]) == 0
    printed = capsys.readouterr().out
    assert "unreadable files 1" in printed and "12  type: missing required field (column absent)" in printed



# ---------------------------------------------------------------------------------- determinism, re-runs, checks
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for name in DATA_FOLDERS
            for p in sorted((root / name).rglob("*")) if p.is_file()}


def test_rerunning_days_replaces_them_identically_and_failed_checks_publish_nothing(spark, small_logs,
                                                                                   small_features, tmp_path):
    """Same input, same bytes: the re-run assembles one day per batch, two batches in parallel
    threads, without broadcast hints (rows regrouped by a shuffle and sorted), where the run that
    built ``small_features`` did all days in one broadcast pass.

    The session's own broadcast threshold stays as it was: with every join a sort-merge join the
    aggregates sum their doubles in another order, and a few features move in the 14th digit."""
    copy = tmp_path / "features"
    shutil.copytree(small_features, copy)
    original = _files(small_features)
    days = sorted(p.name.split("=")[1] for p in (copy / "training").glob("date=*"))
    last = days[-1]
    victim = copy / "training" / f"date={last}" / "part-00000.parquet"
    victim.write_bytes(b"corrupted")  # a broken day, to be replaced by the re-run

    strict = replace(FeaturesConfig(), checks=ChecksConfig(max_null_rate=0.0))
    with pytest.raises(DataCheckError, match=r"FAIL null_rate   training\.f_\w+: null rate [0-9.]+ \(limit: <= 0\)"):
        FeatureEtl(strict).run(spark, str(small_logs), str(copy), start_date=last, end_date=last)
    assert victim.read_bytes() == b"corrupted"  # nothing was published
    failed = json.loads(max((copy / "_reports").glob("etl-*.json")).read_text())
    assert failed["status"] == "failed checks" and "null rate" in failed["error"]

    config = FeaturesConfig()
    config = replace(config, spark=replace(config.spark, broadcast_threshold_mb=0))  # shuffle joins in validation
    report = FeatureEtl(config).run(spark, str(small_logs), str(copy), start_date=days[-2], end_date=last)
    assert report.dates == days[-2:]
    assert _files(copy) == original  # byte for byte, every table
    volume = [r for r in report.checks["results"] if r["check"] == "volume"]
    assert volume and all("same day" in r["figure"] for r in volume)
    assert not list(copy.glob("_staging-*"))


def test_date_range_is_validated(spark, small_logs, tmp_path):
    with pytest.raises(ValueError, match="start_date must be YYYY-MM-DD"):
        FeatureEtl(FeaturesConfig()).run(spark, str(small_logs), str(tmp_path), start_date="yesterday")


def test_entry_module_runs_standalone():
    out = subprocess.run([sys.executable, "-m", "features.etl", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "spark-submit" not in out.stderr and "logs" in out.stdout
