"""One day's training rows, assembled and written inside Spark's Python workers.

Stage 4 of the ETL (:mod:`features.etl`) hands each day's valid impressions, in their
``(ts, impression_id)`` order, to :func:`write_day_part` through ``DataFrame.mapInArrow``.
For every Arrow batch the worker

1. joins the batch to its lookup tables by key: the attributed labels (by impression id), the
   user's intraday row each request sees (by user and request time), and the day's user, item
   and seller snapshots (by id); a missing row gives nulls, as a left join does;
2. grades the label and downsamples negatives (the keep decision is Spark's ``xxhash64`` of the
   impression id, computed before the rows leave the JVM);
3. computes the request-time features with :func:`features.derived.derived_features`, the very
   function serving calls;
4. appends the rows to the day's Parquet file in the ``training/`` schema
   (:func:`features.outputs.training_schema`), in row groups of :data:`ROW_GROUP_ROWS` rows,

and finally yields one row of statistics (rows, positives, nulls per column) for the checks.

Why by hand rather than as Spark joins, a pandas UDF and Spark's writer: the 10M-impression
benchmark spent most of its assembly CPU in the JVM carrying ~180-column rows through four
joins, converting the UDF's 57 input columns to Arrow, sorting the wide rows again and writing
them with parquet-mr (~45 ns per value). Here the lookups are vectorised ``take``\\ s over
Arrow tables of one day (the same broadcast-sized tables Spark shipped to every task), only
the ~20 impression columns cross from the JVM, and Arrow's C++ writer writes the file; the
rows never need re-sorting because they are appended in the order the day's sorted work file
is read, which :func:`write_day_part` verifies batch by batch.

A task writes ``<target>/.part-NNNNN.attempt-A.tmp`` and renames it to ``part-NNNNN.parquet``
(NNNNN is the Spark partition) only when it has written every row, so a failed or retried task
leaves no partial file under its final name. Paths may be local or any URI Arrow's filesystems
open (``s3://``, ``hdfs://``, ``gs://``; ``s3a://`` is read as ``s3://``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.derived import DERIVED_FEATURES, ITEM_INPUTS, REALTIME_INPUTS, derived_features

__all__ = [
    "IMPRESSION_COLUMNS",
    "KEEP_DRAW",
    "LABEL_FLAGS",
    "ROW_GROUP_ROWS",
    "STATS_SCHEMA",
    "AssemblyRules",
    "DayTables",
    "Lookups",
    "assemble",
    "load_lookups",
    "write_day_part",
]

DAY_US = 86_400 * 1_000_000
# The negative-sampling draw in [0, 1) that Spark adds to each impression.
KEEP_DRAW = "_keep_u"
# Columns of the validated impressions (with the item's seller, category, price and margin
# carried by validation) that the assembly reads, and the draw.
IMPRESSION_COLUMNS: tuple[str, ...] = (
    "impression_id", "request_id", "ts_us", "user_id", "item_id", "seller_id", "category_id", "position",
    "randomized", "propensity", "policy", "device", "item_price", "margin_rate", KEEP_DRAW)
LABEL_FLAGS: tuple[str, ...] = ("clicked", "carted", "purchased_24h", "purchased_7d")
ROW_GROUP_ROWS = 131_072
STATS_SCHEMA = "date string, part int, rows long, positives long, nulls string"
_STATS_ARROW = pa.schema([("date", pa.string()), ("part", pa.int32()), ("rows", pa.int64()),
                          ("positives", pa.int64()), ("nulls", pa.string())])  # STATS_SCHEMA as Arrow


@dataclass(frozen=True)
class DayTables:
    """Where one day's inputs and output live (folders of Parquet files; a missing folder is an empty table)."""

    date: str
    labels: str
    realtime: str
    users: str
    items: str
    sellers: str
    target: str


@dataclass(frozen=True)
class AssemblyRules:
    """What a training row holds and how it is labelled and sampled (picklable: it travels to the workers).

    Parameters
    ----------
    schema : pyarrow.Schema
        The ``training/`` file schema (:func:`features.outputs.training_schema`).
    user_columns, item_columns, seller_columns : tuple of str
        Columns read from each snapshot table: its features, then what the request-time
        features need besides (``top_*`` lists, item category, seller and creation time).
    purchase_days : float
        The long purchase window; a row is ``label_complete`` once it has fully passed by ``log_end_us``.
    log_end_us : int
    negative_keep_rate : float
    """

    schema: pa.Schema
    user_columns: tuple[str, ...]
    item_columns: tuple[str, ...]
    seller_columns: tuple[str, ...]
    purchase_days: float
    log_end_us: int
    negative_keep_rate: float


@dataclass
class Lookups:
    """One day's lookup tables and a hash index on each one's key."""

    labels: pa.Table
    label_index: pd.Index
    realtime: pa.Table
    realtime_index: pd.MultiIndex
    users: pa.Table
    user_index: pd.Index
    items: pa.Table
    item_index: pd.Index
    sellers: pa.Table
    seller_index: pd.Index


