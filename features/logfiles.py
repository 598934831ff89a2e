"""The files of a contract table, opened one by one and read with the contract's schema.

A table's folder collects files from different writers and days, so no file speaks for
another: each is opened on its own (pyarrow reads its footer, then decodes every row group
of its contract columns once), and

- a file that cannot be read (truncated, not Parquet, a page that does not decode) is set
  aside whole, with the reason; the other files go on;
- a column whose type differs from the contract's is read value by value with the
  validator's rules (:func:`features.validation.coerce_values`): a value that reads as the
  contract type is kept, any other becomes null and keeps its original text in
  ``raw_<column>``, which both validators report as ``"<column>: wrong type, expected ..."``;
- a column missing from a file is missing for that file's rows only (``"<column>: missing
  required field (column absent)"``).

Both validators apply what this module finds, so they agree: the pandas one
(:func:`validate_files`, ``feedrank validate``) reads every readable file here; the Spark one
(:mod:`features.quarantine`, the ETL) reads the files that match the contract directly and the
converted copies of the others (:func:`write_converted`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from features.config import ValidationConfig
from features.contract import TABLE_ORDER, TABLES, arrow_schema
from features.validation import (
    RAW_PREFIX,
    SOURCE_FILE_COLUMN,
    ValidationResult,
    coerce_values,
    validate_logs,
)

__all__ = ["UNREADABLE_FILES", "LogFile", "SchemaProblem", "TableFiles", "read_files", "scan_table",
           "validate_files", "write_converted"]

logger = logging.getLogger(__name__)

#: Beside a table's quarantined rows: the files that could not be read, with their reasons (JSON).
UNREADABLE_FILES = "_unreadable_files.json"


@dataclass(frozen=True)
class SchemaProblem:
    """A contract column that some files of a table lack or hold with another type."""

    table: str
    column: str
    expected: str
    found: str  # the Arrow type found, or "absent"
    files: tuple[str, ...]


@dataclass(frozen=True)
class LogFile:
    """One file of a contract table as its footer and pages describe it.

    Attributes
    ----------
    name : str
        The path below the table's folder (``source_file`` of its rows).
    rows : int or None
        Rows in the file (None when even the footer is unreadable).
    types : dict of str to str
        The Arrow type of every contract column the file holds.
    error : str
        Why the file cannot be read ("" when it can).
    """

    name: str
    rows: int | None
    types: Mapping[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def readable(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class TableFiles:
    """The files of one contract table under ``root``, scanned by :func:`scan_table`."""

    table: str
    root: str
    files: tuple[LogFile, ...]

    @property
    def folder(self) -> str:
        return f"{self.root.rstrip('/')}/{self.table}"

    def path(self, file: LogFile) -> str:
        """The file's path or URI, for pyarrow and Spark alike."""
        return f"{self.folder}/{file.name}"

    @property
    def readable(self) -> tuple[LogFile, ...]:
        return tuple(f for f in self.files if f.readable)

    @property
    def unreadable(self) -> tuple[LogFile, ...]:
        return tuple(f for f in self.files if not f.readable)

    def retyped(self, file: LogFile) -> tuple[str, ...]:
        """The contract columns this file holds with another type than the contract's."""
        expected = _expected_types(self.table)
        return tuple(c for c, t in file.types.items() if t != expected[c])

    @property
    def conforming(self) -> tuple[LogFile, ...]:
        """Readable files whose contract columns all have the contract's types (some may be absent)."""
        return tuple(f for f in self.readable if not self.retyped(f))

    def absent(self) -> dict[str, tuple[str, ...]]:
        """Contract column -> the readable files that lack it (columns no file lacks are left out)."""
        out: dict[str, tuple[str, ...]] = {}
        for col in TABLES[self.table].column_names:
            lacking = tuple(f.name for f in self.readable if col not in f.types)
            if lacking:
                out[col] = lacking
        return out

    def schema_problems(self) -> tuple[SchemaProblem, ...]:
        expected = _expected_types(self.table)
        found: dict[tuple[str, str], list[str]] = {}
        for f in self.readable:
            for col in TABLES[self.table].column_names:
                kind = f.types.get(col, "absent")
                if kind != expected[col]:
                    found.setdefault((col, kind), []).append(f.name)
        return tuple(SchemaProblem(self.table, col, expected[col], kind, tuple(names))
                     for (col, kind), names in sorted(found.items()))

    def unreadable_report(self) -> list[dict[str, object]]:
        """The unreadable files as JSON-ready dicts: ``file``, ``rows`` (None if unknown) and ``reason``."""
        return [{"file": f.name, "rows": f.rows, "reason": f.error} for f in self.unreadable]


