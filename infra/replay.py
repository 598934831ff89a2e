"""Replay logged impressions and events as a live stream (``feedrank stream replay``).

Rows of both tables are merged in event-time order and published as they would have
happened: with ``speedup`` s the gap between two rows is their event-time gap divided by
``speedup`` (``speedup=3600`` plays an hour per second); without it rows go out as fast as
the producer takes them. Event times are kept as logged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from features.config import parse_utc
from features.stream.producer import EventPublisher

__all__ = ["ReplayReport", "load_replay", "replay_logs"]

logger = logging.getLogger(__name__)

_TABLES = ("impressions", "events")


@dataclass(frozen=True)
class ReplayReport:
    """What a replay published."""

    rows: dict[str, int]
    seconds: float
    first_ts: str | None
    last_ts: str | None

    @property
    def rows_per_second(self) -> float:
        return sum(self.rows.values()) / max(self.seconds, 1e-9)


def load_replay(log_dir: str | Path, *, start: str | None = None, end: str | None = None,
                limit: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Read impressions and events in ``[start, end)`` and merge them in event-time order.

    Returns
    -------
    impressions, events : DataFrame
        Contract rows, each in its own time order.
    order : ndarray of int64
        The merged order (the first ``limit`` rows of it): values below ``len(impressions)``
        index impressions, the rest ``len(impressions) + i`` index events.

    Raises
    ------
    FileNotFoundError
        If ``log_dir`` holds neither table.
    """
    root = Path(log_dir)
    if not any((root / t).is_dir() for t in _TABLES):
        raise FileNotFoundError(f"{root} holds neither impressions/ nor events/ (write logs with `feedrank simulate`)")
    frames: list[pd.DataFrame | None] = []
    for table in _TABLES:
        if not (root / table).is_dir():
            frames.append(None)
            continue
        data = ds.dataset(root / table, format="parquet")
        cond = None
        ts_type = data.schema.field("ts").type
        for bound, op in ((start, pc.greater_equal), (end, pc.less)):
            if bound:
                c = op(pc.field("ts"), pa.scalar(parse_utc(bound, "start" if op is pc.greater_equal else "end"),
                                                 ts_type))
                cond = c if cond is None else cond & c
        frame = data.to_table(filter=cond).to_pandas()
        frames.append(frame.sort_values("ts", kind="stable").reset_index(drop=True))
    imp = frames[0] if frames[0] is not None else pd.DataFrame({"ts": pd.Series([], dtype="datetime64[us, UTC]")})
    ev = frames[1] if frames[1] is not None else pd.DataFrame({"ts": pd.Series([], dtype="datetime64[us, UTC]")})
    ts = np.concatenate([_micros(imp["ts"]), _micros(ev["ts"])])
    order = np.argsort(ts, kind="stable")
    return imp, ev, order if limit is None else order[:limit]


def _micros(ts: pd.Series) -> np.ndarray:
    return pd.to_datetime(ts, utc=True).astype("datetime64[us, UTC]").astype("int64").to_numpy()


def replay_logs(log_dir: str | Path, publisher: EventPublisher, *, speedup: float | None = None,
                start: str | None = None, end: str | None = None, limit: int | None = None,
                chunk_rows: int = 5000, progress_seconds: float = 10.0,
                stop: threading.Event | None = None) -> ReplayReport:
    """Publish logged rows in event-time order, paced by ``speedup``.

    Parameters
    ----------
    log_dir : path
        A folder of contract tables (``impressions/``, ``events/``).
    publisher : EventPublisher
        Open; flushed at the end.
    speedup : float, optional
        Event-time seconds played per wall-clock second; None or 0 for as fast as possible.
    start, end : str, optional
        ISO-8601 bounds of the period, ``[start, end)``.
    limit : int, optional
        Publish only the first ``limit`` rows (in event-time order).
    chunk_rows : int
        Most rows handed to the producer at once.
    progress_seconds : float
        Interval of progress log lines; 0 turns them off.
    stop : threading.Event, optional
        Set it to stop early (what was sent is flushed).

    Raises
    ------
    ValueError
        If ``speedup`` is negative.
    """
    if speedup is not None and speedup < 0:
        raise ValueError(f"speedup must be >= 0, got {speedup!r}")
    stop = stop or threading.Event()
    imp, ev, order = load_replay(log_dir, start=start, end=end, limit=limit)
    n_imp = len(imp)
    ts = np.concatenate([_micros(imp["ts"]), _micros(ev["ts"])])[order]
    begin = time.monotonic()
    target = (ts - ts[0]) / 1e6 / speedup if speedup and len(ts) else np.zeros(len(ts))
    sent = {"impressions": 0, "events": 0}
    last_log = begin
    i = 0
    while i < len(order) and not stop.is_set():
        elapsed = time.monotonic() - begin
        j = min(int(np.searchsorted(target, elapsed, side="right")), i + chunk_rows)
        if j <= i:
            stop.wait(min(target[i] - elapsed, 0.5))
            continue
        rows = order[i:j]
        imp_rows, ev_rows = rows[rows < n_imp], rows[rows >= n_imp] - n_imp
        if len(imp_rows):
            sent["impressions"] += publisher.publish("impressions", imp.iloc[imp_rows])
        if len(ev_rows):
            sent["events"] += publisher.publish("events", ev.iloc[ev_rows])
        i = j
        now = time.monotonic()
        if progress_seconds and now - last_log >= progress_seconds:
            logger.info("replay: %s of %s rows (%s/s), event time %s", f"{i:,}", f"{len(order):,}",
                        f"{i / (now - begin):,.0f}", pd.Timestamp(int(ts[i - 1]), unit="us", tz="UTC").isoformat())
            last_log = now
    publisher.flush()
    first = pd.Timestamp(int(ts[0]), unit="us", tz="UTC").isoformat() if len(ts) else None
    last = pd.Timestamp(int(ts[i - 1]), unit="us", tz="UTC").isoformat() if i else None
    return ReplayReport(rows=sent, seconds=time.monotonic() - begin, first_ts=first, last_ts=last)
