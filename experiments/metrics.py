"""Offline ranking, calibration and marketplace metrics as pure functions over grouped arrays.

Every ranking metric takes flat 1-D arrays of equal length, one row per (request, item):
``y_true`` (graded relevance, or 0/1), ``y_score`` (the model's score) and ``group`` (the
request/query id of the row). Rows of one group need not be contiguous. Public functions
validate their inputs once (``TypeError`` for a wrong type, ``ValueError`` naming the argument
for a bad value) and then call private helpers that trust them.

Ties in ``y_score`` are handled by averaging over all orderings of the tied items (as
``sklearn.metrics.ndcg_score`` does with ``ignore_ties=False``), so a metric never depends on
the order of the input rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.metrics import log_loss as _sk_log_loss
from sklearn.metrics import roc_auc_score as _sk_roc_auc_score

__all__ = [
    "ReliabilityCurve",
    "auc_score",
    "catalog_coverage",
    "expected_calibration_error",
    "expected_gmv_per_mille",
    "exposure_gini",
    "ips_ndcg_score",
    "log_loss",
    "mrr_score",
    "ndcg_score",
    "new_seller_exposure_share",
    "recall_at_k",
    "reliability_curve",
]

logger = logging.getLogger(__name__)

BinStrategy = Literal["uniform", "quantile"]


# --------------------------------------------------------------------------- validation


def _fail(name: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"{name} must be {expected}, got {got}")


def _array_1d(values: Any, name: str) -> np.ndarray:
    """Return ``values`` as a non-empty 1-D array, or raise TypeError / ValueError."""
    if values is None or isinstance(values, (str, bytes, dict)):
        raise TypeError(f"{name} must be array-like, got {type(values).__name__}")
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise _fail(name, "a 1-D array", f"shape {arr.shape}")
    if arr.size == 0:
        raise _fail(name, "non-empty", "an empty array")
    return arr


def _float_1d(
    values: Any,
    name: str,
    *,
    low: float = -np.inf,
    high: float = np.inf,
    low_inclusive: bool = True,
) -> np.ndarray:
    """Return a finite float64 1-D array whose values lie in ``[low, high]`` (or ``(low, high]``)."""
    arr = _array_1d(values, name)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise _fail(name, "finite (no NaN or inf)", f"{int(np.sum(~np.isfinite(arr)))} non-finite values")
    below = arr < low if low_inclusive else arr <= low
    if np.any(below) or np.any(arr > high):
        bracket = "[" if low_inclusive else "("
        raise _fail(name, f"in {bracket}{low}, {high}]", f"min {arr.min()}, max {arr.max()}")
    return arr


def _binary_1d(values: Any, name: str) -> np.ndarray:
    """Return a 0/1 float64 array; booleans and 0/1 numbers are accepted."""
    arr = _float_1d(values, name)
    if not np.all((arr == 0.0) | (arr == 1.0)):
        raise _fail(name, "binary (0/1 or bool)", f"values {np.unique(arr)[:5]}")
    return arr


def _group_codes(group: Any) -> tuple[np.ndarray, int]:
    """Map group ids to dense codes ``0..n_groups-1`` (sorted by id)."""
    arr = _array_1d(group, "group")
    try:
        _, codes = np.unique(arr, return_inverse=True)
    except TypeError as err:
        raise TypeError(f"group must hold mutually comparable ids, got dtype {arr.dtype}") from err
    return codes.reshape(-1), int(codes.max()) + 1


def _check_lengths(**arrays: np.ndarray) -> None:
    """Raise ValueError naming the first array whose length differs from the first one's."""
    (first, ref), *rest = arrays.items()
    for name, arr in rest:
        if arr.shape[0] != ref.shape[0]:
            raise _fail(f"{name}", f"of the same length as {first} ({ref.shape[0]})", arr.shape[0])


def _check_k(k: int | None) -> None:
    if k is None:
        return
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int or None, got {type(k).__name__}")
    if k < 1:
        raise _fail("k", ">= 1", k)


