"""Request-time feature assembly: the user's rows, the candidates' snapshot rows, the request.

The ranker's feature vector for (request, user, item) is built exactly as the ETL built its
training rows: user snapshot features (``f_user_*``), item and seller snapshot features
(``f_item_*``, ``f_seller_*``), and the request-time features that
:func:`features.derived.derived_features` computes, the same formulas the ETL applied
(through their array core, :func:`features.derived.derived_matrix`). Only
the user's rows are read online (Feast); item rows come from the in-memory snapshot.

Fallbacks (DESIGN.md): online store down or failing -> the user's row from the bundle's
snapshot (``online_store`` in the response's fallbacks); a user unknown to both -> no row
(features are NaN, which the models were trained with for users without history).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

import numpy as np
import pandas as pd

from features.derived import (
    DERIVED_FEATURES,
    ITEM_INPUTS,
    REALTIME_INPUTS,
    derived_matrix,
    device_code,
)

__all__ = ["FeastUserFeatures", "FeatureAssembler", "RateLimitedLog", "SnapshotUserFeatures", "UserFeatureSource",
           "UserRows"]

logger = logging.getLogger(__name__)

# Back-off of the online store after a failed or late read: doubles from the first to the second.
_BACKOFF_MIN_SECONDS = 0.25
_BACKOFF_MAX_SECONDS = 2.0

UserRows = tuple[dict[str, Any] | None, dict[str, Any] | None, tuple[str, ...]]


class UserFeatureSource(Protocol):
    """Where a user's snapshot and intraday (real-time) feature rows come from."""

    def user_rows(self, user_id: int) -> UserRows:
        """``(snapshot_row, realtime_row, fallbacks)``; a row is None when the user has none."""
        ...


class SnapshotUserFeatures:
    """User rows from an in-memory table (the bundle's latest ``user_features`` snapshot).

    Parameters
    ----------
    table : DataFrame
        One row per user, a ``user_id`` column and the feature and auxiliary columns.
    """

    def __init__(self, table: pd.DataFrame) -> None:
        self._columns = [c for c in table.columns if c != "user_id"]
        values = table[self._columns].to_numpy(dtype=np.float64, na_value=np.nan)
        self._rows = {int(u): values[i] for i, u in enumerate(table["user_id"].to_numpy())}

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def user_ids(self) -> np.ndarray:
        """The users the table holds, shape (n,), int64."""
        return np.fromiter(self._rows, dtype=np.int64, count=len(self._rows))

    def snapshot_row(self, user_id: int) -> dict[str, Any] | None:
        values = self._rows.get(int(user_id))
        return None if values is None else dict(zip(self._columns, values.tolist(), strict=True))

    def user_rows(self, user_id: int) -> UserRows:
        return self.snapshot_row(user_id), None, ()


