"""The consumer's window state: a SQLite file that survives crashes, restarts and broker loss.

What lives here
---------------
- ``obs``: every impression and event of the last ``24 h + allowed_lateness`` by event time,
  keyed by ``(source table, id)``. It is the de-duplication set (a redelivered or
  re-published row hits the primary key and changes nothing) and the record of which rows
  leave a window when the watermark moves.
- ``user_counts`` / ``item_counts``: the rolling counts, kept incrementally. When the
  watermark moves from ``W`` to ``W'``, a count of window ``w`` gains the new rows with
  ``ts > W' - w`` and loses the stored rows with ``W - w < ts <= W' - w``; so a batch costs
  what it touches, not the window's size.
- ``user_day``: each user's intraday counters (the ``user_realtime`` row), updated only by
  rows that were new.
- ``meta``: the watermark (latest event time applied), the "as of" time of the rolling counts;
- ``sources``: the latest event time of each source partition. Rows more than ``24 h +
  allowed_lateness`` behind the *slowest* active partition are late (dropped, and pruned from
  ``obs``), so reading a backlog whose partitions progress unevenly loses nothing.

Why a local file and not a replay of the topic: a restarted consumer is ready at once,
whatever the topic's retention; the local broker keeps messages in memory only, so after
its restart there is nothing to replay; and the state is keyed by entity, not by
partition, so a rebalance needs no state transfer between consumers sharing the file.

One batch is one transaction (:meth:`WindowStore.apply`): rows are inserted and the rows to
push are computed inside it, the caller pushes them, and only then does the transaction
commit; a failed push rolls it back. So the stored state never runs ahead of the online
store, and a crash at any point leaves either nothing or everything of the batch.
``BEGIN IMMEDIATE`` serialises batches of consumers that share the file, and with them
their pushes.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.stream.windows import (
    CART,
    CLICK,
    DAY_US,
    INTRADAY_COLUMNS,
    ITEM_ROLLING,
    OBS_COLUMNS,
    PURCHASE,
    USER_ROLLING,
    VIEW,
    RollingCount,
    max_window_us,
)

__all__ = ["FeatureUpdate", "WindowStore"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS obs (
    src INTEGER NOT NULL, id INTEGER NOT NULL, kind INTEGER NOT NULL, ts INTEGER NOT NULL,
    user_id INTEGER NOT NULL, item_id INTEGER NOT NULL, PRIMARY KEY (src, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS obs_ts ON obs (ts);
CREATE TABLE IF NOT EXISTS user_day (
    user_id INTEGER PRIMARY KEY, day INTEGER NOT NULL, views INTEGER NOT NULL, clicks INTEGER NOT NULL,
    carts INTEGER NOT NULL, purchases INTEGER NOT NULL, last_view_us INTEGER, last_event_us INTEGER,
    last_ts_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS sources (source TEXT PRIMARY KEY, max_ts INTEGER, seen_at REAL NOT NULL);
"""
_ENTITIES: tuple[tuple[str, tuple[RollingCount, ...]], ...] = (("user_id", USER_ROLLING), ("item_id", ITEM_ROLLING))


def _counts_table(col: str) -> str:
    return f"{col.removesuffix('_id')}_counts"


def _layout() -> str:
    """What the state's tables hold; a state file written for other features is refused."""
    feats = ",".join(f"{f.name}:{f.kind}:{f.window_s}" for _, fs in _ENTITIES for f in fs)
    return f"v1|{feats}"


_DAY_COLS = ("views", "clicks", "carts", "purchases")
_NULLABLE = ("rt_last_view_us", "rt_last_event_us")


@dataclass(frozen=True)
class FeatureUpdate:
    """The rows one batch changes in the online store.

    Attributes
    ----------
    user_rolling, item_rolling : DataFrame
        ``<entity>_id``, ``event_timestamp`` (the watermark) and the rolling counts of
        :data:`~features.stream.windows.USER_ROLLING` / ``ITEM_ROLLING``.
    user_intraday : DataFrame
        ``user_id``, ``event_timestamp`` (latest activity + 1 us) and ``INTRADAY_COLUMNS``.
    new, duplicates, late : int
        Rows applied for the first time, rows already applied, rows too old to count.
    watermark_us : int or None
        The watermark after the batch.
    """

    user_rolling: pd.DataFrame
    item_rolling: pd.DataFrame
    user_intraday: pd.DataFrame
    new: int
    duplicates: int
    late: int
    watermark_us: int | None

    @property
    def n_rows(self) -> int:
        """Rows to push, over all three views."""
        return len(self.user_rolling) + len(self.item_rolling) + len(self.user_intraday)