def _group_weights(sample_weight: Any, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group weights from a per-row weight that must be constant within each group."""
    if sample_weight is None:
        return np.ones(n_groups)
    w = _float_1d(sample_weight, "sample_weight", low=0.0)
    _check_lengths(group=codes, sample_weight=w)
    per_group = np.empty(n_groups)
    per_group[codes] = w
    if not np.array_equal(per_group[codes], w):
        raise _fail("sample_weight", "constant within each group (one weight per query)", "varying weights")
    return per_group


def _ranking_inputs(
    y_true: Any, y_score: Any, group: Any, k: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    y = _float_1d(y_true, "y_true", low=0.0)
    s = _float_1d(y_score, "y_score")
    codes, n_groups = _group_codes(group)
    _check_lengths(y_true=y, y_score=s, group=codes)
    _check_k(k)
    return y, s, codes, n_groups


# ------------------------------------------------------------------------ ranking helpers


def _ranks_within_groups(codes_sorted: np.ndarray, n_groups: int) -> np.ndarray:
    """0-based rank of each row inside its group, for rows already sorted by group code."""
    counts = np.bincount(codes_sorted, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return np.arange(codes_sorted.size) - starts[codes_sorted]


def _log2_discount(ranks: np.ndarray, k: int | None) -> np.ndarray:
    """``1 / log2(rank + 2)`` for 0-based ranks below ``k``, else 0."""
    disc = 1.0 / np.log2(ranks + 2.0)
    return disc if k is None else np.where(ranks < k, disc, 0.0)


def _top_k_indicator(ranks: np.ndarray, k: int | None) -> np.ndarray:
    return np.ones(ranks.size) if k is None else (ranks < k).astype(np.float64)


def _tie_averaged_position_weights(
    y_score: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    position_weight: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Order rows by (group, score descending) and give each row its position weight.

    Rows with equal score in one group share the mean weight of the positions they occupy,
    which is the expected weight under a uniformly random tie-break.

    Returns
    -------
    order : ndarray of shape (n,)
        Row indices sorted by group code, then by score descending.
    weights : ndarray of shape (n,)
        Tie-averaged position weight of each row of ``order``.
    """
    order = np.lexsort((-y_score, codes))
    codes_s, score_s = codes[order], y_score[order]
    weights = position_weight(_ranks_within_groups(codes_s, n_groups))
    new_block = np.ones(order.size, dtype=bool)
    new_block[1:] = (codes_s[1:] != codes_s[:-1]) | (score_s[1:] != score_s[:-1])
    block = np.cumsum(new_block) - 1
    block_mean = np.bincount(block, weights=weights) / np.bincount(block)
    return order, block_mean[block]


def _per_group_dcg(
    gain: np.ndarray, y_score: np.ndarray, codes: np.ndarray, n_groups: int, k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """DCG@k of the scored order and of the ideal order, one value per group.

    ``DCG@k = sum_{r < k} gain_(r) / log2(r + 2)`` with 0-based rank ``r``.
    """

    def discount(ranks: np.ndarray) -> np.ndarray:
        return _log2_discount(ranks, k)

    order, disc = _tie_averaged_position_weights(y_score, codes, n_groups, discount)
    dcg = np.bincount(codes[order], weights=gain[order] * disc, minlength=n_groups)
    ideal = np.lexsort((-gain, codes))
    ideal_disc = discount(_ranks_within_groups(codes[ideal], n_groups))
    idcg = np.bincount(codes[ideal], weights=gain[ideal] * ideal_disc, minlength=n_groups)
    return dcg, idcg


def _weighted_group_mean(
    per_group: np.ndarray, valid: np.ndarray, group_weight: np.ndarray, metric: str
) -> float:
    """Weighted mean of ``per_group`` over valid groups, NaN (with a log line) when none count."""
    w = group_weight * valid
    total = w.sum()
    if total <= 0.0:
        logger.warning("%s is undefined: no group with a relevant item and positive weight", metric)
        return float("nan")
    return float(np.sum(np.where(valid, per_group, 0.0) * w) / total)


# ------------------------------------------------------------------------ ranking metrics


def ndcg_score(
    y_true: Any,
    y_score: Any,
    group: Any,
    k: int | None = 10,
    *,
    sample_weight: Any = None,
) -> float:
    """Mean NDCG@k over groups, with exponential gain and log2 discount.

    For one group with items sorted by ``y_score`` descending (0-based rank ``r``)::

        DCG@k  = sum_{r < k} (2**rel_(r) - 1) / log2(r + 2)
        NDCG@k = DCG@k / IDCG@k

    where ``IDCG@k`` is the DCG@k of the items sorted by relevance. Tied scores get the
    average discount of the positions they share.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Graded relevance, ``>= 0`` (0/1 labels work too).
    y_score : array-like of shape (n,)
        Scores; higher ranks first.
    group : array-like of shape (n,)
        Query/request id of each row; rows of a group need not be contiguous.
    k : int or None, default=10
        Cut-off; ``None`` uses the whole list.
    sample_weight : array-like of shape (n,), optional
        Weight of each row's group; must be constant within a group.

    Returns
    -------
    float
        Weighted mean NDCG@k over groups that hold at least one item with ``y_true > 0``.
        Groups without a relevant item are skipped (their NDCG is 0/0); NaN when no group is left.

    Raises
    ------
    TypeError
        If an input is not array-like of numbers, or ``k`` is not an int.
    ValueError
        If arrays differ in length, are empty or not 1-D, hold NaN/inf, ``y_true`` is
        negative, ``k < 1``, or ``sample_weight`` varies within a group.
    """
    y, s, codes, n_groups = _ranking_inputs(y_true, y_score, group, k)
    group_weight = _group_weights(sample_weight, codes, n_groups)
    return _ndcg(np.exp2(y) - 1.0, s, codes, n_groups, k, group_weight, "ndcg_score")


def ips_ndcg_score(
    y_true: Any,
    y_score: Any,
    group: Any,
    propensity: Any,
    k: int | None = 10,
    *,
    clip: float = 0.01,
    sample_weight: Any = None,
) -> float:
    """Mean NDCG@k with each observed gain divided by its (clipped) examination propensity.

    Logged relevance (clicks, purchases) is only seen where a slot was examined. Inverse
    propensity scoring re-weights each row's gain so that, in expectation over examination,
    it equals the gain it would have had if examined::

        g_i      = (2**rel_i - 1) / max(propensity_i, clip)
        DCG@k    = sum_{r < k} g_(r) / log2(r + 2)
        IPS-NDCG = DCG@k / IDCG@k        (IDCG@k from the same weighted gains)

    With all propensities equal to 1 this is :func:`ndcg_score`.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Observed graded relevance, ``>= 0``.
    y_score : array-like of shape (n,)
        Scores of the policy under evaluation.
    group : array-like of shape (n,)
        Query/request id of each row.
    propensity : array-like of shape (n,)
        Examination probability of the slot where the row was logged, in ``(0, 1]``.
    k : int or None, default=10
        Cut-off; ``None`` uses the whole list.
    clip : float, default=0.01
        Lower bound applied to ``propensity`` (so no weight exceeds ``1 / clip``), in ``(0, 1]``.
    sample_weight : array-like of shape (n,), optional
        Weight of each row's group; must be constant within a group.

    Returns
    -------
    float
        Weighted mean over groups holding a relevant item; NaN when there is none.

    Raises
    ------
    TypeError
        As :func:`ndcg_score`, or if ``clip`` is not a real number.
    ValueError
        As :func:`ndcg_score`, or if ``propensity`` is outside ``(0, 1]``, has another length,
        or ``clip`` is outside ``(0, 1]``.
    """
    y, s, codes, n_groups = _ranking_inputs(y_true, y_score, group, k)
    p = _float_1d(propensity, "propensity", low=0.0, high=1.0, low_inclusive=False)
    _check_lengths(y_true=y, propensity=p)
    if isinstance(clip, bool) or not isinstance(clip, (int, float, np.floating)):
        raise TypeError(f"clip must be a float, got {type(clip).__name__}")
    if not 0.0 < clip <= 1.0:
        raise _fail("clip", "in (0, 1]", clip)
    group_weight = _group_weights(sample_weight, codes, n_groups)
    gain = (np.exp2(y) - 1.0) / np.maximum(p, clip)
    return _ndcg(gain, s, codes, n_groups, k, group_weight, "ips_ndcg_score")


def _ndcg(
    gain: np.ndarray,
    y_score: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    k: int | None,
    group_weight: np.ndarray,
    metric: str,
) -> float:
    dcg, idcg = _per_group_dcg(gain, y_score, codes, n_groups, k)
    valid = idcg > 0.0
    per_group = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=valid)
    return _weighted_group_mean(per_group, valid, group_weight, metric)


def recall_at_k(
    y_true: Any,
    y_score: Any,
    group: Any,
    k: int = 10,
    *,
    sample_weight: Any = None,
) -> float:
    """Mean recall@k over groups: relevant items in the top k over all relevant items of the group.

    An item is relevant when ``y_true > 0``. Per group::

        recall@k = |relevant ∩ top-k by score| / |relevant|

    The denominator is the number of relevant items, not ``min(k, |relevant|)``, so a group
    with more than ``k`` relevant items cannot reach 1. Items tied with the k-th score count
    fractionally (expected hits under a random tie-break).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Relevance, ``>= 0``.
    y_score : array-like of shape (n,)
        Scores (e.g. retrieval similarity).
    group : array-like of shape (n,)
        Query/request id of each row.
    k : int, default=10
        Cut-off, ``>= 1``.
    sample_weight : array-like of shape (n,), optional
        Weight of each row's group; must be constant within a group.

    Returns
    -------
    float
        Weighted mean over groups holding a relevant item (others are skipped); NaN if none.

    Raises
    ------
    TypeError, ValueError
        As :func:`ndcg_score`.
    """
    if k is None:
        raise TypeError("k must be an int, got NoneType")
    y, s, codes, n_groups = _ranking_inputs(y_true, y_score, group, k)
    group_weight = _group_weights(sample_weight, codes, n_groups)
    relevant = (y > 0.0).astype(np.float64)

    def in_top_k(ranks: np.ndarray) -> np.ndarray:
        return _top_k_indicator(ranks, k)

    order, hit_weight = _tie_averaged_position_weights(s, codes, n_groups, in_top_k)
    hits = np.bincount(codes[order], weights=relevant[order] * hit_weight, minlength=n_groups)
    n_relevant = np.bincount(codes, weights=relevant, minlength=n_groups)
    valid = n_relevant > 0.0
    per_group = np.divide(hits, n_relevant, out=np.zeros(n_groups), where=valid)
    return _weighted_group_mean(per_group, valid, group_weight, "recall_at_k")


def mrr_score(
    y_true: Any,
    y_score: Any,
    group: Any,
    k: int | None = None,
    *,
    sample_weight: Any = None,
) -> float:
    """Mean reciprocal rank of the first relevant item (``y_true > 0``) per group.

    Per group, with 1-based ``rank`` of the best-scored relevant item::

        RR = 1 / rank   if rank <= k else 0

    When that item's score is tied, ``rank = 1 + n_higher + n_tied_irrelevant / (n_tied_relevant + 1)``,
    the expected rank of the first relevant item under a random tie-break; with no ties this is
    the usual rank.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Relevance, ``>= 0``.
    y_score : array-like of shape (n,)
        Scores.
    group : array-like of shape (n,)
        Query/request id of each row.
    k : int or None, default=None
        Optional cut-off; a first relevant item ranked below ``k`` scores 0.
    sample_weight : array-like of shape (n,), optional
        Weight of each row's group; must be constant within a group.

    Returns
    -------
    float
        Weighted mean over groups holding a relevant item (others are skipped); NaN if none.

    Raises
    ------
    TypeError, ValueError
        As :func:`ndcg_score`.
    """
    y, s, codes, n_groups = _ranking_inputs(y_true, y_score, group, k)
    group_weight = _group_weights(sample_weight, codes, n_groups)
    relevant = y > 0.0
    best = np.full(n_groups, -np.inf)
    np.maximum.at(best, codes[relevant], s[relevant])
    best_row = best[codes]
    tied = s == best_row
    n_higher = np.bincount(codes, weights=s > best_row, minlength=n_groups)
    tied_irrelevant = np.bincount(codes, weights=tied & ~relevant, minlength=n_groups)
    tied_relevant = np.bincount(codes, weights=tied & relevant, minlength=n_groups)
    rank = 1.0 + n_higher + tied_irrelevant / (tied_relevant + 1.0)
    rr = 1.0 / rank if k is None else np.where(rank <= k, 1.0 / rank, 0.0)
    valid = np.bincount(codes, weights=relevant, minlength=n_groups) > 0.0
    return _weighted_group_mean(rr, valid, group_weight, "mrr_score")


# ----------------------------------------------------------------- classification metrics


def log_loss(y_true: Any, y_prob: Any, *, sample_weight: Any = None) -> float:
    """Mean binary cross-entropy ``-mean(y log p + (1 - y) log(1 - p))`` (scikit-learn's).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Binary labels (0/1 or bool).
    y_prob : array-like of shape (n,)
        Predicted probability of label 1, in ``[0, 1]``; scikit-learn clips it away from 0 and 1.
    sample_weight : array-like of shape (n,), optional
        Non-negative row weights.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        If an input is not array-like of numbers.
    ValueError
        If ``y_true`` is not binary, ``y_prob`` is outside ``[0, 1]``, or lengths differ.
    """
    y = _binary_1d(y_true, "y_true")
    p = _float_1d(y_prob, "y_prob", low=0.0, high=1.0)
    _check_lengths(y_true=y, y_prob=p)
    w = None if sample_weight is None else _float_1d(sample_weight, "sample_weight", low=0.0)
    if w is not None:
        _check_lengths(y_true=y, sample_weight=w)
    return float(_sk_log_loss(y, p, sample_weight=w, labels=[0.0, 1.0]))


def auc_score(y_true: Any, y_score: Any, *, sample_weight: Any = None) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``), pooled over all rows.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Binary labels (0/1 or bool); both classes must occur.
    y_score : array-like of shape (n,)
        Scores; higher means more likely positive.
    sample_weight : array-like of shape (n,), optional
        Non-negative row weights.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        If an input is not array-like of numbers.
    ValueError
        If ``y_true`` is not binary or holds one class only, or lengths differ.
    """
    y = _binary_1d(y_true, "y_true")
    s = _float_1d(y_score, "y_score")
    _check_lengths(y_true=y, y_score=s)
    if np.all(y == y[0]):
        raise _fail("y_true", "holding both classes 0 and 1", f"only {y[0]:g}")
    w = None if sample_weight is None else _float_1d(sample_weight, "sample_weight", low=0.0)
    if w is not None:
        _check_lengths(y_true=y, sample_weight=w)
    return float(_sk_roc_auc_score(y, s, sample_weight=w))


@dataclass(frozen=True, eq=False)
class ReliabilityCurve:
    """Per-bin calibration summary; only non-empty bins are kept.

    Attributes
    ----------
    mean_predicted : ndarray of shape (n_nonempty_bins,)
        Mean predicted probability in each bin.
    observed_rate : ndarray of shape (n_nonempty_bins,)
        Fraction of positive labels in each bin.
    count : ndarray of shape (n_nonempty_bins,)
        Number of rows in each bin.
    bin_lower, bin_upper : ndarray of shape (n_nonempty_bins,)
        Bin edges; bins are ``[lower, upper)`` except the last, which is closed.
    """

    mean_predicted: np.ndarray
    observed_rate: np.ndarray
    count: np.ndarray
    bin_lower: np.ndarray
    bin_upper: np.ndarray


def reliability_curve(
    y_true: Any, y_prob: Any, n_bins: int = 15, strategy: BinStrategy = "uniform"
) -> ReliabilityCurve:
    """Bin predictions and return per-bin mean prediction, observed positive rate and count.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Binary labels.
    y_prob : array-like of shape (n,)
        Predicted probabilities in ``[0, 1]``.
    n_bins : int, default=15
        Number of bins, ``>= 1``.
    strategy : {"uniform", "quantile"}, default="uniform"
        ``"uniform"``: equal-width bins on ``[0, 1]``; ``"quantile"``: edges at the quantiles
        of ``y_prob`` so bins hold about equal counts (duplicate edges merge bins).

    Returns
    -------
    ReliabilityCurve

    Raises
    ------
    TypeError
        If ``n_bins`` is not an int or an array is not numeric.
    ValueError
        If labels are not binary, probabilities leave ``[0, 1]``, lengths differ,
        ``n_bins < 1`` or ``strategy`` is unknown.
    """
    y, p = _calibration_inputs(y_true, y_prob, n_bins, strategy)
    return _reliability(y, p, n_bins, strategy)


def expected_calibration_error(
    y_true: Any, y_prob: Any, n_bins: int = 15, strategy: BinStrategy = "uniform"
) -> float:
    """Expected calibration error: count-weighted mean gap between prediction and outcome per bin.

    ``ECE = sum_b (n_b / n) * |mean(p in b) - mean(y in b)|`` over the bins of
    :func:`reliability_curve`.

    Parameters
    ----------
    y_true, y_prob, n_bins, strategy
        As :func:`reliability_curve`.

    Returns
    -------
    float
        ECE in ``[0, 1]``; 0 is perfectly calibrated at this binning.

    Raises
    ------
    TypeError, ValueError
        As :func:`reliability_curve`.
    """
    y, p = _calibration_inputs(y_true, y_prob, n_bins, strategy)
    curve = _reliability(y, p, n_bins, strategy)
    gaps = np.abs(curve.mean_predicted - curve.observed_rate)
    return float(np.sum(curve.count * gaps) / np.sum(curve.count))


def _calibration_inputs(
    y_true: Any, y_prob: Any, n_bins: int, strategy: str
) -> tuple[np.ndarray, np.ndarray]:
    y = _binary_1d(y_true, "y_true")
    p = _float_1d(y_prob, "y_prob", low=0.0, high=1.0)
    _check_lengths(y_true=y, y_prob=p)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"n_bins must be an int, got {type(n_bins).__name__}")
    if n_bins < 1:
        raise _fail("n_bins", ">= 1", n_bins)
    if strategy not in ("uniform", "quantile"):
        raise _fail("strategy", "'uniform' or 'quantile'", repr(strategy))
    return y, p


def _reliability(y: np.ndarray, p: np.ndarray, n_bins: int, strategy: str) -> ReliabilityCurve:
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
    # Interior edges only: a value equal to an edge goes to the upper bin, 1.0 to the last.
    idx = np.searchsorted(edges[1:-1], p, side="right")
    count = np.bincount(idx, minlength=n_bins)
    nonempty = count > 0
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    return ReliabilityCurve(
        mean_predicted=sum_p[nonempty] / count[nonempty],
        observed_rate=sum_y[nonempty] / count[nonempty],
        count=count[nonempty],
        bin_lower=edges[:-1][nonempty],
        bin_upper=edges[1:][nonempty],
    )


# ------------------------------------------------------------------ marketplace metrics


def expected_gmv_per_mille(p_purchase: Any, price: Any, margin_rate: Any = None) -> float:
    """Expected GMV (or margin) per 1,000 impressions.

    ``1000 * mean_i(p_purchase_i * price_i)``; with ``margin_rate`` the expected margin
    ``1000 * mean_i(p_purchase_i * price_i * margin_rate_i)`` instead. GMV always uses the
    price; pass ``margin_rate`` only when the question is what the marketplace keeps.

    Parameters
    ----------
    p_purchase : array-like of shape (n,)
        Calibrated purchase probability of each impression, in ``[0, 1]``.
    price : array-like of shape (n,)
        Item price, ``>= 0``.
    margin_rate : array-like of shape (n,), optional
        Marketplace margin as a fraction of price, in ``[0, 1]``.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        If an input is not array-like of numbers.
    ValueError
        If a value is out of range or non-finite, or lengths differ.
    """
    p = _float_1d(p_purchase, "p_purchase", low=0.0, high=1.0)
    value = _float_1d(price, "price", low=0.0)
    _check_lengths(p_purchase=p, price=value)
    if margin_rate is not None:
        m = _float_1d(margin_rate, "margin_rate", low=0.0, high=1.0)
        _check_lengths(p_purchase=p, margin_rate=m)
        value = value * m
    return float(1000.0 * np.mean(p * value))


def catalog_coverage(recommended_item_ids: Any, catalog_size: int) -> float:
    """Share of the catalog that appears at least once among the recommendations.

    ``coverage = |distinct recommended ids| / catalog_size``.

    Parameters
    ----------
    recommended_item_ids : array-like of any shape, e.g. (n_requests, k)
        Recommended item ids; flattened before counting.
    catalog_size : int
        Number of items in the catalog, ``>= 1``.

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    TypeError
        If ``catalog_size`` is not an int or the ids are not array-like.
    ValueError
        If the ids are empty, or there are more distinct ids than ``catalog_size``.
    """
    if recommended_item_ids is None or isinstance(recommended_item_ids, (str, bytes, dict)):
        raise TypeError(
            f"recommended_item_ids must be array-like, got {type(recommended_item_ids).__name__}"
        )
    if isinstance(catalog_size, bool) or not isinstance(catalog_size, (int, np.integer)):
        raise TypeError(f"catalog_size must be an int, got {type(catalog_size).__name__}")
    if catalog_size < 1:
        raise _fail("catalog_size", ">= 1", catalog_size)
    ids = np.asarray(recommended_item_ids).reshape(-1)
    if ids.size == 0:
        raise _fail("recommended_item_ids", "non-empty", "an empty array")
    n_distinct = np.unique(ids).size
    if n_distinct > catalog_size:
        raise _fail(
            "catalog_size", f">= the number of distinct recommended ids ({n_distinct})", catalog_size
        )
    return n_distinct / int(catalog_size)


def _position_exposure(positions: np.ndarray, examination: np.ndarray | None) -> np.ndarray:
    """Exposure of each 0-based position: ``examination[pos]`` or ``1 / log2(pos + 2)``."""
    if examination is None:
        return 1.0 / np.log2(positions + 2.0)
    return examination[positions]


def new_seller_exposure_share(
    is_new_seller: Any, positions: Any, examination: Any = None
) -> float:
    """Share of total exposure that went to new sellers' items.

    ``share = sum_i e(pos_i) * new_i / sum_i e(pos_i)`` with exposure ``e(pos) = examination[pos]``
    when given, else the DCG-style ``e(pos) = 1 / log2(pos + 2)`` for 0-based ``pos``.

    Parameters
    ----------
    is_new_seller : array-like of shape (n,)
        Whether the impression's item belongs to a new seller (bool or 0/1).
    positions : array-like of shape (n,)
        0-based slot of each impression.
    examination : array-like of shape (n_positions,), optional
        Examination probability (or any non-negative exposure weight) per position; every
        position must be ``< n_positions``.

    Returns
    -------
    float
        In ``[0, 1]``; NaN (with a log line) when the total exposure is zero.

    Raises
    ------
    TypeError
        If an input is not array-like of numbers or ``positions`` are not integers.
    ValueError
        If ``is_new_seller`` is not binary, positions are negative or beyond ``examination``,
        exposure weights are negative/non-finite, or lengths differ.
    """
    new = _binary_1d(is_new_seller, "is_new_seller")
    pos = _positions_1d(positions)
    _check_lengths(is_new_seller=new, positions=pos)
    exam = None
    if examination is not None:
        exam = _float_1d(examination, "examination", low=0.0)
        if pos.max() >= exam.size:
            raise _fail("positions", f"< len(examination) = {exam.size}", f"max {pos.max()}")
    exposure = _position_exposure(pos, exam)
    total = exposure.sum()
    if total <= 0.0:
        logger.warning("new_seller_exposure_share is undefined: total exposure is zero")
        return float("nan")
    return float(np.sum(exposure * new) / total)


def _positions_1d(positions: Any) -> np.ndarray:
    arr = _array_1d(positions, "positions")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"positions must hold integers, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise _fail("positions", "0-based (>= 0)", f"min {arr.min()}")
    return arr.astype(np.int64, copy=False)


def exposure_gini(item_ids: Any, exposure_weights: Any, *, n_items: int | None = None) -> float:
    """Gini coefficient of total exposure across items (0 = equal, -> 1 = concentrated).

    Exposure is summed per item id; with ``x_(1) <= ... <= x_(m)`` the per-item totals::

        G = sum_i (2 i - m - 1) x_(i) / (m * sum_i x_(i))

    Items that never appear are only counted (with zero exposure) when ``n_items`` gives the
    size of the item universe; otherwise ``m`` is the number of distinct ids seen.

    Parameters
    ----------
    item_ids : array-like of shape (n,)
        Item id of each impression.
    exposure_weights : array-like of shape (n,)
        Non-negative exposure of each impression (e.g. examination probability of its slot).
    n_items : int, optional
        Size of the item universe, ``>=`` the number of distinct ids.

    Returns
    -------
    float
        In ``[0, 1 - 1/m]``; NaN (with a log line) when the total exposure is zero.

    Raises
    ------
    TypeError
        If an input has the wrong type.
    ValueError
        If weights are negative/non-finite, lengths differ, or ``n_items`` is too small.
    """
    ids = _array_1d(item_ids, "item_ids")
    w = _float_1d(exposure_weights, "exposure_weights", low=0.0)
    _check_lengths(item_ids=ids, exposure_weights=w)
    _, codes = np.unique(ids, return_inverse=True)
    per_item = np.bincount(codes.reshape(-1), weights=w)
    if n_items is not None:
        if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)):
            raise TypeError(f"n_items must be an int or None, got {type(n_items).__name__}")
        if n_items < per_item.size:
            raise _fail("n_items", f">= the number of distinct item_ids ({per_item.size})", n_items)
        per_item = np.concatenate((per_item, np.zeros(int(n_items) - per_item.size)))
    total = per_item.sum()
    if total <= 0.0:
        logger.warning("exposure_gini is undefined: total exposure is zero")
        return float("nan")
    x = np.sort(per_item)
    m = x.size
    i = np.arange(1, m + 1)
    return float(np.sum((2 * i - m - 1) * x) / (m * total))
