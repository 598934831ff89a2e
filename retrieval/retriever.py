"""The retriever interface and the light retrievers: popularity by context, and the user's own history.

Every retriever answers the same batch-first call::

    item_ids, scores = retriever.recommend(user_ids, context, k=500, exclude=[...])

and shares one completion step: candidates the retriever proposes are filtered (unknown ids,
-1 slots, out of stock, already purchased, the caller's exclusions, repeats) and the list is
padded from popularity by the request's context segment, so every row holds the same number of
unique, servable item ids.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
import pandas as pd

from features.popularity import event_weights
from retrieval.config import ServingConfig
from retrieval.inputs import ItemCatalog, UserState
from retrieval.logs import EventLog
from retrieval.popularity import SegmentPopularity

__all__ = ["HistoryRetriever", "PopularityRetriever", "RequestContext", "Retriever"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestContext:
    """Context of each request: one value per user, or one value for all of them.

    Attributes
    ----------
    device : str, sequence of str or None, optional
        Request device (as in the logs, e.g. "mobile"); None or unknown strings mean "any".
    hour : int, sequence of int, optional
        UTC hour of the request in [0, 23]; None or -1 means unknown (global popularity,
        first hour band for the user tower).
    """

    device: str | Sequence[str | None] | None = None
    hour: int | Sequence[int] | np.ndarray | None = None


@dataclass(frozen=True)
class _Requests:
    user_ids: np.ndarray
    codes: np.ndarray  # row in the user state; -1 = unknown user
    devices: np.ndarray  # vocabulary codes, 0 = unknown
    hours: np.ndarray  # -1 = unknown
    segments: np.ndarray  # -1 = global popularity

    def subset(self, members: np.ndarray) -> Self:
        """The requests at positions ``members`` (every field is per user)."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[members] for f in dataclasses.fields(self)})


