"""Offline evaluation of retrievers: recall@K and NDCG@K of what users did next, with standard errors.

Two splits:

- **time** (:func:`time_split_queries`): queries are the users with at least one target event
  in ``[start_us, end_us)``; a user's targets are the distinct items of those events, and the
  request context is the user's first activity in the window (its device and UTC hour), i.e.
  the next visit. Retrievers only know what happened before ``start_us`` (they were built as
  of it), so nothing leaks.
- **leave-last-out** (:func:`leave_last_out_split`): each user's last target event is the
  target, and the log the retrievers learn from is cut, per user, at that event's time (the
  user's later events and impressions are removed). Other users' activity after it stays (the
  usual caveat of this protocol); it is the split for logs with an order but no timestamps.

Per-user scores (:func:`per_user_scores`) give a mean and its standard error
(``std(ddof=1) / sqrt(users)``: users are the independent units), and paired differences
between two retrievers on the same users (:func:`compare_retrievers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import EVENT_TYPES
from features.metrics import recall_at_k
from retrieval.inputs import HOUR_US
from retrieval.logs import EventLog
from retrieval.retriever import RequestContext, Retriever

__all__ = ["EvaluationQueries", "compare_retrievers", "evaluate_retrievers", "leave_last_out_split", "ndcg_at_k_score",
           "per_user_scores", "recall_at_k_score", "retrieve_ids", "time_split_queries"]


@dataclass(frozen=True)
class EvaluationQueries:
    """Users, their request context and their target items.

    Attributes
    ----------
    user_ids : ndarray of int64, shape (n,)
    context : RequestContext
        One device and hour per user.
    targets : tuple of ndarray of int64
        Distinct target item ids per user.
    """

    user_ids: np.ndarray
    context: RequestContext
    targets: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.user_ids)

    def subset(self, mask: np.ndarray) -> EvaluationQueries:
        """The queries where ``mask`` (bool, shape (n,)) is true."""
        return self.take(np.flatnonzero(mask))

    def take(self, idx: np.ndarray) -> EvaluationQueries:
        """The queries at positions ``idx``."""
        devices = list(self.context.device) if isinstance(self.context.device, list | tuple) else [None] * len(self)
        return EvaluationQueries(
            user_ids=self.user_ids[idx],
            context=RequestContext(device=[devices[i] for i in idx], hour=np.asarray(self.context.hour)[idx]),
            targets=tuple(self.targets[i] for i in idx))


def time_split_queries(log: EventLog, *, start_us: int, end_us: int, event_types: Sequence[str] = ("purchase",),
                       off_feed_only: bool = False, new_items_only: bool = False) -> EvaluationQueries:
    """Targets from events in ``[start_us, end_us)``.

    Parameters
    ----------
    log : EventLog
    start_us, end_us : int
    event_types : sequence of str
        Event types that are targets (e.g. ``("purchase",)`` or ``("click", "purchase")``).
    off_feed_only : bool
        Keep only events without an impression (search and direct traffic, not the logging policy's exposure).
    new_items_only : bool
        Drop targets the user had any event or impression for before ``start_us`` (no repeats).

    Raises
    ------
    ValueError
        ``end_us <= start_us`` or an unknown event type.
    """
    if end_us <= start_us:
        raise ValueError(f"end_us must be after start_us, got start_us={start_us}, end_us={end_us}")
    unknown = set(event_types) - set(EVENT_TYPES)
    if unknown or not event_types:
        raise ValueError(f"event_types must be a non-empty subset of {list(EVENT_TYPES)}, got {list(event_types)}")
    ev = log.events
    ts = ev["ts_us"].to_numpy()
    codes = [EVENT_TYPES.index(t) for t in event_types]
    mask = (ts >= start_us) & (ts < end_us) & np.isin(ev["type"].to_numpy(), codes)
    if off_feed_only:
        mask &= ev["impression_id"].to_numpy() < 0
    target = ev.loc[mask, ["user_id", "item_id"]].drop_duplicates()
    if new_items_only:
        before_ev = ev.loc[ts < start_us, ["user_id", "item_id"]]
        imp = log.impressions
        before_imp = imp.loc[imp["ts_us"].to_numpy() < start_us, ["user_id", "item_id"]]
        seen = pd.concat([before_ev, before_imp]).drop_duplicates()
        target = target.merge(seen, on=["user_id", "item_id"], how="left", indicator=True)
        target = target[target["_merge"] == "left_only"].drop(columns="_merge")
    target = target.sort_values(["user_id", "item_id"], kind="stable")
    users = target["user_id"].unique()

    # Context: the user's first activity (impression or event) in the window.
    imp = log.impressions
    imp_w = imp.loc[(imp["ts_us"].to_numpy() >= start_us) & (imp["ts_us"].to_numpy() < end_us),
                    ["user_id", "ts_us", "device"]]
    ev_w = ev.loc[(ts >= start_us) & (ts < end_us), ["user_id", "ts_us", "impression_id"]]
    device_of_imp = pd.Series(imp["device"].to_numpy(), index=imp["impression_id"].to_numpy())
    device_of_imp = device_of_imp[~device_of_imp.index.duplicated()]
    ev_w = ev_w.assign(device=device_of_imp.reindex(ev_w["impression_id"].to_numpy()).fillna("").to_numpy())
    activity = pd.concat([imp_w, ev_w[["user_id", "ts_us", "device"]]]).sort_values("ts_us", kind="stable")
    first = activity.drop_duplicates("user_id").set_index("user_id").reindex(users)
    hours = ((first["ts_us"].to_numpy() // HOUR_US) % 24).astype(np.int64)
    devices = [d if isinstance(d, str) and d else None for d in first["device"].to_numpy()]
    groups = target.groupby("user_id", sort=True)["item_id"]
    targets = tuple(np.asarray(groups.get_group(u), dtype=np.int64) for u in users)
    return EvaluationQueries(user_ids=np.asarray(users, dtype=np.int64),
                             context=RequestContext(device=devices, hour=hours), targets=targets)


def recall_at_k_score(retrieved: np.ndarray, targets: Sequence[np.ndarray], k: int) -> float:
    """Mean over users of ``|top-k retrieved ∩ targets| / |targets|``: :func:`features.metrics.recall_at_k`.

    The definition is that of :func:`features.metrics.recall_at_k` (users without targets
    skipped, NaN when none is left); this adapter turns id lists into its rows: each retrieved
    id scored by its position (a repeated id counts once, at its first position) and each
    target that was not retrieved in the top ``k`` as a row below all of them.

    Parameters
    ----------
    retrieved : ndarray of int64, shape (n, K)
        Item ids per user, best first; K >= k.
    targets : sequence of n arrays of item ids
        Users without targets are not counted.
    k : int

    Raises
    ------
    ValueError
        Shapes disagree or ``k`` is out of ``[1, K]``.
    """
    retrieved = np.asarray(retrieved)
    if retrieved.ndim != 2 or retrieved.shape[0] != len(targets):
        raise ValueError(f"retrieved must have shape (len(targets)={len(targets)}, K), got {retrieved.shape}")
    if not 1 <= k <= retrieved.shape[1]:
        raise ValueError(f"k must be in [1, {retrieved.shape[1]}], got {k}")
    n = len(targets)
    t_user = np.repeat(np.arange(n, dtype=np.int64), [len(t) for t in targets])
    t_item = np.concatenate([np.asarray(t).ravel() for t in targets]) if n else np.zeros(0, np.int64)
    if t_item.size == 0:
        return float("nan")
    top = retrieved[:, :k].ravel()
    # (user, item) pairs as one integer key; items coded densely unless their ids already fit.
    items = np.concatenate([top, t_item])
    if np.issubdtype(items.dtype, np.integer) and items.min() >= 0 and (int(items.max()) + 1) * n < 2 ** 62:
        codes, width = items.astype(np.int64), int(items.max()) + 1
    else:
        _, codes = np.unique(items, return_inverse=True)
        codes, width = codes.reshape(-1), int(codes.max()) + 1
    top_key = np.repeat(np.arange(n, dtype=np.int64), k) * width + codes[:top.size]
    t_key = np.unique(t_user * width + codes[top.size:])
    # Every one of the k slots stays a row (a repeat becomes an irrelevant filler), so targets not
    # retrieved rank at k or below and never count as hits.
    ordered = np.sort(retrieved[:, :k], axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        first = np.zeros(top.size, dtype=bool)
        first[np.unique(top_key, return_index=True)[1]] = True
    else:
        first = np.ones(top.size, dtype=bool)
    relevant = (first & _member(top_key, t_key)).astype(np.float64)
    missed = t_key[~_member(t_key, np.sort(top_key[relevant > 0]))]
    user = np.r_[top_key // width, missed // width]
    score = np.r_[-np.tile(np.arange(k, dtype=np.float64), n), np.full(missed.size, -float(k))]
    return recall_at_k(np.r_[relevant, np.ones(missed.size)], score, user, k)


def _member(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each value is in ``sorted_keys`` (a binary search: np.isin's hashing is slow on millions of keys)."""
    if sorted_keys.size == 0:
        return np.zeros(values.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, values), sorted_keys.size - 1)
    return sorted_keys[pos] == values