def _expected_types(table: str) -> dict[str, str]:
    return {f.name: str(f.type) for f in arrow_schema(table)}


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for ``root`` (a local path or a URI such as ``hdfs://...``) and the path on it."""
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), os.path.abspath(root)


def _hidden(relative: str) -> bool:
    """Spark and Hadoop skip names starting with ``_`` or ``.`` (markers, temporary files); so do we."""
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def scan_table(root: str, table: str) -> TableFiles:
    """Open every file of ``<root>/<table>`` and decode its contract columns once.

    Parameters
    ----------
    root : str
        The logs folder (local path or URI).
    table : str
        A contract table.

    Returns
    -------
    TableFiles
        Every file (hidden ``_``/``.`` names skipped), sorted by name, with its contract
        columns' types or the reason it cannot be read.

    Raises
    ------
    ValueError
        If ``table`` is not a contract table.
    FileNotFoundError
        If the folder does not exist or holds no files.
    """
    if table not in TABLES:
        raise ValueError(f"table must be one of {list(TABLES)}, got {table!r}")
    fs, base = _filesystem(root)
    folder = f"{base.rstrip('/')}/{table}"
    info = fs.get_file_info(folder)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"table {table}: no folder at {root.rstrip('/')}/{table}")
    entries = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    names = sorted(e.path[len(folder) + 1:] for e in entries if e.type == pafs.FileType.File)
    names = [n for n in names if not _hidden(n)]
    if not names:
        raise FileNotFoundError(f"table {table}: no Parquet data at {root.rstrip('/')}/{table}")
    wanted = TABLES[table].column_names
    files = []
    for name in names:
        rows: int | None = None
        try:
            with fs.open_input_file(f"{folder}/{name}") as handle:
                reader = pq.ParquetFile(handle)
                rows = reader.metadata.num_rows
                schema = reader.schema_arrow
                present = [c for c in wanted if c in schema.names]
                types = {c: str(schema.field(c).type) for c in present}
                for group in range(reader.num_row_groups):  # every page decodes, or the file is set aside
                    reader.read_row_group(group, columns=present)
        except Exception as exc:  # noqa: BLE001 - whatever a broken file raises, it is that file's reason
            reason = f"cannot read the file ({_first_line(exc)})"
            logger.warning("table %s: file %s set aside: %s", table, name, reason)
            files.append(LogFile(name=name, rows=rows, error=reason))
            continue
        files.append(LogFile(name=name, rows=rows, types=types))
    return TableFiles(table=table, root=root, files=tuple(files))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def _converted_batches(files: TableFiles, file: LogFile, raw_columns: tuple[str, ...]) -> Iterator[pa.Table]:
    """The file's rows, one row group at a time, with the contract's columns and types (all nullable),
    ``raw_<column>`` text for every column in ``raw_columns`` (null where this file holds the
    contract's type or no value) and ``source_file``."""
    spec = TABLES[files.table]
    schema = arrow_schema(files.table)
    retyped = set(files.retyped(file))
    fs, base = _filesystem(files.root)
    with fs.open_input_file(f"{base.rstrip('/')}/{files.table}/{file.name}") as handle:
        reader = pq.ParquetFile(handle)
        present = [c for c in spec.column_names if c in file.types]
        for group in range(reader.num_row_groups):
            part = reader.read_row_group(group, columns=present)
            n = part.num_rows
            arrays: dict[str, pa.Array] = {}
            raw: dict[str, pa.Array] = {}
            for col in spec.columns:
                target = schema.field(col.name).type
                if col.name not in file.types:
                    arrays[col.name] = pa.nulls(n, target)
                elif col.name not in retyped:
                    arrays[col.name] = part.column(col.name).combine_chunks()
                else:
                    # exact values: ints with nulls stay Python ints (not floats), dates stay objects
                    series = part.column(col.name).to_pandas(integer_object_nulls=True)
                    values, _ = coerce_values(series, col)
                    arrays[col.name] = pa.array(values, type=target, from_pandas=True)
                    present_mask = series.notna().to_numpy()
                    raw[col.name] = pa.array([_text(v) if ok else None
                                              for v, ok in zip(series.tolist(), present_mask, strict=True)],
                                             type=pa.string())
            columns = [arrays[c] for c in spec.column_names]
            columns += [raw.get(c, pa.nulls(n, pa.string())) for c in raw_columns]
            columns.append(pa.array([file.name] * n, type=pa.string()))
            yield pa.Table.from_arrays(columns, schema=read_schema(files.table, raw_columns))


