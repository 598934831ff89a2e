from __future__ import annotations

import time

import numpy as np
import pyarrow.dataset as ds

from features.validation import validate_table
from serving.impression_log import ImpressionBatch, ImpressionLog


def batch(i: int, n: int = 5) -> ImpressionBatch:
    return ImpressionBatch(request_key=f"req-{i}", ts_us=1_767_600_000_000_000 + i, user_id=i % 7,
                           item_ids=np.arange(n) + 100, propensity=np.full(n, 0.5), scores=np.linspace(1, 0, n),
                           policy="ranker-v3", arm="champion", randomized=i % 2 == 0, device="mobile")


def test_rows_land_in_contract_parquet_files(tmp_path):
    log = ImpressionLog(tmp_path, rotate_rows=12, rotate_seconds=60).start()
    for i in range(10):
        assert log.log(batch(i))
    log.close()
    assert log.rows_written == 50 and log.files_written >= 4  # rotated by rows
    table = ds.dataset(tmp_path / "impressions", format="parquet").to_table()
    assert table.num_rows == 50
    res = validate_table("impressions", table, known_ids={"users": np.arange(7), "items": np.arange(100, 105)})
    assert len(res.quarantined) == 0
    assert res.valid["impression_id"].is_unique
    assert set(table["arm"].to_pylist()) == {"champion"}


def test_rotation_by_age(tmp_path):
    log = ImpressionLog(tmp_path, rotate_rows=10**6, rotate_seconds=0.2).start()
    log.log(batch(1))
    deadline = time.monotonic() + 5
    while log.files_written == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.files_written == 1
    log.close()


def test_failing_publisher_is_counted_not_raised(tmp_path):
    def broken(_table):
        raise ConnectionError("broker down")

    log = ImpressionLog(tmp_path, publisher=broken).start()
    log.log(batch(1))
    log.close()
    assert log.publish_errors == 1 and log.rows_written == 5


def test_full_queue_drops_and_counts(tmp_path):
    log = ImpressionLog(tmp_path, queue_size=1)
    assert not log.log(batch(0))  # not started
    assert log.batches_dropped == 1


def test_request_log_rows_follow_the_request_metrics_schema(tmp_path):
    from serving.impression_log import REQUEST_METRICS_SCHEMA, RequestLog, RequestRecord

    log = RequestLog(tmp_path).start()
    for i in range(3):
        log.log(RequestRecord(request_key=f"r{i}", ts_us=1_767_600_000_000_000, user_id=i, arm="champion",
                              model_version="3", latency_ms=4.5, error=i == 2, status_code="OK"))
    log.close()
    table = ds.dataset(tmp_path / "requests", format="parquet").to_table()
    assert table.schema.equals(REQUEST_METRICS_SCHEMA, check_metadata=False)
    assert table["error"].to_pylist() == [False, False, True]


def test_position_ids_are_the_stable_ids_of_key_and_position():
    from serving.impression_log import position_ids, stable_id

    for key in ("req-1", "", "ключ-7", "a\x1fb"):
        assert position_ids(key, 60) == [stable_id(key, p) for p in range(60)]
    assert position_ids("req-1", 0) == []


def test_one_drain_is_one_table_with_each_feeds_rows_in_order():
    from serving.impression_log import stable_id

    batches = [batch(i, n) for i, n in enumerate([3, 0, 5, 1])]
    batches[2] = ImpressionBatch(**{**batches[2].__dict__, "device": None})
    rows = ImpressionBatch.table_of(batches).to_pylist()
    expected = [(b, p) for b in batches for p in range(len(b.item_ids))]
    assert len(rows) == len(expected) == 9
    for row, (b, p) in zip(rows, expected, strict=True):
        assert row["impression_id"] == stable_id(b.request_key, p) and row["position"] == p
        assert row["request_id"] == stable_id(b.request_key) and row["request_key"] == b.request_key
        assert row["item_id"] == b.item_ids[p] and row["propensity"] == b.propensity[p]
        assert row["score"] == b.scores[p] and row["user_id"] == b.user_id and row["device"] == b.device
        assert row["randomized"] == b.randomized and row["policy"] == b.policy


def test_a_record_that_cannot_be_converted_is_dropped_and_the_writer_goes_on(tmp_path):
    log = ImpressionLog(tmp_path, drain_seconds=0.02).start()
    broken = ImpressionBatch(**{**batch(0).__dict__, "propensity": np.full(3, 0.5)})  # 5 items, 3 propensities
    assert log.log(broken)
    deadline = time.monotonic() + 5
    while log.batches_dropped == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.batches_dropped == 1
    assert log.log(batch(1)) and log.log(batch(2))
    log.close()
    assert log.rows_written == 10
    assert not log.log(batch(3)) and log.batches_dropped == 2  # closed: dropped and counted
