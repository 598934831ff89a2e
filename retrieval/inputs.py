"""Point-in-time inputs of the two towers, built from the event log with pandas and numpy.

- :class:`ItemCatalog`: item content (category, seller, price band, new-seller flag, age)
  as of any time; price bands are the item's price quantile within its category.
- :class:`UserHistory`: each user's interactions sorted by time, so that the features of a
  user *as of* time ``t`` (recent items, counts) use only rows strictly before ``t``.
- :class:`UserState`: the features of every user as of one time, for serving.
- :func:`build_examples`: positive examples (clicks and purchases) in a time window, each
  with the user's features as of the event and a pool of hard negatives (items shown in the
  same request, or the user's previous request, and not clicked).

Ids are hashed into embedding buckets (:func:`hash_ids`), so ids never seen in training still
map to a bucket; whether that bucket's embedding is trusted is decided by the caller (unseen
ids are hidden).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import EVENT_TYPES
from retrieval.config import TwoTowerConfig
from retrieval.logs import EventLog

__all__ = [
    "CONTENT_NUMERIC",
    "USER_NUMERIC",
    "Examples",
    "ItemCatalog",
    "UserHistory",
    "UserInputs",
    "UserState",
    "Vocabulary",
    "build_examples",
    "hash_ids",
    "hour_band",
    "item_id_rows",
]

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000
CLICK, CART, PURCHASE = (EVENT_TYPES.index(t) for t in ("click", "add_to_cart", "purchase"))
VIEW = -1  # an impression taken into the history (``TwoTowerConfig.history_impressions``)
#: Numeric item-content features, in column order.
CONTENT_NUMERIC: tuple[str, ...] = ("new_seller", "new_item", "log_age_days", "log_price_z")
#: Numeric user features, in column order (counts are of interactions strictly before the time).
USER_NUMERIC: tuple[str, ...] = ("log_clicks", "log_carts", "log_purchases", "log_impressions",
                                 "log_days_since_signup", "has_history")
_SALTS = {"user": 1, "item": 2, "seller": 3, "category": 4}


def hash_ids(ids: np.ndarray, buckets: int, kind: str) -> np.ndarray:
    """Hash int64 ids into ``[0, buckets)`` with a salted splitmix64 (stable across processes).

    Parameters
    ----------
    ids : ndarray of int64
    buckets : int
    kind : {"user", "item", "seller", "category"}
        Salts the hash so equal ids of different kinds land in unrelated buckets.
    """
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64((_SALTS[kind] * 0x9E3779B97F4A7C15) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(buckets)).astype(np.int64)


def item_id_rows(item_ids: np.ndarray, trained_item_ids: np.ndarray) -> np.ndarray:
    """Row of each item's own id embedding: its rank among the sorted ``trained_item_ids``; -1 for others.

    Items with an own vector get collision-free rows (hashing 55k items into 262k buckets puts
    thousands of pairs into one bucket, and two such items of one category got one vector);
    every other item's id embedding is hidden, whatever row it would hash to.
    """
    trained = np.asarray(trained_item_ids, dtype=np.int64)
    ids = np.asarray(item_ids, dtype=np.int64)
    if len(trained) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(trained, ids), len(trained) - 1)
    return np.where(trained[pos] == ids, pos, -1).astype(np.int64)


def hour_band(hours: np.ndarray, bands: tuple[int, ...]) -> np.ndarray:
    """Index of the hour band (bands start at the given UTC hours) of each hour in [0, 23]."""
    return np.searchsorted(np.asarray(bands), np.asarray(hours, dtype=np.int64), side="right") - 1


@dataclass(frozen=True)
class Vocabulary:
    """Strings to small codes: ``0`` for unknown or empty, ``1 + index`` for known values."""

    values: tuple[str, ...]

    @classmethod
    def fit(cls, *columns: np.ndarray) -> Vocabulary:
        seen: set[str] = set()
        for column in columns:
            seen.update(str(v) for v in pd.unique(np.asarray(column, dtype=object)) if v not in ("", None))
        return cls(tuple(sorted(seen)))

    def __len__(self) -> int:
        return len(self.values) + 1

    def encode(self, values: np.ndarray) -> np.ndarray:
        lookup = {v: i + 1 for i, v in enumerate(self.values)}
        return np.fromiter((lookup.get(v, 0) if isinstance(v, str) else 0 for v in values), dtype=np.int64,
                           count=len(values))


@dataclass(frozen=True)
class ItemCatalog:
    """The items table as arrays, sorted by item id; row ``r`` describes ``item_ids[r]``."""

    item_ids: np.ndarray
    seller_ids: np.ndarray
    category_ids: np.ndarray
    price_band: np.ndarray
    log_price_z: np.ndarray
    item_created_us: np.ndarray
    seller_created_us: np.ndarray
    in_stock: np.ndarray

    @classmethod
    def from_log(cls, log: EventLog, config: TwoTowerConfig) -> ItemCatalog:
        """Build from the items and sellers tables of ``log``."""
        items = log.items.sort_values("item_id", kind="stable")
        if items["item_id"].duplicated().any():
            raise ValueError("log.items must have unique item_id values")
        sellers = log.sellers.set_index("seller_id")["created_us"]
        seller_created = items["seller_id"].map(sellers)
        # An item whose seller row is missing is treated as listed by an established seller.
        seller_created = seller_created.fillna(np.iinfo(np.int64).min // 2).to_numpy(dtype=np.int64)
        price = items["price"].to_numpy(dtype=np.float64)
        log_price = np.log(np.clip(np.nan_to_num(price, nan=1.0), 1e-6, None))
        category = items["category_id"].to_numpy()
        # Price band: the item's price quantile within its category (mid band for singletons).
        quantile = pd.Series(log_price).groupby(category).rank(method="average", pct=True).to_numpy()
        counts = pd.Series(category).map(pd.Series(category).value_counts()).to_numpy()
        quantile = np.where(counts > 1, quantile - 0.5 / counts, 0.5)
        band = np.minimum((quantile * config.price_bands).astype(np.int64), config.price_bands - 1)
        z = (log_price - log_price.mean()) / (log_price.std() + 1e-9) if len(price) else log_price
        return cls(
            item_ids=items["item_id"].to_numpy(dtype=np.int64),
            seller_ids=items["seller_id"].to_numpy(dtype=np.int64),
            category_ids=category.astype(np.int64),
            price_band=band,
            log_price_z=z.astype(np.float32),
            item_created_us=items["created_us"].to_numpy(dtype=np.int64),
            seller_created_us=seller_created,
            in_stock=items["in_stock"].to_numpy(dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Catalog row of each id; -1 for ids not in the catalog."""
        ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.item_ids, ids), max(len(self.item_ids) - 1, 0))
        found = (self.item_ids[pos] == ids) if len(self.item_ids) else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)

    def content(self, rows: np.ndarray, ts_us: np.ndarray | int, config: TwoTowerConfig) -> dict[str, np.ndarray]:
        """Content features of catalog ``rows`` as of ``ts_us`` (one time, or one per row).

        Returns
        -------
        dict
            ``item``, ``category``, ``seller`` (hash buckets), ``price_band`` (int64) and
            ``numeric`` (float32, shape (n, len(CONTENT_NUMERIC))).
        """
        rows = np.asarray(rows, dtype=np.int64)
        ts = np.broadcast_to(np.asarray(ts_us, dtype=np.int64), rows.shape)
        age_days = np.maximum(ts - self.item_created_us[rows], 0) / DAY_US
        seller_age_days = (ts - self.seller_created_us[rows]) / DAY_US
        numeric = np.stack([
            (seller_age_days < config.new_seller_days).astype(np.float32),
            (age_days < 7.0).astype(np.float32),
            (np.log1p(age_days) / 3.0).astype(np.float32),
            self.log_price_z[rows],
        ], axis=-1)
        return {
            "item": hash_ids(self.item_ids[rows], config.item_buckets, "item"),
            "category": hash_ids(self.category_ids[rows], config.category_buckets, "category"),
            "seller": hash_ids(self.seller_ids[rows], config.seller_buckets, "seller"),
            "price_band": self.price_band[rows],
            "numeric": numeric.astype(np.float32),
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for an ``.npz`` file."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ItemCatalog:
        return cls(**{name: np.asarray(arrays[name]) for name in cls.__dataclass_fields__})


def _ranges(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(start[i], end[i])`` over i, without a Python loop."""
    lengths = (end - start).astype(np.int64)
    total = int(lengths.sum())
    offsets = np.repeat(start - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return (offsets + np.arange(total)).astype(np.int64)


class _PointInTime:
    """Rows grouped by a dense code and sorted by time inside each group.

    :meth:`bounds` gives, for each query ``(code, t)``, the slice ``[start, end)`` of rows of
    that code with timestamp strictly before ``t``.
    """

    def __init__(self, codes: np.ndarray, ts_us: np.ndarray, n_codes: int) -> None:
        self.order = np.lexsort((ts_us, codes))
        self.codes = codes[self.order]
        self.ts = ts_us[self.order]
        self.group_start = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=n_codes))]).astype(np.int64)

    def bounds(self, codes: np.ndarray, ts_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        known = codes >= 0
        safe = np.where(known, codes, 0)
        n, m = len(self.ts), len(codes)
        all_codes = np.concatenate([self.codes, safe])
        all_ts = np.concatenate([self.ts, ts_us])
        is_history = np.concatenate([np.ones(n, np.int8), np.zeros(m, np.int8)])
        # At equal (code, ts) a query sorts before the history rows, so they do not count.
        order = np.lexsort((is_history, all_ts, all_codes))
        seen = np.cumsum(is_history[order])
        position = np.empty(n + m, dtype=np.int64)
        position[order] = np.arange(n + m)
        end = seen[position[n:]].astype(np.int64)
        start = self.group_start[safe]
        return np.where(known, start, 0), np.where(known, end, 0)


@dataclass(frozen=True)
class UserInputs:
    """User-tower inputs for n (user, time) pairs.

    Attributes
    ----------
    user : ndarray of int64, shape (n,)
        Hash bucket of the user id.
    country, device, hour_band : ndarray of int64, shape (n,)
        Vocabulary codes (0 = unknown) and hour band of the request.
    recent : ndarray of int64, shape (n, L)
        Catalog rows of the most recent interactions, newest first; -1 pads.
    numeric : ndarray of float32, shape (n, len(USER_NUMERIC))
    """

    user: np.ndarray
    country: np.ndarray
    device: np.ndarray
    hour_band: np.ndarray
    recent: np.ndarray
    numeric: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray) -> UserInputs:
        return UserInputs(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


class UserHistory:
    """Every user's interactions and impressions, for features as of any time.

    Parameters
    ----------
    log : EventLog
    catalog : ItemCatalog
    config : TwoTowerConfig
    end_us : int, optional
        Rows at or after this time are ignored (the end of the data a model may see).
    """

    def __init__(self, log: EventLog, catalog: ItemCatalog, config: TwoTowerConfig, *,
                 end_us: int | None = None) -> None:
        self.config = config
        self.catalog = catalog
        users = log.users.sort_values("user_id", kind="stable")
        self.user_ids = users["user_id"].to_numpy(dtype=np.int64)
        self.signup_us = users["signup_us"].to_numpy(dtype=np.int64)
        self.countries = Vocabulary.fit(users["country"].to_numpy())
        self.devices = Vocabulary.fit(users["device"].to_numpy(), log.impressions["device"].to_numpy())
        self.country_code = self.countries.encode(users["country"].to_numpy())
        self.device_code = self.devices.encode(users["device"].to_numpy())
        limit = np.iinfo(np.int64).max if end_us is None else end_us
        ev = log.events[log.events["ts_us"].to_numpy() < limit][["user_id", "item_id", "ts_us", "type"]]
        if config.history_impressions:  # sources whose impressions are the user's own views (type -1)
            views = log.impressions[log.impressions["ts_us"].to_numpy() < limit][["user_id", "item_id", "ts_us"]]
            ev = pd.concat([ev, views.assign(type=np.int8(VIEW))], ignore_index=True)
        codes = self.user_codes(ev["user_id"].to_numpy())
        keep = codes >= 0
        self._events = _PointInTime(codes[keep], ev["ts_us"].to_numpy()[keep], len(self.user_ids))
        self.event_items = ev["item_id"].to_numpy()[keep][self._events.order]
        self.event_types = ev["type"].to_numpy().astype(np.int8)[keep][self._events.order]
        self.event_ts = self._events.ts
        self._type_cum = {t: np.concatenate([[0], np.cumsum(self.event_types == t)]) for t in (CLICK, CART, PURCHASE)}
        imp = log.impressions[log.impressions["ts_us"].to_numpy() < limit]
        icodes = self.user_codes(imp["user_id"].to_numpy())
        ikeep = icodes >= 0
        self._impressions = _PointInTime(icodes[ikeep], imp["ts_us"].to_numpy()[ikeep], len(self.user_ids))

    def user_codes(self, user_ids: np.ndarray) -> np.ndarray:
        """Dense code of each user id (its row in the users table); -1 for unknown ids."""
        ids = np.asarray(user_ids, dtype=np.int64)
        if len(self.user_ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.user_ids, ids), len(self.user_ids) - 1)
        return np.where(self.user_ids[pos] == ids, pos, -1)

    def event_bounds(self, codes: np.ndarray, ts_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slices ``[start, end)`` of :attr:`event_items` that each user did strictly before each time."""
        return self._events.bounds(codes, ts_us)

    def inputs_at(self, codes: np.ndarray, ts_us: np.ndarray, devices: np.ndarray | None = None) -> UserInputs:
        """User-tower inputs of users ``codes`` (-1 = unknown) as of ``ts_us`` (strictly before).

        ``devices`` are request devices (vocabulary codes, 0 = use the user's own device).
        """
        codes = np.asarray(codes, dtype=np.int64)
        ts = np.broadcast_to(np.asarray(ts_us, dtype=np.int64), codes.shape)
        known = codes >= 0
        safe = np.where(known, codes, 0)
        start, end = self._events.bounds(codes, ts)
        length = self.config.history_length
        idx = end[:, None] - 1 - np.arange(length)[None, :]
        valid = idx >= start[:, None]
        recent = np.full(idx.shape, -1, dtype=np.int64)
        recent[valid] = self.catalog.rows(self.event_items[idx[valid]])
        counts = [self._type_cum[t][end] - self._type_cum[t][start] for t in (CLICK, CART, PURCHASE)]
        istart, iend = self._impressions.bounds(codes, ts)
        days = np.maximum(ts - self.signup_us[safe], 0) / DAY_US
        numeric = np.stack([*(np.log1p(c) / 5.0 for c in counts), np.log1p(iend - istart) / 5.0,
                            np.where(known, np.log1p(days) / 5.0, 0.0), (end > start).astype(np.float64)], axis=-1)
        own_device = np.where(known, self.device_code[safe], 0)
        device = own_device if devices is None else np.where(np.asarray(devices) > 0, devices, own_device)
        return UserInputs(
            user=hash_ids(self.user_ids[safe], self.config.user_buckets, "user") * known,
            country=np.where(known, self.country_code[safe], 0),
            device=np.asarray(device, dtype=np.int64),
            hour_band=hour_band((ts // HOUR_US) % 24, self.config.hour_bands),
            recent=recent.astype(np.int64),
            numeric=numeric.astype(np.float32),
        )

    def state_at(self, as_of_us: int) -> UserState:
        """Every user's features and purchases strictly before ``as_of_us``, for serving."""
        codes = np.arange(len(self.user_ids), dtype=np.int64)
        ts = np.full(len(codes), as_of_us, dtype=np.int64)
        start, end = self._events.bounds(codes, ts)
        length = self.config.history_length
        idx = end[:, None] - 1 - np.arange(length)[None, :]
        valid = idx >= start[:, None]
        recent = np.full(idx.shape, -1, dtype=np.int64)
        recent[valid] = self.event_items[idx[valid]]
        inputs = self.inputs_at(codes, ts)
        # Purchases before as_of, per user, as a CSR list of item ids.
        flat = _ranges(start, end)
        row_of = np.repeat(codes, end - start)
        bought = self.event_types[flat] == PURCHASE
        pairs = np.unique(np.stack([row_of[bought], self.event_items[flat][bought]], axis=1), axis=0)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(pairs[:, 0], minlength=len(codes)))]).astype(np.int64)
        return UserState(
            user_ids=self.user_ids.copy(), as_of_us=int(as_of_us), recent_item_ids=recent.astype(np.int64),
            numeric=inputs.numeric, country=inputs.country, device=inputs.device,
            history_count=(end - start).astype(np.int64), purchased_indptr=indptr,
            purchased_item_ids=pairs[:, 1].astype(np.int64), countries=self.countries, devices=self.devices)


@dataclass(frozen=True)
class UserState:
    """Every user's features as of ``as_of_us``: what serving knows about a user.

    Attributes
    ----------
    user_ids : ndarray of int64, shape (U,), sorted
    recent_item_ids : ndarray of int64, shape (U, L)
        Most recent interactions before ``as_of_us``, newest first; -1 pads.
    numeric : ndarray of float32, shape (U, len(USER_NUMERIC))
    country, device : ndarray of int64, shape (U,)
        Vocabulary codes.
    history_count : ndarray of int64, shape (U,)
        Interactions before ``as_of_us``; users with none are served popularity.
    purchased_indptr, purchased_item_ids : ndarray of int64
        CSR lists of items each user bought before ``as_of_us``.
    countries, devices : Vocabulary
    """

    user_ids: np.ndarray
    as_of_us: int
    recent_item_ids: np.ndarray
    numeric: np.ndarray
    country: np.ndarray
    device: np.ndarray
    history_count: np.ndarray
    purchased_indptr: np.ndarray
    purchased_item_ids: np.ndarray
    countries: Vocabulary
    devices: Vocabulary

    def codes(self, user_ids: np.ndarray) -> np.ndarray:
        """Row of each user id in this state; -1 for users it does not know."""
        ids = np.asarray(user_ids, dtype=np.int64)
        if len(self.user_ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.user_ids, ids), len(self.user_ids) - 1)
        return np.where(self.user_ids[pos] == ids, pos, -1)

    def purchased(self, code: int) -> np.ndarray:
        """Item ids user ``code`` bought before ``as_of_us``."""
        return self.purchased_item_ids[self.purchased_indptr[code]:self.purchased_indptr[code + 1]]

    def inputs(self, codes: np.ndarray, catalog: ItemCatalog, config: TwoTowerConfig, *, device: np.ndarray,
               hours: np.ndarray) -> UserInputs:
        """User-tower inputs of known users ``codes`` for requests from ``device`` (0 = the user's own) at ``hours``."""
        recent_ids = self.recent_item_ids[codes]
        rows = catalog.rows(recent_ids.ravel()).reshape(recent_ids.shape)
        rows = np.where(recent_ids >= 0, rows, -1)
        return UserInputs(
            user=hash_ids(self.user_ids[codes], config.user_buckets, "user"),
            country=self.country[codes],
            device=np.where(device > 0, device, self.device[codes]).astype(np.int64),
            hour_band=hour_band(hours, config.hour_bands),
            recent=rows.astype(np.int64),
            numeric=self.numeric[codes],
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for an ``.npz`` file (vocabularies go to the metadata)."""
        skip = {"countries", "devices", "as_of_us"}
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in skip}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, as_of_us: int, countries: Vocabulary,
                    devices: Vocabulary) -> UserState:
        names = [n for n in cls.__dataclass_fields__ if n not in ("countries", "devices", "as_of_us")]
        return cls(**{n: np.asarray(arrays[n]) for n in names}, as_of_us=as_of_us, countries=countries,
                   devices=devices)


@dataclass(frozen=True)
class Examples:
    """Training or validation examples: one per positive event.

    Attributes
    ----------
    user : UserInputs
        The user's features as of the event (strictly before its timestamp).
    item_row : ndarray of int64, shape (n,)
        Catalog row of the positive item.
    ts_us : ndarray of int64, shape (n,)
    weight : ndarray of float32, shape (n,)
    negative_start, negative_count : ndarray of int64, shape (n,)
        Slice of :attr:`negative_rows` holding the example's hard-negative pool.
    negative_rows : ndarray of int64
        Catalog rows of items shown and not clicked, grouped by request.
    user_codes : ndarray of int64, shape (n,)
    from_feed : ndarray of bool, shape (n,)
        The event came from a logged impression (the feed showed the item).
    """

    user: UserInputs
    item_row: np.ndarray
    ts_us: np.ndarray
    weight: np.ndarray
    negative_start: np.ndarray
    negative_count: np.ndarray
    negative_rows: np.ndarray
    user_codes: np.ndarray
    from_feed: np.ndarray

    def __len__(self) -> int:
        return len(self.item_row)


def build_examples(log: EventLog, history: UserHistory, *, start_us: int, end_us: int,
                   positive_types: tuple[str, ...], purchase_weight: float,
                   events: np.ndarray | None = None) -> Examples:
    """Positive examples from events in ``[start_us, end_us)``, with point-in-time user features.

    ``events`` (bool, one per row of ``log.events``), when given, further restricts the positives
    to those rows (leave-last-out splits hold some events out by row, not by time).
    Hard negatives come from the impressions of the event's request (or, for an event without an
    impression, the user's last request strictly before it) that were not clicked before ``end_us``.
    """
    catalog = history.catalog
    ev = log.events
    ts = ev["ts_us"].to_numpy()
    type_codes = [EVENT_TYPES.index(t) for t in positive_types]
    mask = (ts >= start_us) & (ts < end_us) & np.isin(ev["type"].to_numpy(), type_codes)
    if events is not None:
        mask &= np.asarray(events, dtype=bool)
    pos = ev[mask]
    item_row = catalog.rows(pos["item_id"].to_numpy())
    codes = history.user_codes(pos["user_id"].to_numpy())
    keep = (item_row >= 0) & (codes >= 0)
    pos, item_row, codes = pos[keep], item_row[keep], codes[keep]

    imp = log.impressions
    imp = imp[imp["ts_us"].to_numpy() < end_us]
    dev_of_imp = pd.Series(history.devices.encode(imp["device"].to_numpy()), index=imp["impression_id"].to_numpy())
    req_of_imp = pd.Series(imp["request_id"].to_numpy(), index=imp["impression_id"].to_numpy())
    if not dev_of_imp.index.is_unique:
        dev_of_imp = dev_of_imp[~dev_of_imp.index.duplicated()]
        req_of_imp = req_of_imp[~req_of_imp.index.duplicated()]
    imp_ids = pos["impression_id"].to_numpy()
    device = dev_of_imp.reindex(imp_ids).fillna(0).to_numpy(dtype=np.int64)
    request = req_of_imp.reindex(imp_ids).fillna(-1).to_numpy(dtype=np.int64)

    # Events without an impression borrow the user's previous request (strictly before).
    requests = (imp.groupby("request_id", sort=False).agg(user_id=("user_id", "first"), ts_us=("ts_us", "min"))
                .reset_index().sort_values("ts_us", kind="stable"))
    orphan = np.flatnonzero(request < 0)
    if len(orphan) and len(requests):
        left = pd.DataFrame({"ts_us": pos["ts_us"].to_numpy()[orphan], "user_id": pos["user_id"].to_numpy()[orphan],
                             "k": orphan}).sort_values("ts_us", kind="stable")
        merged = pd.merge_asof(left, requests, on="ts_us", by="user_id", allow_exact_matches=False)
        request[merged["k"].to_numpy()] = merged["request_id"].fillna(-1).to_numpy(dtype=np.int64)

    # Pools of hard negatives: impressions of each request that were not clicked before end_us.
    clicked = ev.loc[(ts < end_us) & (ev["impression_id"].to_numpy() >= 0), "impression_id"].to_numpy()
    shown = imp[~np.isin(imp["impression_id"].to_numpy(), clicked)]
    shown_rows = catalog.rows(shown["item_id"].to_numpy())
    shown = shown.assign(row=shown_rows)[shown_rows >= 0].sort_values("request_id", kind="stable")
    uniq, first, counts = np.unique(shown["request_id"].to_numpy(), return_index=True, return_counts=True)
    neg_start = np.zeros(len(request), dtype=np.int64)
    neg_count = np.zeros(len(request), dtype=np.int64)
    if len(uniq):
        where = np.minimum(np.searchsorted(uniq, request), len(uniq) - 1)
        has = (request >= 0) & (uniq[where] == request)
        neg_start[has], neg_count[has] = first[where[has]], counts[where[has]]

    pos_ts = pos["ts_us"].to_numpy()
    weight = np.where(pos["type"].to_numpy() == PURCHASE, purchase_weight, 1.0).astype(np.float32)
    return Examples(
        user=history.inputs_at(codes, pos_ts, device),
        item_row=item_row.astype(np.int64),
        ts_us=pos_ts.astype(np.int64),
        weight=weight,
        negative_start=neg_start,
        negative_count=neg_count,
        negative_rows=shown["row"].to_numpy(dtype=np.int64),
        user_codes=codes.astype(np.int64),
        from_feed=np.isin(imp_ids, imp["impression_id"].to_numpy()),
    )