class FeastUserFeatures:
    """User rows from Feast's online store, falling back to a snapshot when the store fails.

    Parameters
    ----------
    store : feast.FeatureStore
    snapshot_refs : list of str
        Feature references of the user snapshot view (``"<view>:<feature>"``).
    realtime_refs : list of str
        Feature references of the real-time (push source) view; may be empty.
    fallback : SnapshotUserFeatures
    timeout_seconds : float, default 0.025
        How long a request waits for its online read before it takes the snapshot fallback.

    A real :class:`feast.FeatureStore` is read through its online store's ``online_read``
    (:class:`_OnlineReader`), the call ``get_online_features`` makes once per feature view:
    the same rows and values, without ~0.9 ms per request of request planning and response
    building around it. Any other store object is called through ``get_online_features``.

    A store that is locked, missing or broken must cost a request no more than its budget:
    reads run on one reader thread and the request waits ``timeout_seconds`` at most. While a
    late read is still running no other is started (those requests take the fallback at once);
    after a failed read (at once, or late) the store is left alone for a back-off (0.25 s,
    doubling to 2 s, reset by a good read; every request meanwhile takes the fallback, counted
    as ``online_store``). A failed read drops the online store's connection, so the next one
    re-opens it (a replaced SQLite file is read again without a restart). Repeated identical
    errors are logged once per minute with their count.
    """

    def __init__(self, store: Any, *, snapshot_refs: list[str], realtime_refs: list[str],
                 fallback: SnapshotUserFeatures, timeout_seconds: float = 0.025) -> None:
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds!r}")
        self.store = store
        self.snapshot_refs = snapshot_refs
        self.realtime_refs = realtime_refs
        self.fallback = fallback
        self.timeout_seconds = float(timeout_seconds)
        self._snapshot_names = [ref.split(":", 1)[1] for ref in snapshot_refs]
        self._realtime_names = [ref.split(":", 1)[1] for ref in realtime_refs]
        self._reader = _OnlineReader.create(store, snapshot_refs + realtime_refs,
                                            busy_timeout_ms=max(1, round(1000 * self.timeout_seconds)))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-store")
        self._lock = threading.Lock()
        self._busy: Future | None = None  # a read still running after its caller gave up on it
        self._closed_until = 0.0  # monotonic time before which the store is not asked
        self._backoff = _BACKOFF_MIN_SECONDS
        self._errors = RateLimitedLog(logger, interval_seconds=60.0)

    def _read(self, user_id: int) -> dict[str, Any]:
        """Feature name -> value (None where the store holds none) for every reference."""
        if self._reader is not None:
            return self._reader.read(user_id)
        got = self.store.get_online_features(features=self.snapshot_refs + self.realtime_refs,
                                             entity_rows=[{"user_id": int(user_id)}]).to_dict()
        return {name: got[name][0] for name in (*self._snapshot_names, *self._realtime_names)}

    def _read_in_time(self, user_id: int) -> dict[str, Any] | None:
        """The store's row, or None when the store is backing off, busy, failing or late (logged)."""
        now = time.monotonic()
        with self._lock:
            if now < self._closed_until or (self._busy is not None and not self._busy.done()):
                return None
            future = self._pool.submit(self._read, user_id)
        try:
            got = future.result(timeout=self.timeout_seconds)
        except FutureTimeout:  # late: no other read starts until it ends; if it then fails, the store backs off
            with self._lock:
                self._busy = future
            future.add_done_callback(self._late_read_done)
            self._errors.warning(f"online store read took more than {1000 * self.timeout_seconds:g} ms",
                                 "; the bundle snapshot serves user rows meanwhile")
            return None
        except Exception as exc:  # any failure of the online store takes the defined fallback
            self._failed(exc)
            return None
        with self._lock:
            self._backoff = _BACKOFF_MIN_SECONDS
        return got

    def _late_read_done(self, future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """Back off (doubling), drop the connection and log (rate-limited) after a failed read."""
        with self._lock:
            self._closed_until = time.monotonic() + self._backoff
            backoff, self._backoff = self._backoff, min(2 * self._backoff, _BACKOFF_MAX_SECONDS)
        if self._reader is not None:
            self._reader.reconnect()
        self._errors.warning(f"online store read failed: {type(exc).__name__}: {exc}",
                             f"; the bundle snapshot serves user rows, the store is asked again in {backoff:g} s",
                             exc=exc)

    def user_rows(self, user_id: int) -> UserRows:
        got = self._read_in_time(user_id)
        if got is None:
            return self.fallback.snapshot_row(user_id), None, ("online_store",)
        snap = {name: got[name] for name in self._snapshot_names}
        rt = {name: got[name] for name in self._realtime_names}
        snap_row = None if all(v is None for v in snap.values()) else snap
        rt_row = None if not rt or all(v is None for v in rt.values()) else rt
        if snap_row is None:  # not materialized online (yet): the snapshot may still know the user
            snap_row = self.fallback.snapshot_row(user_id)
        return snap_row, rt_row, ()


class RateLimitedLog:
    """Logs a message the first time, then the same message at most once per ``interval_seconds``
    with how many times it recurred: a failing dependency must not fill the disk with tracebacks.

    Parameters
    ----------
    log : logging.Logger
    interval_seconds : float
    """

    def __init__(self, log: logging.Logger, *, interval_seconds: float) -> None:
        self._log = log
        self._interval = interval_seconds
        self._seen: dict[str, tuple[float, int]] = {}  # message -> (time last logged, repeats since)
        self._lock = threading.Lock()

    def warning(self, message: str, suffix: str = "", *, exc: BaseException | None = None) -> bool:
        """Log ``message + suffix`` (the traceback of ``exc`` the first time) unless ``message`` was
        logged less than ``interval_seconds`` ago; True if it was logged."""
        now = time.monotonic()
        with self._lock:
            last, repeats = self._seen.get(message, (None, 0))
            if last is not None and now - last < self._interval:
                self._seen[message] = (last, repeats + 1)
                return False
            self._seen[message] = (now, 0)
        again = f" ({repeats} more times in the last {now - last:.0f} s)" if last is not None else ""
        self._log.warning("%s%s%s", message, suffix, again,
                          exc_info=exc if (exc is not None and last is None) else None)
        return True


class _OnlineReader:
    """One user's features straight from a Feast store's ``OnlineStore.online_read``.

    ``FeatureStore.get_online_features`` plans the request (resolves references, groups them
    by view, converts and deduplicates entity values), calls ``online_read`` once per view and
    builds a protobuf response that ``to_dict`` converts back with
    ``feast_value_type_to_python_type``. For one entity row of one int64 join key the plan is
    fixed, so it is made here once (views resolved from the registry, the online store built
    from the repo config as Feast's provider builds it) and a read is just the per-view
    ``online_read`` and the same value conversion. Features a row lacks are None, as
    ``to_dict`` gives them.
    """

    def __init__(self, config: Any, online_store: Any, views: list[tuple[Any, str, list[tuple[str, Any]]]], *,
                 busy_timeout_ms: int = 5000) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        self._config = config
        self._online_store = online_store
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._tuned = False
        self._online_store_config = config.online_store
        self._views = views  # (feature view, join key, [(feature name, its feast ValueType)])
        self._entity_key, self._value, self._to_python = EntityKey, Value, feast_value_type_to_python_type

    @classmethod
    def create(cls, store: Any, refs: list[str], *, busy_timeout_ms: int = 5000) -> _OnlineReader | None:
        """A reader for ``refs`` when ``store`` is a feast.FeatureStore they fit; else None.

        ``busy_timeout_ms``: how long SQLite waits for a lock before it fails a read (its default,
        5 s, kept the reader thread, and at times the GIL, busy for seconds behind a lock).
        """
        try:
            from feast import FeatureStore
            from feast.infra.online_stores.helpers import get_online_store_from_config
            from feast.types import Int64
        except ImportError:
            return None
        if not isinstance(store, FeatureStore) or not refs:
            return None
        try:
            by_view: dict[str, list[str]] = {}
            for ref in refs:
                view, name = ref.split(":", 1)
                by_view.setdefault(view, []).append(name)
            views = []
            for view, names in by_view.items():
                fv = store.get_feature_view(view)
                types = {f.name: f.dtype.to_value_type() for f in fv.features}
                if len(fv.entity_columns) != 1 or fv.entity_columns[0].dtype != Int64 or set(names) - set(types):
                    return None  # get_online_features handles (or rejects) these
                views.append((fv, fv.entity_columns[0].name, [(n, types[n]) for n in names]))
            return cls(store.config, get_online_store_from_config(store.config.online_store), views,
                       busy_timeout_ms=busy_timeout_ms)
        except Exception:  # noqa: BLE001 - the generic path still works (or fails into the fallback)
            logger.warning("Feast online reads go through get_online_features", exc_info=True)
            return None

    def reconnect(self) -> None:
        """Drop the online store (and its connection): the next read builds a new one, as Feast's provider does.

        A SQLite connection left from before a failure may point at a file that was replaced
        or a schema that went away ("no such table" forever); a fresh store opens the path again.
        """
        from feast.infra.online_stores.helpers import get_online_store_from_config

        old, self._online_store = self._online_store, get_online_store_from_config(self._online_store_config)
        self._tuned = False
        conn = getattr(old, "_conn", None)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a read may still be using it; it is dropped either way
                logger.debug("closing the old online store connection failed", exc_info=True)

    def _tune(self) -> None:
        """Shorten SQLite's lock wait on the store's connection (Feast's SQLite store opens it with
        Python's default of 5 s and offers no setting; other stores are left as they are)."""
        import sqlite3

        get_conn = getattr(self._online_store, "_get_conn", None)
        conn = get_conn(self._config) if callable(get_conn) else None
        if isinstance(conn, sqlite3.Connection):
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        self._tuned = True

    def read(self, user_id: int) -> dict[str, Any]:
        if not self._tuned:
            self._tune()
        out: dict[str, Any] = {}
        for fv, join_key, features in self._views:
            key = self._entity_key(join_keys=[join_key], entity_values=[self._value(int64_val=int(user_id))])
            _, data = self._online_store.online_read(config=self._config, table=fv, entity_keys=[key],
                                                     requested_features=[name for name, _ in features])[0]
            for name, vtype in features:
                value = None if data is None else data.get(name)
                out[name] = None if value is None else self._to_python(value, vtype)
        return out


class FeatureAssembler:
    """Builds the ranker's feature matrix for one request's candidates.

    Parameters
    ----------
    feature_names : list of str
        The model's features, in order.
    item_frame : DataFrame
        One row per snapshot row (same order as the item snapshot): ``item_id``,
        ``item_category_id``, ``item_seller_id``, ``item_created_us``, ``f_item_*`` and
        ``f_seller_*``.
    user_columns : list of str
        Columns of a user snapshot row (features and the auxiliary inputs of derived features).

    Each feature comes from the first of: the request-time features of
    :func:`features.derived.derived_matrix` (the core of the ETL's own ``derived_features``,
    called on exactly its inputs: the user's values as scalars, the candidates' as arrays), the user's snapshot or real-time row, the item snapshot. The item
    columns are held as one float64 matrix, gathered by row per request: building a frame of
    every snapshot column per request cost several milliseconds of pandas work.
    """

    def __init__(self, *, feature_names: list[str], item_frame: pd.DataFrame, user_columns: list[str]) -> None:
        self.feature_names = list(feature_names)
        self.item_frame = item_frame.reset_index(drop=True)
        self.user_columns = list(user_columns)
        frame = self.item_frame
        user_set = set(self.user_columns) | set(REALTIME_INPUTS)
        numeric = {c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c].dtype)}
        # derived-feature inputs the item rows supply
        self._item_inputs = {c: frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
                             for c in ITEM_INPUTS if c in frame.columns}
        # which source each model feature is read from (derived > user/real-time row > item snapshot)
        derived_pos, user_pos, item_pos, missing = [], [], [], []
        item_cols: list[str] = []
        for j, name in enumerate(self.feature_names):
            if name in DERIVED_FEATURES:
                derived_pos.append((j, DERIVED_FEATURES.index(name)))
            elif name in user_set:
                user_pos.append((j, name))
            elif name in numeric:
                item_pos.append(j)
                item_cols.append(name)
            else:
                missing.append(name)
        self._missing = missing
        self._derived_dst = np.array([j for j, _ in derived_pos], dtype=np.int64)
        self._derived_src = np.array([i for _, i in derived_pos], dtype=np.int64)
        self._user_pos = user_pos
        self._item_dst = np.array(item_pos, dtype=np.int64)
        self._item_values = (frame[item_cols].to_numpy(dtype=np.float64, na_value=np.nan) if item_cols
                             else np.zeros((len(frame), 0)))
        self._user_inputs = [c for c in self.user_columns if c not in self._item_inputs]
        self._rt_inputs = [c for c in REALTIME_INPUTS if c not in self._item_inputs and c not in self.user_columns]

    def assemble(self, *, ts_us: int, device: str | None, user_row: dict[str, Any] | None,
                 realtime_row: dict[str, Any] | None, rows: np.ndarray) -> np.ndarray:
        """Feature matrix of shape (len(rows), len(feature_names)), NaN where undefined."""
        if self._missing:
            raise KeyError(f"features missing from the serving inputs: {self._missing[:5]}")
        rows = np.asarray(rows, dtype=np.int64)
        n = len(rows)
        values = {c: _value(user_row, c) for c in self._user_inputs}
        values.update({c: _value(realtime_row, c) for c in self._rt_inputs})
        # derived_matrix is derived_features without the DataFrame: the user's and the
        # request's values go in as scalars, the candidates' columns as arrays
        inputs: dict[str, Any] = dict(values)
        for name, arr in self._item_inputs.items():
            inputs[name] = arr[rows]
        derived = derived_matrix(inputs, ts_us, device_code(device), n)
        X = np.empty((n, len(self.feature_names)), dtype=np.float64)
        X[:, self._item_dst] = self._item_values[rows]
        for j, name in self._user_pos:
            X[:, j] = values[name] if name in values else _value(user_row if name in self.user_columns
                                                                 else realtime_row, name)
        X[:, self._derived_dst] = derived[:, self._derived_src]
        return X


def _value(row: dict[str, Any] | None, name: str) -> float:
    value = None if row is None else row.get(name)
    return np.nan if value is None else float(value)
