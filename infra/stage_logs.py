"""The logs a canary stage is judged on, and the request-metrics schema serving must write.

Three Parquet folders (part files; names starting with ``.`` or ``_`` are ignored, so a
writer's temporary files are never read):

* **impressions**: serving's impression log (:data:`serving.impression_log.LOG_SCHEMA`): the
  contract's ``impressions`` columns plus ``arm``, ``score``, ``request_key``. Used:
  ``impression_id``, ``ts``, ``user_id``, ``arm``, ``request_key``.
* **events**: the contract's ``events`` table (clicks and purchases, with ``impression_id``
  where they came from the feed). Used: ``ts``, ``type``, ``impression_id``, ``quantity``,
  ``price_paid``.
* **requests**: one row per ``RankFeed`` call, :data:`REQUEST_METRICS_SCHEMA`:

  ===============  =====================  ===================================================
  column           type                   meaning
  ===============  =====================  ===================================================
  request_key      string, required       ``RankFeedRequest.request_id``; the same value as the
                                          impression log's ``request_key``
  ts               timestamp[us, UTC]     when the call arrived
  user_id          int64, required        the buyer (the unit arms are assigned by)
  arm              string, required       ``champion`` or ``challenger``: the arm the router
                                          picked (calls rejected before routing are not logged,
                                          or logged with another value and ignored)
  model_version    string, nullable       bundle version that served the call
  latency_ms       float64, required      server-side wall time of the call, from receipt to
                                          the response (or error) being built, in ms; the same
                                          number as the access log's ``latency_ms``
  error            bool, required         the call failed on the server side: its gRPC status
                                          is not OK and not INVALID_ARGUMENT (so timeouts,
                                          INTERNAL, UNAVAILABLE count; a client's bad request
                                          does not)
  status_code      string, nullable       gRPC status code name (``OK``, ``INTERNAL``, ...)
  ===============  =====================  ===================================================

  Every call is logged, failed ones included: GMV per request divides by *all* of an arm's
  requests, so a challenger that errors loses GMV for it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from serving.impression_log import REQUEST_METRICS_SCHEMA  # the schema serving writes

__all__ = ["REQUEST_METRICS_SCHEMA", "StageLogs", "StageLogsError", "read_stage_logs"]

logger = logging.getLogger(__name__)


IMPRESSION_COLUMNS = ("impression_id", "ts", "user_id", "arm", "request_key")
EVENT_COLUMNS = ("ts", "type", "impression_id", "quantity", "price_paid")
REQUEST_COLUMNS = ("request_key", "ts", "user_id", "arm", "latency_ms", "error")


class StageLogsError(ValueError):
    """A log folder or table lacks a column the stage evaluation needs."""


def _check_columns(frame: pd.DataFrame, required: tuple[str, ...], name: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise StageLogsError(f"{name} log must have columns {list(required)}, missing {missing}")


@dataclass(frozen=True, eq=False)
class StageLogs:
    """The three logs of one evaluation window, as DataFrames (see the module docstring).

    Parameters
    ----------
    impressions : DataFrame
        At least :data:`IMPRESSION_COLUMNS`.
    events : DataFrame
        At least :data:`EVENT_COLUMNS`.
    requests : DataFrame
        At least :data:`REQUEST_COLUMNS`.

    Raises
    ------
    StageLogsError
        If a frame lacks a required column.
    """

    impressions: pd.DataFrame
    events: pd.DataFrame
    requests: pd.DataFrame

    def __post_init__(self) -> None:
        for frame, cols, name in ((self.impressions, IMPRESSION_COLUMNS, "impressions"),
                                  (self.events, EVENT_COLUMNS, "events"),
                                  (self.requests, REQUEST_COLUMNS, "requests")):
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
            _check_columns(frame, cols, name)

    def window(self, start: datetime, end: datetime) -> StageLogs:
        """Impressions and requests with ``start <= ts < end``; events with ``start <= ts < end``."""
        lo, hi = pd.Timestamp(start), pd.Timestamp(end)

        def cut(frame: pd.DataFrame) -> pd.DataFrame:
            ts = pd.to_datetime(frame["ts"], utc=True)
            return frame.loc[(ts >= lo) & (ts < hi)]

        return StageLogs(impressions=cut(self.impressions), events=cut(self.events), requests=cut(self.requests))


def _read_folder(path: Path, columns: tuple[str, ...], name: str, start: datetime, end: datetime,
                 extra_filter: object = None) -> pd.DataFrame:
    import pyarrow.dataset as ds

    if not path.is_dir():
        logger.info("%s log folder %s does not exist yet: no rows", name, path)
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    dataset = ds.dataset(path, format="parquet")
    if not dataset.files:  # a server created the folder but has not completed a file yet
        logger.info("%s log folder %s has no complete file yet: no rows", name, path)
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise StageLogsError(f"{name} log at {path} must have columns {list(columns)}, missing {missing}")
    ts_type = dataset.schema.field("ts").type
    lo, hi = pa.scalar(start, type=ts_type), pa.scalar(end, type=ts_type)
    flt = (ds.field("ts") >= lo) & (ds.field("ts") < hi)
    if extra_filter is not None:
        flt = flt & extra_filter
    return dataset.to_table(columns=list(columns), filter=flt).to_pandas()


def read_stage_logs(*, impressions_dir: str | os.PathLike[str], events_dir: str | os.PathLike[str],
                    requests_dir: str | os.PathLike[str], start: datetime, end: datetime) -> StageLogs:
    """Read the rows of ``[start, end)`` from the three Parquet folders (filters pushed down).

    Only feed-attributed clicks and purchases are read from the events. A folder that does not
    exist yet, or holds no complete file yet, gives an empty table (the evaluation then holds
    for lack of data).

    Raises
    ------
    StageLogsError
        If a folder's files lack a required column.
    """
    import pyarrow.dataset as ds

    feed_events = ds.field("type").isin(["click", "purchase"]) & ~ds.field("impression_id").is_null()
    return StageLogs(
        impressions=_read_folder(Path(impressions_dir), IMPRESSION_COLUMNS, "impressions", start, end),
        events=_read_folder(Path(events_dir), EVENT_COLUMNS, "events", start, end, feed_events),
        requests=_read_folder(Path(requests_dir), REQUEST_COLUMNS, "requests", start, end),
    )
