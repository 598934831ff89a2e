"""Data checks: each check passes on good figures and fails with a message naming table, column and figure."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.checks import (
    CheckReport,
    DataCheckError,
    check_freshness,
    check_null_rates,
    check_quarantine,
    check_schema,
    check_training_table,
    check_volume,
)
from features.config import ChecksConfig, EtlConfig

CFG = ChecksConfig()
HOUR = 3_600_000_000
EXPECTED = pa.schema([("impression_id", pa.int64()), ("f_user_views_7d", pa.float64())])

# (report, expected failure lines (substrings); empty means every check passes)
CASES = [
    (check_schema("training", EXPECTED, EXPECTED), []),
    (check_schema("training", pa.schema([("impression_id", pa.int64())]), EXPECTED),
     ["schema      training.f_user_views_7d: column absent"]),
    (check_schema("training", pa.schema([("impression_id", pa.string()), ("f_user_views_7d", pa.float64())]),
                  EXPECTED), ["training.impression_id: type string (limit: int64)"]),
    (check_null_rates("training", 100, {"label": 0, "f_item_ctr_7d": 98}, CFG, required=("label",)), []),
    (check_null_rates("training", 100, {"label": 3, "f_item_ctr_7d": 99}, CFG, required=("label",)),
     ["training.label: 3 nulls of 100", "training.f_item_ctr_7d: null rate 0.99 (limit: <= 0.98)"]),
    (check_null_rates("training", 100, {"f_item_ctr_7d": 100}, ChecksConfig(null_rate_ignore=("f_item_ctr_7d",)),
                      required=()), []),
    (check_volume("training", {"2026-01-05": 900}, {"2026-01-05": 1000}, CFG), []),
    (check_volume("training", {"2026-01-06": 300}, {"2026-01-04": 1000, "2026-01-05": 1000}, CFG),
     ["training[date=2026-01-06]: 300 rows = 0.3 x previous run's mean day (1,000)"]),
    (check_volume("training", {"2026-01-05": 2500}, {"2026-01-05": 1000}, CFG),
     ["training[date=2026-01-05]: 2,500 rows = 2.5 x previous run's same day"]),
    (check_volume("training", {"2026-01-05": 10}, None, CFG), []),
    (check_freshness({"impressions": 100 * HOUR, "events": 90 * HOUR}, CFG), []),
    (check_freshness({"impressions": 100 * HOUR, "events": 40 * HOUR}, CFG),
     ["events.ts: newest row 60 h behind impressions (limit: <= 48 h)"]),
    (check_freshness({"impressions": 0, "events": 0}, ChecksConfig(max_age_hours=24, as_of="1970-01-03T00:00:00Z")),
     ["impressions.ts: newest row 48 h old"]),
    (check_quarantine("events", 1000, 50, CFG), []),
    (check_quarantine("events", 1000, 51, CFG), ["events: 51 of 1,000 rows (0.051) (limit: <= 0.05)"]),
]


@pytest.mark.parametrize(("report", "failures"), CASES)
def test_checks_table(report: CheckReport, failures: list[str]):
    text = report.to_text(failures_only=True)
    assert len(report.failures) == len(failures), text
    for expected in failures:
        assert expected in text
    if failures:
        with pytest.raises(DataCheckError) as info:
            report.raise_for_failures()
        assert all(f in str(info.value) for f in failures)
    else:
        report.raise_for_failures()


def test_freshness_uses_the_clock_when_no_as_of():
    now = datetime(2026, 1, 10, tzinfo=UTC)
    newest = int(datetime(2026, 1, 9, 23, tzinfo=UTC).timestamp() * 1e6)
    assert check_freshness({"impressions": newest}, ChecksConfig(max_age_hours=2), now=now).passed
    assert not check_freshness({"impressions": newest}, ChecksConfig(max_age_hours=0.5), now=now).passed


def test_training_table_passes_then_fails_on_tampered_copies(small_features, tmp_path):
    etl, checks = EtlConfig(), ChecksConfig()
    assert check_training_table(small_features / "training", etl=etl, checks=checks).passed

    broken = tmp_path / "training"
    shutil.copytree(small_features / "training", broken)
    parts = sorted(broken.glob("date=*/*.parquet"))
    for part in parts:  # a feature lost in every file
        table = pq.read_table(part)
        i = table.schema.get_field_index("f_item_ctr_7d")
        pq.write_table(table.set_column(i, "f_item_ctr_7d", pa.nulls(table.num_rows, pa.float64())), part)
    part = parts[-1]  # and in one day: a missing column and null labels
    table = pq.read_table(part)
    table = table.set_column(table.schema.get_field_index("label"), "label",
                             pc.if_else(pc.equal(pc.bit_wise_and(table["impression_id"], 1), 0),
                                        pa.scalar(None, pa.int32()), table["label"]))
    pq.write_table(table.drop_columns(["f_ctx_hour"]), part)
    report = check_training_table(broken, etl=etl, checks=checks)
    text = report.to_text(failures_only=True)
    assert f"training[{part.parent.name}].f_ctx_hour: column absent" in text
    assert "training.label:" in text and "nulls of" in text
    with pytest.raises(DataCheckError, match=r"training\.f_item_ctr_7d: null rate"):
        report.raise_for_failures()


def test_training_table_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="no date="):
        check_training_table(tmp_path, etl=EtlConfig(), checks=ChecksConfig())