class Retriever(ABC):
    """Candidate generation for a batch of users.

    Parameters
    ----------
    catalog : ItemCatalog
        Items that may be retrieved; ``in_stock`` false items never are.
    popularity : SegmentPopularity
        Fallback order per context segment.
    users : UserState or None
        What is known about users (purchases for the exclusion rule); None: every user is unknown.
    config : ServingConfig
    """

    def __init__(self, *, catalog: ItemCatalog, popularity: SegmentPopularity, users: UserState | None,
                 config: ServingConfig) -> None:
        self.catalog = catalog
        self.popularity = popularity
        self.users = users
        self.config = config
        self._eligible = catalog.in_stock.astype(bool)
        self._n_eligible = int(self._eligible.sum())
        self._segment_rows = catalog.rows(popularity.segment_item_ids.ravel()).reshape(
            popularity.segment_item_ids.shape)
        self._segment_rows[popularity.segment_item_ids < 0] = -1
        # Global order: popular items, then the rest of the catalog, newest first.
        popular = catalog.rows(popularity.global_item_ids)
        keep = popular >= 0
        popular, popular_scores = popular[keep], popularity.global_scores[keep]
        rest = np.setdiff1d(np.arange(len(catalog)), popular)
        rest = rest[np.lexsort((catalog.item_ids[rest], -catalog.item_created_us[rest]))]
        self._global_rows = np.concatenate([popular, rest]).astype(np.int64)
        self._global_scores = np.concatenate([popular_scores, np.zeros(len(rest))])

    def recommend(self, user_ids: int | Sequence[int] | np.ndarray, context: RequestContext | None = None, *,
                  k: int | None = None, exclude: Sequence[Sequence[int] | np.ndarray] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Retrieve candidates for each user.

        Parameters
        ----------
        user_ids : int or array-like of int, shape (n,)
        context : RequestContext, optional
            Device and hour of each request; without it, popularity falls back to the global order.
        k : int, optional
            Candidates per user; default ``config.k``.
        exclude : sequence of n array-likes of item ids, optional
            Items each user must not get (on top of out-of-stock items and, when
            ``config.exclude_purchased``, items the user bought before).

        Returns
        -------
        item_ids : ndarray of int64, shape (n, k')
            Unique, in-stock, non-excluded catalog ids per row, best first; never -1.
        scores : ndarray of float32, shape (n, k')
            The retriever's score of each id (comparable within a row only).

        ``k' = k`` whenever every user has at least ``k`` servable items; in a catalog too small
        for that (fewer servable items than ``k``), ``k'`` is the smallest number of servable
        items over the batch's users, and a warning is logged.

        Raises
        ------
        TypeError
            ``user_ids`` is not integer, ``k`` is not an int, or ``context``/``exclude`` has the wrong type.
        ValueError
            ``k < 1``, or a per-user argument's length differs from the number of users.
        """
        ids = _user_ids(user_ids)
        n = len(ids)
        if k is None:
            k = self.config.k
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        requests = self._requests(ids, context)
        blocked = self._blocked(requests, exclude)
        n_servable = self._n_eligible - np.array([len(b) for b in blocked], dtype=np.int64)
        k_out = int(min(k, n_servable.min())) if n else int(k)
        if k_out < k:
            logger.warning("k=%d exceeds the servable catalog (%d items for the most restricted user): returning %d "
                           "ids per user", k, int(n_servable.min()), k_out)
        # Each user's own fetch size (its k plus what it may not get), and one search per size: a
        # user's candidates are then what it gets alone, whatever else is in the batch (an
        # approximate index's beam grows with the fetch size, so a shared, larger fetch would
        # change them slightly).
        n_fetch = np.minimum(k_out + np.array([len(b) for b in blocked], dtype=np.int64), max(len(self.catalog), 1))
        width = int(n_fetch.max()) if n and k_out else 0
        rows = np.full((n, width), -1, dtype=np.int64)
        scores = np.zeros((n, width), dtype=np.float32)
        for size in (np.unique(n_fetch).tolist() if width else []):
            members = np.flatnonzero(n_fetch == size)
            part = requests if len(members) == n else requests.subset(members)
            got_rows, got_scores = self._candidates(part, size)  # (members, <= size)
            rows[members, :got_rows.shape[1]], scores[members, :got_rows.shape[1]] = got_rows, got_scores
        out_ids = np.empty((n, k_out), dtype=np.int64)
        out_scores = np.empty((n, k_out), dtype=np.float32)
        for i in range(n):
            chosen, chosen_scores = self._complete(i, requests, rows[i], scores[i], blocked[i], k_out)
            out_ids[i] = self.catalog.item_ids[chosen]
            out_scores[i] = chosen_scores
        return out_ids, out_scores

    # ----------------------------------------------------------------- for subclasses
    @abstractmethod
    def _candidates(self, requests: _Requests, n_fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """The retriever's own candidates: catalog rows (n, m) best first (-1 = none) and their scores.

        Rows may be out of stock, excluded or repeated; :meth:`recommend` filters them.
        """

    def _pad_scores(self, i: int, requests: _Requests, rows: np.ndarray) -> np.ndarray | None:
        """Scores of popularity-padded ``rows`` for request ``i`` on the retriever's own scale, or None
        to keep popularity scores after the retriever's candidates."""
        return None

    # ----------------------------------------------------------------- shared machinery
    def _requests(self, ids: np.ndarray, context: RequestContext | None) -> _Requests:
        n = len(ids)
        if context is None:
            context = RequestContext()
        if not isinstance(context, RequestContext):
            raise TypeError(f"context must be a RequestContext or None, got {type(context).__name__}")
        device = _per_user(context.device, n, "context.device", None)
        devices = self.popularity.devices.encode(np.asarray(device, dtype=object))
        hour = _per_user(context.hour, n, "context.hour", -1)
        try:
            hours = np.asarray(hour, dtype=np.int64)
        except (TypeError, ValueError):
            raise TypeError("context.hour must be integers in [0, 23] (or -1/None for unknown)") from None
        if ((hours < -1) | (hours > 23)).any():
            bad = hours[(hours < -1) | (hours > 23)][:5]
            raise ValueError(f"context.hour must be in [0, 23] or -1 for unknown, got {bad}")
        codes = self.users.codes(ids) if self.users is not None else np.full(n, -1, dtype=np.int64)
        if self.users is not None:  # no device in the request: the user's usual device
            own = np.where(codes >= 0, self.users.device[np.maximum(codes, 0)], 0)
            own = self.popularity.devices.encode(np.array([self.users.devices.values[c - 1] if c > 0 else ""
                                                           for c in own], dtype=object))
            devices = np.where(devices > 0, devices, own)
        return _Requests(user_ids=ids, codes=codes, devices=devices, hours=hours,
                         segments=self.popularity.segments(devices, hours))

    def _blocked(self, requests: _Requests, exclude: Sequence[Sequence[int] | np.ndarray] | None) -> list[np.ndarray]:
        """Catalog rows each user may not get beyond the out-of-stock ones (sorted, unique, in stock)."""
        n = len(requests.user_ids)
        if exclude is not None:
            if isinstance(exclude, str | bytes) or not isinstance(exclude, Sequence | np.ndarray):
                raise TypeError(f"exclude must be a sequence of per-user item-id arrays, got {type(exclude).__name__}")
            if len(exclude) != n:
                raise ValueError(f"exclude must hold one item-id list per user ({n}), got {len(exclude)}")
        out = []
        for i in range(n):
            parts = []
            code = requests.codes[i]
            if self.config.exclude_purchased and code >= 0 and self.users is not None:
                parts.append(self.users.purchased(code))
            if exclude is not None:
                try:
                    parts.append(np.asarray(exclude[i], dtype=np.int64).ravel())
                except (TypeError, ValueError):
                    raise TypeError(f"exclude[{i}] must be item ids (integers)") from None
            if parts:
                rows = self.catalog.rows(np.concatenate(parts))
                rows = np.unique(rows[rows >= 0])
                out.append(rows[self._eligible[rows]])
            else:
                out.append(np.zeros(0, dtype=np.int64))
        return out

    def _complete(self, i: int, requests: _Requests, rows: np.ndarray, scores: np.ndarray, blocked: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
        keep = rows >= 0
        rows, scores = rows[keep], scores[keep]
        keep = self._eligible[rows] & ~np.isin(rows, blocked)
        rows, scores = rows[keep], scores[keep]
        _, first = np.unique(rows, return_index=True)
        first.sort()
        rows, scores = rows[first][:k], scores[first][:k].astype(np.float32)
        if len(rows) == k:
            return rows, scores
        pad, pad_pop = self._popular(requests.segments[i], np.concatenate([blocked, rows]), k - len(rows))
        own = self._pad_scores(i, requests, pad)
        if own is None:
            return np.concatenate([rows, pad]), np.concatenate([scores, pad_pop.astype(np.float32)])
        rows, scores = np.concatenate([rows, pad]), np.concatenate([scores, own.astype(np.float32)])
        order = np.argsort(-scores, kind="stable")
        return rows[order], scores[order]

    def _popular(self, segment: int, taken: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``need`` most popular servable rows of ``segment`` (then of everything) not in ``taken``."""
        got_rows, got_scores = [], []
        taken = np.asarray(taken, dtype=np.int64)
        if segment >= 0:
            seg = self._segment_rows[segment]
            seg_scores = self.popularity.segment_scores[segment]
            ok = (seg >= 0)
            seg, seg_scores = seg[ok], seg_scores[ok]
            ok = self._eligible[seg] & ~np.isin(seg, taken)
            got_rows.append(seg[ok][:need])
            got_scores.append(seg_scores[ok][:need])
            taken = np.concatenate([taken, got_rows[-1]])
        have = sum(len(r) for r in got_rows)
        lo, chunk = 0, max(4 * need, 1024)
        while have < need and lo < len(self._global_rows):
            part = self._global_rows[lo:lo + chunk]
            part_scores = self._global_scores[lo:lo + chunk]
            ok = self._eligible[part] & ~np.isin(part, taken)
            got_rows.append(part[ok][:need - have])
            got_scores.append(part_scores[ok][:need - have])
            have += len(got_rows[-1])
            lo += chunk
        if not got_rows:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(got_rows), np.concatenate(got_scores)


class PopularityRetriever(Retriever):
    """Everyone gets the popular items of their context segment (the baseline and the cold-start answer)."""

    def _candidates(self, requests: _Requests, n_fetch: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(requests.user_ids)
        return np.full((n, 0), -1, dtype=np.int64), np.zeros((n, 0), dtype=np.float32)


class HistoryRetriever(Retriever):
    """The user's own past items ranked by weight (sum of event weights, ties to the most recent),
    padded from popularity: the baseline that beats matrix factorization on sparse logs.

    Build it with :meth:`from_log`.
    """

    def __init__(self, *, catalog: ItemCatalog, popularity: SegmentPopularity, users: UserState | None,
                 config: ServingConfig, indptr: np.ndarray, item_rows: np.ndarray, weights: np.ndarray) -> None:
        super().__init__(catalog=catalog, popularity=popularity, users=users, config=config)
        self._indptr, self._item_rows, self._weights = indptr, item_rows, weights

    @classmethod
    def from_log(cls, log: EventLog, *, as_of_us: int, catalog: ItemCatalog, popularity: SegmentPopularity,
                 users: UserState, config: ServingConfig, impression_weight: float = 0.0) -> HistoryRetriever:
        """Weigh each user's events (``config.popularity_weights``) and, optionally, impressions before ``as_of_us``."""
        ev = log.events[log.events["ts_us"].to_numpy() < as_of_us]
        parts = [(ev["user_id"].to_numpy(), ev["item_id"].to_numpy(), ev["ts_us"].to_numpy(),
                  event_weights(ev["type"].to_numpy(), config.popularity_weights))]
        if impression_weight > 0:
            imp = log.impressions[log.impressions["ts_us"].to_numpy() < as_of_us]
            parts.append((imp["user_id"].to_numpy(), imp["item_id"].to_numpy(), imp["ts_us"].to_numpy(),
                          np.full(len(imp), impression_weight)))
        frame = pd.DataFrame({
            "code": users.codes(np.concatenate([p[0] for p in parts])),
            "row": catalog.rows(np.concatenate([p[1] for p in parts])),
            "ts": np.concatenate([p[2] for p in parts]),
            "w": np.concatenate([p[3] for p in parts])})
        frame = frame[(frame["code"] >= 0) & (frame["row"] >= 0) & (frame["w"] > 0)]
        agg = frame.groupby(["code", "row"], sort=False).agg(w=("w", "sum"), ts=("ts", "max")).reset_index()
        agg = agg.sort_values(["code", "w", "ts", "row"], ascending=[True, False, False, True], kind="stable")
        codes = agg["code"].to_numpy()
        indptr = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(users.user_ids)))]).astype(np.int64)
        return cls(catalog=catalog, popularity=popularity, users=users, config=config, indptr=indptr,
                   item_rows=agg["row"].to_numpy(dtype=np.int64), weights=agg["w"].to_numpy(dtype=np.float64))

    def _candidates(self, requests: _Requests, n_fetch: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(requests.user_ids)
        rows = np.full((n, n_fetch), -1, dtype=np.int64)
        scores = np.zeros((n, n_fetch), dtype=np.float32)
        for i, code in enumerate(requests.codes):
            if code < 0:
                continue
            lo, hi = self._indptr[code], min(self._indptr[code + 1], self._indptr[code] + n_fetch)
            rows[i, :hi - lo] = self._item_rows[lo:hi]
            scores[i, :hi - lo] = self._weights[lo:hi]
        return rows, scores


def _user_ids(user_ids: int | Sequence[int] | np.ndarray) -> np.ndarray:
    if isinstance(user_ids, bool):
        raise TypeError("user_ids must be an int or an array of ints, got bool")
    if isinstance(user_ids, int | np.integer):
        return np.array([user_ids], dtype=np.int64)
    arr = np.asarray(user_ids)
    if arr.ndim != 1:
        raise ValueError(f"user_ids must be one-dimensional, got shape {arr.shape}")
    if len(arr) and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"user_ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _per_user(value, n: int, name: str, missing):
    if value is None:
        return [missing] * n
    if isinstance(value, str | int | np.integer):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} must have one value per user ({n}), got {len(values)}")
    return [missing if v is None else v for v in values]
