"""Private ranking helpers: query boundaries and NDCG@k over grouped rows.

The evaluation package (``experiments``) sits above ranking, so ranking keeps the small
amount of metric code it needs for validation here; the inputs are trusted (callers validate).
"""

from __future__ import annotations

import numpy as np

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
              gain: str = "exp2", query_weight: np.ndarray | None = None) -> float:
    """Mean NDCG@k over queries, ranking each query's rows by ``score`` (descending).

    ``DCG@k = sum_{r < k} g(rel_(r)) / log2(r + 2)`` with ``g(x) = 2**x - 1`` (``gain="exp2"``,
    LightGBM's default for integer grades) or ``g(x) = x`` (``gain="linear"``, for real-valued
    relevance such as a true probability). NDCG divides by the DCG of the ideal order; a query
    whose ideal DCG is 0 counts as 1, as LightGBM does. Ties in ``score`` are broken by row
    order, so a constant score is judged as the given order.

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
    relevance = np.asarray(relevance, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    q = query_index(sizes)
    rows = np.arange(len(q))
    gains = np.exp2(relevance) - 1.0 if gain == "exp2" else relevance
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    # Rank within query by score (descending, stable by row), and by relevance for the ideal DCG.
    by_score = np.lexsort((rows, -score, q))
    by_ideal = np.lexsort((rows, -gains, q))
    rank = rows - starts[q]  # q is sorted, so after either lexsort row i sits at rank i - start
    discount = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    dcg = np.bincount(q, weights=gains[by_score] * discount, minlength=len(sizes))
    ideal = np.bincount(q, weights=gains[by_ideal] * discount, minlength=len(sizes))
    per_query = np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 1.0)
    if query_weight is None:
        return float(per_query.mean()) if len(per_query) else float("nan")
    return float(np.average(per_query, weights=query_weight))