def ndcg_at_k_score(retrieved: np.ndarray, targets: Sequence[np.ndarray], k: int) -> float:
    """Mean over users of binary-gain NDCG@k of the retrieved list against the user's target set.

    ``DCG = sum over hits at rank r (1-based) of 1 / log2(r + 1)``; the ideal DCG puts
    ``min(|targets|, k)`` hits first. (``experiments.metrics.ndcg_score`` scores rows grouped into
    queries with graded labels; this one scores retrieved id lists against target sets.)

    Raises
    ------
    ValueError
        Shapes disagree or ``k`` is out of ``[1, K]``.
    """
    retrieved = _check_retrieved(retrieved, targets, k)
    per_user = _ndcg_per_user(retrieved[:, :k], targets)
    return float(np.nanmean(per_user)) if np.isfinite(per_user).any() else float("nan")


def _check_retrieved(retrieved: np.ndarray, targets: Sequence[np.ndarray], k: int) -> np.ndarray:
    retrieved = np.asarray(retrieved)
    if retrieved.ndim != 2 or retrieved.shape[0] != len(targets):
        raise ValueError(f"retrieved must have shape (len(targets)={len(targets)}, K), got {retrieved.shape}")
    if not 1 <= k <= retrieved.shape[1]:
        raise ValueError(f"k must be in [1, {retrieved.shape[1]}], got {k}")
    return retrieved