class WindowStore:
    """The window state in one SQLite file (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The SQLite file; its folder is created by :meth:`open`.
    allowed_lateness_s : float
        Rows more than ``24 h + allowed_lateness_s`` older than the slowest active source
        partition's latest event are dropped as late, and pruned from the state.
    idle_partition_s : float
        Wall-clock seconds after which a partition without data stops holding that limit back.
    """

    def __init__(self, path: str | Path, *, allowed_lateness_s: float = 3600.0,
                 idle_partition_s: float = 60.0) -> None:
        self.path = Path(path)
        self.allowed_lateness_s = allowed_lateness_s
        self.idle_partition_s = idle_partition_s
        self._conn: sqlite3.Connection | None = None

    @property
    def horizon_us(self) -> int:
        """How far behind the watermark a row still counts."""
        return max_window_us() + int(self.allowed_lateness_s * 1_000_000)

    def open(self) -> WindowStore:
        """Open (creating if needed) the state file; returns ``self``."""
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=60.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            for col, feats in _ENTITIES:
                cols = ", ".join(f"{f.name} INTEGER NOT NULL" for f in feats)
                conn.execute(f"CREATE TABLE IF NOT EXISTS {_counts_table(col)} ({col} INTEGER PRIMARY KEY, {cols})")
            conn.execute("INSERT INTO meta VALUES ('layout', ?) ON CONFLICT(key) DO NOTHING", (_layout(),))
            stored = conn.execute("SELECT value FROM meta WHERE key = 'layout'").fetchone()[0]
            if stored != _layout():
                conn.close()
                raise ValueError(f"{self.path} holds state for other features ({stored!r}); move it away and "
                                 "let the consumer rebuild it from the topics")
            self._conn = conn
        return self

    def close(self) -> None:
        """Close the file (state on disk is kept)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> WindowStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("WindowStore is not open; call open() first")
        return self._conn

    @property
    def watermark_us(self) -> int | None:
        """The latest event time applied, or None for an empty state."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'watermark_us'").fetchone()
        return None if row is None else int(row[0])

    def n_rows(self) -> int:
        """Rows currently held in the window."""
        return int(self.conn.execute("SELECT COUNT(*) FROM obs").fetchone()[0])

    @contextmanager
    def apply(self, obs: pd.DataFrame, *, sources: Mapping[str, int | None] | None = None,
              now: float | None = None) -> Iterator[FeatureUpdate]:
        """Apply a batch of observations and yield the rows to push; commit when the block succeeds.

        Parameters
        ----------
        obs : DataFrame with :data:`~features.stream.windows.OBS_COLUMNS` (int64)
        sources : mapping of str to (int or None), optional
            The latest event time of the batch in each source partition (``"topic/partition"``);
            None announces a partition just assigned, whose data has not arrived yet.
            Lateness is judged against the slowest active partition, so a partition that lags
            behind while a backlog is read loses nothing; without ``sources`` the batch is
            one partition.
        now : float, optional
            Wall clock in seconds (``time.time()``): a partition without data for
            ``idle_partition_s`` no longer holds lateness back.

        Yields
        ------
        FeatureUpdate
            Push it inside the block; an exception in the block rolls the batch back.
        """
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            update = self._stage(conn, obs, dict(sources or {}), time.time() if now is None else now)
            yield update
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ------------------------------------------------------------------ inside the transaction
    def _stage(self, conn: sqlite3.Connection, obs: pd.DataFrame, sources: dict[str, int | None],
               now: float) -> FeatureUpdate:
        old_wm = self.watermark_us
        batch_max = int(obs["ts_us"].max()) if len(obs) else None
        new_wm = old_wm if batch_max is None else batch_max if old_wm is None else max(old_wm, batch_max)
        # Lateness is judged against the slowest partition *before* this batch (a batch may span
        # more than the horizon of one partition); pruning against the one after it.
        late_wm = self._low_watermark(conn, now, old_wm) if sources else old_wm
        # A partition announced without data holds lateness back (NULL) until it has data or
        # stays idle for idle_partition_s.
        conn.executemany("INSERT INTO sources VALUES (?, NULL, ?) ON CONFLICT(source) DO NOTHING",
                         [(name, now) for name, ts in sources.items() if ts is None])
        conn.executemany(
            "INSERT INTO sources VALUES (?, ?, ?) ON CONFLICT(source) DO UPDATE SET "
            "max_ts = MAX(COALESCE(max_ts, excluded.max_ts), excluded.max_ts), seen_at = excluded.seen_at",
            [(name, int(ts), now) for name, ts in sources.items() if ts is not None])
        low_wm = self._low_watermark(conn, now, new_wm) if sources else new_wm
        conn.execute("DROP TABLE IF EXISTS temp.batch")
        conn.execute("CREATE TEMP TABLE batch (src INTEGER, id INTEGER, kind INTEGER, ts INTEGER, user_id INTEGER, "
                     "item_id INTEGER, PRIMARY KEY (src, id))")
        late = 0
        if len(obs):
            cut = np.iinfo(np.int64).min if late_wm is None else late_wm - self.horizon_us
            keep = obs["ts_us"].to_numpy() > cut
            late = int((~keep).sum())
            kept = obs.loc[keep]
            # tolist() gives Python ints: sqlite3 would bind numpy integers as blobs
            conn.executemany("INSERT OR IGNORE INTO temp.batch VALUES (?, ?, ?, ?, ?, ?)",
                             zip(*(kept[c].to_numpy(dtype=np.int64).tolist() for c in OBS_COLUMNS), strict=True))
        new = self._columns(conn.execute(
            "SELECT b.src, b.id, b.kind, b.ts, b.user_id, b.item_id FROM temp.batch b "
            "WHERE NOT EXISTS (SELECT 1 FROM obs o WHERE o.src = b.src AND o.id = b.id)").fetchall(), OBS_COLUMNS)
        duplicates = len(obs) - late - len(new["id"])
        if new_wm is None:  # nothing ever arrived
            return FeatureUpdate(_empty("user_id", USER_ROLLING), _empty("item_id", ITEM_ROLLING),
                                 _empty_intraday(), 0, duplicates, late, None)
        # Stored rows that leave window w as the watermark moves: W - w < ts <= W' - w.
        leaving: dict[int, dict[str, np.ndarray]] = {}
        if old_wm is not None and new_wm > old_wm:
            for w in sorted({f.window_us for _, feats in _ENTITIES for f in feats}):
                leaving[w] = self._columns(conn.execute(
                    "SELECT kind, user_id, item_id FROM obs WHERE ts > ? AND ts <= ?",
                    (old_wm - w, new_wm - w)).fetchall(), ("kind", "user_id", "item_id"))
        conn.execute("INSERT INTO obs SELECT b.* FROM temp.batch b "
                     "WHERE NOT EXISTS (SELECT 1 FROM obs o WHERE o.src = b.src AND o.id = b.id)")
        batch_keys = self._columns(conn.execute("SELECT user_id, item_id FROM temp.batch").fetchall(),
                                 ("user_id", "item_id"))
        parts = {}
        for col, feats in _ENTITIES:
            self._add_counts(conn, col, feats, new, leaving, new_wm)
            keys = np.unique(np.concatenate([batch_keys[col]] + [gone[col] for gone in leaving.values()]))
            parts[col] = self._read_counts(conn, col, feats, keys, new_wm)
        self._update_days(conn, new)
        update = FeatureUpdate(
            user_rolling=parts["user_id"], item_rolling=parts["item_id"],
            user_intraday=self._intraday(conn, np.unique(batch_keys["user_id"])),
            new=len(new["id"]), duplicates=duplicates, late=late, watermark_us=new_wm)
        conn.execute("INSERT INTO meta VALUES ('watermark_us', ?) "
                     "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (new_wm,))
        if low_wm is not None:
            conn.execute("DELETE FROM obs WHERE ts <= ?", (low_wm - self.horizon_us,))
        conn.execute("DROP TABLE temp.batch")
        return update

    @staticmethod
    def _columns(rows: list[tuple], names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Query rows as one int64 array per column."""
        data = np.asarray(rows, dtype=np.int64).reshape(len(rows), len(names))
        return {n: data[:, i] for i, n in enumerate(names)}

    @staticmethod
    def _add_counts(conn: sqlite3.Connection, col: str, feats: tuple[RollingCount, ...],
                    new: dict[str, np.ndarray], leaving: dict[int, dict[str, np.ndarray]], wm: int) -> None:
        """Add the new rows inside each window and subtract the stored rows that left it."""
        ids, feat, sign = [], [], []
        for j, f in enumerate(feats):
            plus = new[col][(new["kind"] == f.kind) & (new["ts_us"] > wm - f.window_us)]
            ids.append(plus)
            feat.append(np.full(len(plus), j))
            sign.append(np.ones(len(plus), dtype=np.int64))
            gone = leaving.get(f.window_us)
            if gone is not None:
                minus = gone[col][gone["kind"] == f.kind]
                ids.append(minus)
                feat.append(np.full(len(minus), j))
                sign.append(-np.ones(len(minus), dtype=np.int64))
        all_ids = np.concatenate(ids)
        if not len(all_ids):
            return
        keys, row = np.unique(all_ids, return_inverse=True)
        delta = np.zeros((len(keys), len(feats)), dtype=np.int64)
        np.add.at(delta, (row, np.concatenate(feat)), np.concatenate(sign))
        changed = delta.any(axis=1)
        names = [f.name for f in feats]
        conn.executemany(
            f"INSERT INTO {_counts_table(col)} ({col}, {', '.join(names)}) VALUES ({', '.join('?' * (len(names) + 1))}) "
            f"ON CONFLICT({col}) DO UPDATE SET {', '.join(f'{n} = {n} + excluded.{n}' for n in names)}",
            np.column_stack([keys[changed], delta[changed]]).tolist())

    def _read_counts(self, conn: sqlite3.Connection, col: str, feats: tuple[RollingCount, ...], keys: np.ndarray,
                     wm: int) -> pd.DataFrame:
        if not len(keys):
            return _empty(col, feats)
        names = [f.name for f in feats]
        self._with_keys(conn, keys)
        table = _counts_table(col)
        rows = conn.execute(f"SELECT {col}, {', '.join(names)} FROM {table} "
                            f"WHERE {col} IN (SELECT k FROM temp.keys)").fetchall()
        conn.execute(f"DELETE FROM {table} WHERE {col} IN (SELECT k FROM temp.keys) AND "
                     + " AND ".join(f"{n} = 0" for n in names))
        found = self._columns(rows, (col, *names))
        values = np.zeros((len(keys), len(names)), dtype=np.int64)
        at = np.searchsorted(keys, found[col])  # keys are sorted and unique
        for j, n in enumerate(names):
            values[at, j] = found[n]
        out = pd.DataFrame(values, columns=names)
        out.insert(0, col, keys)
        out.insert(1, "event_timestamp", pd.Timestamp(wm, unit="us", tz="UTC"))
        return out

    def _low_watermark(self, conn: sqlite3.Connection, now: float, high: int | None) -> int | None:
        """The latest event time of the slowest partition with data in the last ``idle_partition_s``
        (None while an announced partition has no data yet), at most ``high``."""
        total, with_data, low = conn.execute(
            "SELECT COUNT(*), COUNT(max_ts), MIN(max_ts) FROM sources WHERE seen_at >= ?",
            (now - self.idle_partition_s,)).fetchone()
        if total > with_data or high is None:
            return None
        return high if low is None else min(int(low), high)

    @staticmethod
    def _with_keys(conn: sqlite3.Connection, keys: np.ndarray) -> None:
        conn.execute("DROP TABLE IF EXISTS temp.keys")
        conn.execute("CREATE TEMP TABLE keys (k INTEGER PRIMARY KEY)")
        conn.executemany("INSERT INTO temp.keys VALUES (?)", ((k,) for k in keys.tolist()))

    def _intraday(self, conn: sqlite3.Connection, users: np.ndarray) -> pd.DataFrame:
        if not len(users):
            return _empty_intraday()
        self._with_keys(conn, users)
        rows = conn.execute("SELECT user_id, last_ts_us, day, views, clicks, carts, purchases, last_view_us, "
                            "last_event_us FROM user_day WHERE user_id IN (SELECT k FROM temp.keys) "
                            "ORDER BY user_id").fetchall()
        frame = pd.DataFrame(rows, columns=["user_id", "_last_ts", *INTRADAY_COLUMNS])
        out = pd.DataFrame({"user_id": frame["user_id"].astype(np.int64),
                            "event_timestamp": pd.to_datetime(frame["_last_ts"].astype(np.int64) + 1, unit="us",
                                                              utc=True)})
        for c in INTRADAY_COLUMNS:
            # nullable Int64 only where nulls occur: Feast converts it about 3x slower than int64
            out[c] = frame[c].astype("Int64" if c in _NULLABLE else np.int64)
        return out

    @staticmethod
    def _update_days(conn: sqlite3.Connection, new: dict[str, np.ndarray]) -> None:
        """Fold new rows into each user's intraday counters (rows of an older day than the
        user's latest activity change only the last-seen times)."""
        if not len(new["id"]):
            return
        users, row = np.unique(new["user_id"], return_inverse=True)
        WindowStore._with_keys(conn, users)
        # old state aligned with users; -1 marks "none" (contract timestamps are positive)
        old = np.full((len(users), 8), -1, dtype=np.int64)
        stored = conn.execute(
            "SELECT user_id, day, views, clicks, carts, purchases, COALESCE(last_view_us, -1), "
            "COALESCE(last_event_us, -1), last_ts_us FROM user_day WHERE user_id IN (SELECT k FROM temp.keys)"
        ).fetchall()
        if stored:
            arr = np.asarray(stored, dtype=np.int64)
            old[np.searchsorted(users, arr[:, 0])] = arr[:, 1:]
        day_row = new["ts_us"] // DAY_US
        day = old[:, 0].copy()
        np.maximum.at(day, row, day_row)
        counts = np.where((old[:, 0] == day)[:, None], old[:, 1:5], 0)
        on_day = day_row == day[row]
        for j, kind in enumerate((VIEW, CLICK, CART, PURCHASE)):
            hit = on_day & (new["kind"] == kind)
            np.add.at(counts[:, j], row[hit], 1)
        last_view, last_event, last_ts = old[:, 5].copy(), old[:, 6].copy(), old[:, 7].copy()
        view = new["kind"] == VIEW
        np.maximum.at(last_view, row[view], new["ts_us"][view])
        np.maximum.at(last_event, row[~view], new["ts_us"][~view])
        np.maximum.at(last_ts, row, new["ts_us"])
        conn.executemany(
            "INSERT OR REPLACE INTO user_day VALUES (?, ?, ?, ?, ?, ?, NULLIF(?, -1), NULLIF(?, -1), ?)",
            np.column_stack([users, day, counts, last_view, last_event, last_ts]).tolist())


def _empty(col: str, feats: tuple[RollingCount, ...]) -> pd.DataFrame:
    frame = pd.DataFrame({col: np.empty(0, dtype=np.int64),
                          "event_timestamp": pd.Series([], dtype="datetime64[us, UTC]")})
    for f in feats:
        frame[f.name] = np.empty(0, dtype=np.int64)
    return frame


def _empty_intraday() -> pd.DataFrame:
    frame = pd.DataFrame({"user_id": np.empty(0, dtype=np.int64),
                          "event_timestamp": pd.Series([], dtype="datetime64[us, UTC]")})
    for c in INTRADAY_COLUMNS:
        frame[c] = pd.Series([], dtype="Int64" if c in _NULLABLE else np.int64)
    return frame
