"""Private ranking helpers: query boundaries, and NDCG@k over LightGBM-style grouped rows.

NDCG itself is defined once, in :mod:`features.metrics`; :func:`ndcg_at_k` only adapts
LightGBM's group convention (contiguous queries given by their sizes) to it.
"""

from __future__ import annotations

import numpy as np

from features.metrics import Gain, ndcg_score

__all__ = ["group_sizes", "ndcg_at_k", "query_index"]


def group_sizes(query_ids: np.ndarray) -> np.ndarray:
    """Sizes of the runs of equal values in ``query_ids`` (shape (n,)), in order of appearance.

    Raises
    ------
    ValueError
        When a query id appears in more than one run (rows of a query must be contiguous).
    """
    query_ids = np.asarray(query_ids)
    if len(query_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, query_ids[1:] != query_ids[:-1]])
    if len(np.unique(query_ids[starts])) != len(starts):
        raise ValueError("group must list each query's rows contiguously (sort rows by query first)")
    return np.diff(np.r_[starts, len(query_ids)]).astype(np.int64)


def query_index(sizes: np.ndarray) -> np.ndarray:
    """Query number (0..Q-1) of each row, for group ``sizes`` (shape (Q,)); shape (sum(sizes),)."""
    return np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)


def ndcg_at_k(relevance: np.ndarray, score: np.ndarray, sizes: np.ndarray, k: int, *,
              gain: Gain = "exp2", query_weight: np.ndarray | None = None) -> float:
    """Mean NDCG@k over contiguous queries: :func:`features.metrics.ndcg_score` for rows grouped by ``sizes``.

    The definition (gain ``2**x - 1`` or linear, ties averaged, queries without a relevant
    row skipped, NaN when none is left) is that of :func:`features.metrics.ndcg_score`; this
    adapter only takes LightGBM's group convention. It differs from LightGBM's own ``ndcg@k``,
    which counts a query without a relevant row as 1 and breaks ties by row order.

    Parameters
    ----------
    relevance, score : ndarray of float, shape (n,)
    sizes : ndarray of int, shape (Q,)
        Rows per query; queries are contiguous.
    k : int
    gain : {"exp2", "linear"}
    query_weight : ndarray of float, shape (Q,), optional
        Weighted mean over queries.

    Returns
    -------
    float
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    weight = None if query_weight is None else np.repeat(np.asarray(query_weight, dtype=np.float64), sizes)
    return ndcg_score(relevance, score, query_index(sizes), k, gain=gain, sample_weight=weight)