def _recall_per_user(retrieved: np.ndarray, targets: Sequence[np.ndarray]) -> np.ndarray:
    """Per-user values of :func:`recall_at_k_score` (``|targets in top k| / |targets|``; NaN without
    targets), for standard errors; :func:`recall_at_k_score` is their mean (tested)."""
    out = np.full(len(targets), np.nan)
    for i, t in enumerate(targets):
        t = np.unique(np.asarray(t))
        if len(t):
            out[i] = np.isin(t, retrieved[i]).mean()
    return out


def _ndcg_per_user(retrieved: np.ndarray, targets: Sequence[np.ndarray]) -> np.ndarray:
    k = retrieved.shape[1]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)
    out = np.full(len(targets), np.nan)
    for i, t in enumerate(targets):
        t = np.unique(np.asarray(t))
        if len(t):
            out[i] = discount[np.isin(retrieved[i], t)].sum() / ideal[min(len(t), k) - 1]
    return out


def per_user_scores(retrieved: np.ndarray, targets: Sequence[np.ndarray], ks: Sequence[int]) -> dict[str, np.ndarray]:
    """``{"recall@k": ..., "ndcg@k": ...}``: one value per user (NaN for users without targets)."""
    out = {}
    for k in ks:
        top = _check_retrieved(retrieved, targets, k)[:, :k]
        out[f"recall@{k}"] = _recall_per_user(top, targets)
        out[f"ndcg@{k}"] = _ndcg_per_user(top, targets)
    return out


def _mean_se(values: np.ndarray) -> dict[str, float]:
    v = values[np.isfinite(values)]
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()) if len(v) else float("nan"), "se": se}


def retrieve_ids(retriever: Retriever, queries: EvaluationQueries, k: int, *, batch_size: int = 2048) -> np.ndarray:
    """Top-``k`` item ids (int64, shape (len(queries), k)) of ``retriever`` for every query.

    Raises
    ------
    ValueError
        The retriever returned fewer than ``k`` ids per user (the catalog is too small).
    """
    rows = []
    for lo in range(0, len(queries), batch_size):
        part = queries.take(np.arange(lo, min(lo + batch_size, len(queries))))
        ids, _ = retriever.recommend(part.user_ids, part.context, k=k)
        rows.append(ids)
    retrieved = np.concatenate(rows) if rows else np.zeros((0, k), np.int64)
    if retrieved.shape[1] < k:
        raise ValueError(f"the retriever returned {retrieved.shape[1]} ids per user, fewer than k={k} "
                         "(the catalog is too small for this evaluation)")
    return retrieved


def evaluate_retrievers(retrievers: Mapping[str, Retriever], queries: EvaluationQueries, *,
                        ks: Sequence[int] = (100, 500), batch_size: int = 2048) -> dict[str, dict[str, float]]:
    """Recall@k of each retriever on ``queries``: ``{name: {"recall@100": ..., ...}}``."""
    k_max = max(ks)
    out = {}
    for name, retriever in retrievers.items():
        try:
            retrieved = retrieve_ids(retriever, queries, k_max, batch_size=batch_size)
        except ValueError as exc:
            raise ValueError(f"retriever {name}: {exc}") from None
        out[name] = {f"recall@{k}": recall_at_k_score(retrieved, queries.targets, k) for k in ks}
        out[name]["users"] = len(queries)
    return out