def _filesystem(path: str) -> tuple[Any, str]:
    """Arrow's filesystem for ``path`` and the path within it (plain paths and ``file:`` are local)."""
    from pyarrow import fs

    if "://" not in path and not path.startswith("file:"):
        return fs.LocalFileSystem(), path
    if path.startswith("file:"):
        return fs.LocalFileSystem(), "/" + path.removeprefix("file:").lstrip("/")
    if path.startswith("s3a://"):
        path = "s3://" + path.removeprefix("s3a://")
    return fs.FileSystem.from_uri(path)


def _read(folder: str, key: list[str], columns: tuple[str, ...], types: dict[str, pa.DataType]) -> pa.Table:
    """``key`` + ``columns`` of every Parquet file under ``folder``; an empty table when there is none."""
    from pyarrow import fs

    filesystem, path = _filesystem(folder)
    names = [*key, *columns]
    if filesystem.get_file_info(path).type == fs.FileType.NotFound:
        return pa.schema([(n, types.get(n, pa.float64())) for n in names]).empty_table()
    return pq.read_table(path, columns=names, filesystem=filesystem)


def _index(table: pa.Table, key: str) -> pd.Index:
    return pd.Index(table.column(key).to_numpy(zero_copy_only=False))


_CACHE: dict[tuple[DayTables, AssemblyRules], Lookups] = {}


def load_lookups(day: DayTables, rules: AssemblyRules) -> Lookups:
    """Read one day's lookup tables (kept for the next task of the same day in this worker)."""
    cached = _CACHE.get((day, rules))
    if cached is not None:
        return cached
    ids = {c: pa.int64() for c in ("impression_id", "user_id", "item_id", "seller_id", "ts_us")}
    flags = {c: pa.bool_() for c in LABEL_FLAGS}
    labels = _read(day.labels, ["impression_id"], (*LABEL_FLAGS, "gmv_7d"), {**ids, **flags})
    realtime = _read(day.realtime, ["user_id", "ts_us"], REALTIME_INPUTS,
                     {**ids, **{c: pa.int64() for c in REALTIME_INPUTS}})
    users = _read(day.users, ["user_id"], rules.user_columns, ids)
    items = _read(day.items, ["item_id"], rules.item_columns, ids)
    sellers = _read(day.sellers, ["seller_id"], rules.seller_columns, ids)
    rt_keys = pd.MultiIndex.from_arrays([realtime.column("user_id").to_numpy(zero_copy_only=False),
                                         realtime.column("ts_us").to_numpy(zero_copy_only=False)])
    lookups = Lookups(labels, _index(labels, "impression_id"), realtime, rt_keys, users, _index(users, "user_id"),
                      items, _index(items, "item_id"), sellers, _index(sellers, "seller_id"))
    _CACHE.clear()  # a worker assembles one day at a time
    _CACHE[(day, rules)] = lookups
    return lookups


def _take(table: pa.Table, positions: np.ndarray) -> pa.Table:
    """Rows of ``table`` at ``positions``; -1 (no match) gives a row of nulls, as a left join does."""
    return table.take(pa.array(positions, mask=positions < 0))