def read_schema(table: str, raw_columns: tuple[str, ...]) -> pa.Schema:
    """The schema of converted rows: contract columns (nullable), ``raw_<column>`` text, ``source_file``."""
    fields = [f.with_nullable(True) for f in arrow_schema(table)]
    fields += [pa.field(f"{RAW_PREFIX}{c}", pa.string()) for c in raw_columns]
    fields.append(pa.field(SOURCE_FILE_COLUMN, pa.string()))
    return pa.schema(fields)


def raw_columns(files: TableFiles, among: tuple[LogFile, ...] | None = None) -> tuple[str, ...]:
    """The contract columns some of the files (default: every readable one) hold with another type, in contract order."""
    mistyped = {c for f in (files.readable if among is None else among) for c in files.retyped(f)}
    return tuple(c for c in TABLES[files.table].column_names if c in mistyped)


def read_files(files: TableFiles) -> pa.Table:
    """Every readable file's rows, converted (:func:`read_schema`), in file order."""
    raw = raw_columns(files)
    parts = [batch for f in files.readable for batch in _converted_batches(files, f, raw)]
    if not parts:
        return read_schema(files.table, raw).empty_table()
    return pa.concat_tables(parts)


def write_converted(files: TableFiles, out: str) -> tuple[str, tuple[str, ...]]:
    """Write converted copies of the readable files that do not match the contract to ``out``.

    Returns
    -------
    (str, tuple of str)
        The folder of the copies (one ``part-NNNNN.parquet`` per source file; the folder is
        emptied first and absent when no file needed converting) and the ``raw_`` columns
        they hold.
    """
    todo = tuple(f for f in files.readable if files.retyped(f))
    raw = raw_columns(files, todo)
    fs, path = _filesystem(out)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    if not todo:
        return out, raw
    fs.create_dir(path, recursive=True)
    schema = read_schema(files.table, raw)
    for i, f in enumerate(todo):
        with fs.open_output_stream(f"{path}/part-{i:05d}.parquet") as sink, pq.ParquetWriter(sink, schema) as writer:
            for batch in _converted_batches(files, f, raw):
                writer.write_table(batch)
        logger.info("table %s: file %s read with the contract's types (columns %s converted)", files.table, f.name,
                    list(files.retyped(f)))
    return out, raw


def validate_files(root: str, *, config: ValidationConfig | None = None,
                   tables: tuple[str, ...] = TABLE_ORDER) -> tuple[dict[str, ValidationResult], dict[str, TableFiles]]:
    """Read and validate the contract tables under ``root`` file by file, with the pandas validator.

    The rules are the ETL's (:mod:`features.quarantine`): tables present under ``root`` are
    validated together (:func:`features.validation.validate_logs`); quarantined rows carry
    ``source_file`` and the ``raw_`` text of mistyped values; unreadable files are listed in
    the returned :class:`TableFiles`. Tables without a folder are skipped.
    """
    scans: dict[str, TableFiles] = {}
    data: dict[str, pa.Table] = {}
    for name in tables:
        try:
            scans[name] = scan_table(root, name)
        except FileNotFoundError:
            continue
        data[name] = read_files(scans[name])
    absent = {name: scan.absent() for name, scan in scans.items()}
    results = validate_logs(data, config=config, absent=absent)
    return results, scans