def compare_retrievers(retrievers: Mapping[str, Retriever], queries: EvaluationQueries, *,
                       ks: Sequence[int] = (10, 100, 500), baseline: str | None = "popularity",
                       batch_size: int = 2048) -> dict[str, dict]:
    """Recall@k and NDCG@k of each retriever with standard errors, and paired differences to ``baseline``.

    Returns
    -------
    dict
        ``{name: {"recall@10": {"mean", "se"}, "ndcg@10": {...}, ..., "users": n,
        "vs_<baseline>": {"recall@10": {"mean", "se"}, ...}}}``; a difference is the mean over users
        of (retriever - baseline) and its standard error, computed on the same users.
    """
    k_max = max(ks)
    scores = {}
    for name, retriever in retrievers.items():
        try:
            scores[name] = per_user_scores(retrieve_ids(retriever, queries, k_max, batch_size=batch_size),
                                           queries.targets, ks)
        except ValueError as exc:
            raise ValueError(f"retriever {name}: {exc}") from None
    out: dict[str, dict] = {}
    for name, per_metric in scores.items():
        out[name] = {metric: _mean_se(values) for metric, values in per_metric.items()}
        out[name]["users"] = len(queries)
        if baseline in scores and name != baseline:
            out[name][f"vs_{baseline}"] = {metric: _mean_se(values - scores[baseline][metric])
                                           for metric, values in per_metric.items()}
    return out


def leave_last_out_split(log: EventLog, *, event_types: Sequence[str] = ("click", "add_to_cart", "purchase"),
                         new_items_only: bool = False) -> tuple[EventLog, EvaluationQueries]:
    """Hold out each user's last event of ``event_types``; the log to learn from stops before it.

    A user's cut is the time of their last such event; their targets are the distinct items of
    such events at that time, and their events and impressions at or after it are removed from
    the returned log. Users with nothing left before the cut (no history) are not queries (their
    targets still leave the log). The context is the cut's UTC hour.

    Parameters
    ----------
    log : EventLog
    event_types : sequence of str
    new_items_only : bool
        Keep only targets the user had no event or impression for before the cut.

    Raises
    ------
    ValueError
        An unknown event type, or no user has such an event.
    """
    unknown = set(event_types) - set(EVENT_TYPES)
    if unknown or not event_types:
        raise ValueError(f"event_types must be a non-empty subset of {list(EVENT_TYPES)}, got {list(event_types)}")
    ev, imp = log.events, log.impressions
    is_target = np.isin(ev["type"].to_numpy(), [EVENT_TYPES.index(t) for t in event_types])
    if not is_target.any():
        raise ValueError(f"the log has no events of types {list(event_types)} to hold out")
    cut = ev.loc[is_target].groupby("user_id")["ts_us"].max()
    ev_cut = cut.reindex(ev["user_id"].to_numpy()).to_numpy()
    imp_cut = cut.reindex(imp["user_id"].to_numpy()).to_numpy()
    ev_keep = ~(ev["ts_us"].to_numpy() >= ev_cut)  # NaN cut (users without targets) keeps everything
    imp_keep = ~(imp["ts_us"].to_numpy() >= imp_cut)
    target = ev.loc[is_target & (ev["ts_us"].to_numpy() == ev_cut), ["user_id", "item_id"]].drop_duplicates()
    train = EventLog(users=log.users, sellers=log.sellers, items=log.items,
                     impressions=imp[imp_keep].reset_index(drop=True), events=ev[ev_keep].reset_index(drop=True))
    seen = pd.concat([train.events[["user_id", "item_id"]], train.impressions[["user_id", "item_id"]]])
    if new_items_only:
        target = target.merge(seen.drop_duplicates(), on=["user_id", "item_id"], how="left", indicator=True)
        target = target[target["_merge"] == "left_only"].drop(columns="_merge")
    warm = np.isin(target["user_id"].to_numpy(), seen["user_id"].unique())
    target = target[warm].sort_values(["user_id", "item_id"], kind="stable")
    users = target["user_id"].unique()
    hours = ((cut.reindex(users).to_numpy(dtype=np.int64) // HOUR_US) % 24).astype(np.int64)
    groups = target.groupby("user_id", sort=True)["item_id"]
    targets = tuple(np.asarray(groups.get_group(u), dtype=np.int64) for u in users)
    queries = EvaluationQueries(user_ids=np.asarray(users, dtype=np.int64),
                                context=RequestContext(device=[None] * len(users), hour=hours), targets=targets)
    return train, queries