def assemble(imps: pa.Table, lookups: Lookups, rules: AssemblyRules) -> pa.Table:
    """The training rows of a batch of impressions, in ``rules.schema`` (rows in input order).

    Parameters
    ----------
    imps : pyarrow.Table
        :data:`IMPRESSION_COLUMNS` of valid impressions of one day.
    lookups : Lookups
    rules : AssemblyRules
    """
    labels = _take(lookups.labels, lookups.label_index.get_indexer(imps.column("impression_id").to_numpy()))
    flags = {c: pc.fill_null(labels.column(c), False).to_numpy(zero_copy_only=False) for c in LABEL_FLAGS}
    label = np.select([flags["purchased_7d"], flags["carted"], flags["clicked"]], [3, 2, 1], 0).astype(np.int32)
    rate = rules.negative_keep_rate
    if rate < 1.0:
        keep = (label > 0) | (imps.column(KEEP_DRAW).to_numpy() < rate)
        imps, labels, label = imps.filter(pa.array(keep)), labels.filter(pa.array(keep)), label[keep]
        flags = {c: v[keep] for c, v in flags.items()}
    n = imps.num_rows
    ts_us = imps.column("ts_us").to_numpy()
    user_ids = imps.column("user_id").to_numpy()
    realtime = _take(lookups.realtime, lookups.realtime_index.get_indexer(
        pd.MultiIndex.from_arrays([user_ids, ts_us])))
    users = _take(lookups.users, lookups.user_index.get_indexer(user_ids))
    items = _take(lookups.items, lookups.item_index.get_indexer(imps.column("item_id").to_numpy()))
    sellers = _take(lookups.sellers, lookups.seller_index.get_indexer(imps.column("seller_id").to_numpy()))

    joined: dict[str, pa.ChunkedArray] = {}
    for table in (users, items, sellers, realtime):
        for name in table.column_names:
            joined.setdefault(name, table.column(name))
    inputs = {name: joined[name] for name in REALTIME_INPUTS + ITEM_INPUTS if name != "item_id"}
    inputs.update({name: joined[name] for name in rules.user_columns})
    frame = pd.DataFrame({name: col.to_numpy(zero_copy_only=False) for name, col in inputs.items()})
    frame["item_id"] = imps.column("item_id").to_numpy()
    frame["ts_us"] = ts_us
    frame["device"] = imps.column("device").to_pandas()
    derived = derived_features(frame)

    columns: dict[str, Any] = {name: imps.column(name) for name in (
        "impression_id", "request_id", "user_id", "item_id", "seller_id", "category_id", "position", "randomized",
        "propensity", "policy", "device", "margin_rate")}
    columns["ts"] = pa.array(ts_us, type=pa.timestamp("us", tz="UTC"))
    columns["price"] = imps.column("item_price")
    columns["label"] = label
    columns.update(flags)
    columns["gmv_7d"] = pc.fill_null(labels.column("gmv_7d"), 0.0)
    columns["label_complete"] = ts_us + int(rules.purchase_days * DAY_US) <= rules.log_end_us
    columns["sample_weight"] = np.where(label > 0, 1.0, 1.0 / rate)
    for name in DERIVED_FEATURES:  # NaN is "no value": null in the file, as for every other feature
        values = derived[name].to_numpy()
        columns[name] = pa.array(values, mask=np.isnan(values))
    arrays = []
    for field in rules.schema:
        value = columns[field.name] if field.name in columns else joined[field.name]
        arrays.append(pa.array(value, type=field.type) if isinstance(value, np.ndarray)
                      else value.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=rules.schema) if n else rules.schema.empty_table()


def write_day_part(day: DayTables, rules: AssemblyRules, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` function: assemble and write one Spark partition of a day's impressions.

    Yields one :data:`STATS_SCHEMA` row: the day, the partition, rows written, positives and
    the null count of every column.

    Raises
    ------
    RuntimeError
        If the impressions do not arrive in ``(ts_us, impression_id)`` order (the file would
        not be sorted).
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    part = context.partitionId() if context else 0
    attempt = context.attemptNumber() if context else 0
    filesystem, target = _filesystem(day.target)
    tmp = f"{target}/.part-{part:05d}.attempt-{attempt}.tmp"
    final = f"{target}/part-{part:05d}.parquet"
    writer: pq.ParquetWriter | None = None
    pending: list[pa.Table] = []  # assembled rows not yet in a row group
    rows = positives = 0
    nulls = dict.fromkeys(rules.schema.names, 0)
    last: tuple[int, int] | None = None
    lookups: Lookups | None = None

    def flush(everything: bool) -> None:
        nonlocal writer, pending
        table = pa.concat_tables(pending)
        while table.num_rows >= ROW_GROUP_ROWS or (everything and table.num_rows):
            group, table = table.slice(0, ROW_GROUP_ROWS), table.slice(ROW_GROUP_ROWS)
            if writer is None:
                filesystem.create_dir(target, recursive=True)
                writer = pq.ParquetWriter(tmp, rules.schema, filesystem=filesystem, compression="snappy")
            writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
        pending = [table] if table.num_rows else []

    for batch in batches:
        if batch.num_rows == 0:
            continue
        ts = batch.column("ts_us").to_numpy()
        ids = batch.column("impression_id").to_numpy()
        ordered = (ts[1:] > ts[:-1]) | ((ts[1:] == ts[:-1]) & (ids[1:] > ids[:-1]))
        if not ordered.all() or (last is not None and (int(ts[0]), int(ids[0])) <= last):
            raise RuntimeError(f"training rows of {day.date} arrived out of (ts, impression_id) order in "
                               f"partition {part}; the day's file would not be sorted")
        last = (int(ts[-1]), int(ids[-1]))
        if lookups is None:
            lookups = load_lookups(day, rules)
        out = assemble(pa.Table.from_batches([batch]), lookups, rules)
        rows += out.num_rows
        positives += int(pc.sum(pc.greater(out.column("label"), 0)).as_py() or 0)
        for name in rules.schema.names:
            nulls[name] += out.column(name).null_count
        pending.append(out)
        if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
            flush(everything=False)
    if pending:
        flush(everything=True)
    if writer is not None:
        writer.close()
        filesystem.move(tmp, final)
    yield pa.RecordBatch.from_pylist([{"date": day.date, "part": part, "rows": rows, "positives": positives,
                                       "nulls": json.dumps(nulls, sort_keys=True)}], schema=_STATS_ARROW)
