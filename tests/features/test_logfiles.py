"""Each file of a contract table is opened on its own: broken files are set aside, others read with the contract's types."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.contract import arrow_schema
from features.logfiles import read_files, scan_table

T0 = pd.Timestamp("2026-01-05 12:00", tz="UTC")
BIG = 2**62 + 1


def _users(ids: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": ids, "signup_ts": [T0] * len(ids), "country": ["DE"] * len(ids),
                         "device": ["mobile"] * len(ids)})


@pytest.fixture
def folder(tmp_path):
    users = tmp_path / "users"
    (users / "date=2026-01-05").mkdir(parents=True)
    schema = arrow_schema("users")
    pq.write_table(pa.Table.from_pandas(_users([1, BIG]), schema=schema, preserve_index=False), users / "a.parquet")
    # the contract's columns in another form: ids as text (one is no number), no device column, ms timestamps
    text = _users([3, 4, 5]).drop(columns="device").astype({"user_id": str})
    text.loc[2, "user_id"] = "five"
    pq.write_table(pa.Table.from_pandas(text, preserve_index=False).cast(pa.schema([
        ("user_id", pa.string()), ("signup_ts", pa.timestamp("ms", tz="UTC")), ("country", pa.string())])),
        users / "date=2026-01-05" / "b.parquet")
    good = (users / "a.parquet").read_bytes()
    (users / "c.parquet").write_bytes(good[:len(good) // 2])  # truncated
    (users / "d.parquet").write_bytes(b"")
    # a page that does not decode: the footer is intact, the compressed data is not
    pq.write_table(pa.table({"user_id": pa.array(range(5000), pa.int64())}), users / "e.parquet", compression="gzip")
    broken = bytearray((users / "e.parquet").read_bytes())
    broken[40:200] = bytes(160)
    (users / "e.parquet").write_bytes(bytes(broken))
    (users / "_SUCCESS").write_bytes(b"")
    (users / ".f.parquet.crc").write_bytes(b"x")
    return tmp_path


def test_each_file_is_read_or_set_aside_with_its_reason(folder):
    files = scan_table(str(folder), "users")
    assert [f.name for f in files.files] == ["a.parquet", "c.parquet", "d.parquet", "date=2026-01-05/b.parquet",
                                             "e.parquet"]  # hidden names skipped, nested names kept
    reasons = {f.name: f.error for f in files.unreadable}
    assert set(reasons) == {"c.parquet", "d.parquet", "e.parquet"}
    assert all(r.startswith("cannot read the file (") for r in reasons.values())
    assert [f.name for f in files.conforming] == ["a.parquet"]
    assert files.absent() == {"device": ("date=2026-01-05/b.parquet",)}
    assert [(p.column, p.found) for p in files.schema_problems()] == [
        ("device", "absent"), ("signup_ts", "timestamp[ms, tz=UTC]"), ("user_id", "string")]

    rows = read_files(files).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    assert rows["user_id"].tolist() == [1, BIG, 3, 4, pd.NA]  # exact, and "five" does not read as a number
    assert rows["raw_user_id"].tolist() == [None, None, "3", "4", "five"]
    assert rows["source_file"].tolist() == ["a.parquet"] * 2 + ["date=2026-01-05/b.parquet"] * 3
    assert (rows["signup_ts"] == T0).all() and rows["device"].isna().tolist() == [False] * 2 + [True] * 3


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="table users: no folder"):
        scan_table(str(tmp_path), "users")
    (tmp_path / "users").mkdir()
    with pytest.raises(FileNotFoundError, match="table users: no Parquet data"):
        scan_table(str(tmp_path), "users")
    with pytest.raises(ValueError, match="table must be one of"):
        scan_table(str(tmp_path), "orders")
