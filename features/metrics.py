"""Ranking and calibration metrics: the one definition of each, for every package that measures.

``retrieval`` (recall of its candidates), ``ranking`` (validation NDCG, the purchase model's
calibration) and ``experiments`` (the offline report) all measure with these functions, so a
metric's name means one number everywhere; this module sits in the base layer because those
packages cannot import one another. ``experiments.metrics`` and ``ranking.calibration``
re-export the names.

Ranking metrics take flat 1-D arrays of equal length, one row per (request, item): ``y_true``
(graded relevance, or 0/1), ``y_score`` (the model's score) and ``group`` (the request/query id
of the row); rows of one group need not be contiguous. Calibration metrics take binary labels
and probabilities. Public functions validate their inputs once (``TypeError`` for a wrong type,
``ValueError`` naming the argument for a bad value) and then call private helpers that trust
them.

Definitions chosen, and why
---------------------------
- **Ties** in ``y_score`` are averaged over all orderings of the tied items (as
  ``sklearn.metrics.ndcg_score`` with ``ignore_ties=False``). Breaking them by row order, as
  LightGBM does, would score a constant model as the order the rows arrived in (the logged
  order), and a metric must not depend on row order.
- **NDCG gain** is ``2**rel - 1`` by default (``gain="exp2"``: LightGBM's lambdarank gain for
  integer grades, what the ranker is trained on); ``gain="linear"`` uses ``rel`` itself, for
  real-valued relevance such as a true probability or an IPS-weighted gain.
- **Groups without a relevant item** are skipped by NDCG, recall and MRR (their value is 0/0);
  NaN, with a log line, when no group is left. LightGBM counts such a query as NDCG 1, which
  mixes the share of requests without a purchase into the figure.
- **ECE** uses equal-mass (``"quantile"``, sample-weighted) bins by default: purchase
  probabilities are around 1e-3, so 15 equal-width bins on [0, 1] put nearly every row in the
  first bin and ECE degenerates to ``|mean(p) - mean(y)|`` (a 2x miscalibrated curve can show an
  ECE of 0.001). Because ECE is on the scale of the probabilities, it is also reported over the
  base rate (``relative=True``): 0.5 means predictions are off by half the purchase rate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "BinStrategy",
    "Gain",
    "ReliabilityCurve",
    "expected_calibration_error",
    "ips_ndcg_score",
    "mrr_score",
    "ndcg_score",
    "recall_at_k",
    "reliability_curve",
]

logger = logging.getLogger(__name__)

BinStrategy = Literal["uniform", "quantile"]
Gain = Literal["exp2", "linear"]


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
    gain: Gain = "exp2",
    sample_weight: Any = None,
) -> float:
    """Mean NDCG@k over groups, with exponential (or linear) gain and log2 discount.

    For one group with items sorted by ``y_score`` descending (0-based rank ``r``)::

        DCG@k  = sum_{r < k} g(rel_(r)) / log2(r + 2),   g(x) = 2**x - 1 (exp2) or x (linear)
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
    gain : {"exp2", "linear"}, default="exp2"
        ``exp2`` for integer grades (the ranker's training gain), ``linear`` for real-valued
        relevance (a true probability, an IPS-weighted gain).
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
        negative, ``k < 1``, ``gain`` is unknown, or ``sample_weight`` varies within a group.
    """
    y, s, codes, n_groups = _ranking_inputs(y_true, y_score, group, k)
    if gain not in ("exp2", "linear"):
        raise _fail("gain", "'exp2' or 'linear'", repr(gain))
    group_weight = _group_weights(sample_weight, codes, n_groups)
    return _ndcg(np.exp2(y) - 1.0 if gain == "exp2" else y, s, codes, n_groups, k, group_weight, "ndcg_score")


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


# -------------------------------------------------------------------- calibration metrics


@dataclass(frozen=True, eq=False)
class ReliabilityCurve:
    """Per-bin calibration summary; only non-empty bins are kept.

    Attributes
    ----------
    mean_predicted : ndarray of shape (n_nonempty_bins,)
        (Weighted) mean predicted probability in each bin.
    observed_rate : ndarray of shape (n_nonempty_bins,)
        (Weighted) fraction of positive labels in each bin.
    weight : ndarray of shape (n_nonempty_bins,)
        Sum of sample weights in each bin (the row count when unweighted).
    count : ndarray of int, shape (n_nonempty_bins,)
        Number of rows in each bin.
    bin_lower, bin_upper : ndarray of shape (n_nonempty_bins,)
        Bin edges; a bin holds ``lower < p <= upper`` (the first bin also ``p = lower``).
    base_rate : float
        (Weighted) mean of the labels over all rows: the reference line of a reliability diagram.
    """

    mean_predicted: np.ndarray
    observed_rate: np.ndarray
    weight: np.ndarray
    count: np.ndarray
    bin_lower: np.ndarray
    bin_upper: np.ndarray
    base_rate: float

    def calibration_error(self, *, relative: bool = False) -> float:
        """ECE of this binning, ``sum_b (W_b / W) |mean_predicted_b - observed_rate_b|``.

        With ``relative=True`` divided by :attr:`base_rate` (NaN, with a log line, when it is 0).
        :func:`expected_calibration_error` returns this value.
        """
        ece = float(np.sum(self.weight * np.abs(self.mean_predicted - self.observed_rate)) / self.weight.sum())
        if not relative:
            return ece
        if self.base_rate <= 0.0:
            logger.warning("relative expected calibration error is undefined: no positive label")
            return float("nan")
        return ece / self.base_rate


def reliability_curve(
    y_true: Any,
    y_prob: Any,
    n_bins: int = 15,
    strategy: BinStrategy = "quantile",
    *,
    sample_weight: Any = None,
) -> ReliabilityCurve:
    """Bin predictions and return per-bin mean prediction, observed positive rate and weight.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Binary labels (0/1 or bool).
    y_prob : array-like of shape (n,)
        Predicted probabilities in ``[0, 1]``.
    n_bins : int, default=15
        Number of bins, ``>= 1``.
    strategy : {"quantile", "uniform"}, default="quantile"
        ``"quantile"``: equal (sample-weighted) mass per bin, edges at predicted values, so
        tied predictions stay in one bin and bins may merge; ``"uniform"``: equal-width bins
        on ``[0, 1]``. See the module docstring for why quantile is the default.
    sample_weight : array-like of shape (n,), optional
        Non-negative row weights (e.g. inverse propensities), not all zero.

    Returns
    -------
    ReliabilityCurve

    Raises
    ------
    TypeError
        If ``n_bins`` is not an int or an array is not numeric.
    ValueError
        If labels are not binary, probabilities leave ``[0, 1]``, lengths differ, weights are
        negative or all zero, ``n_bins < 1`` or ``strategy`` is unknown.
    """
    y, p, w = _calibration_inputs(y_true, y_prob, n_bins, strategy, sample_weight)
    return _reliability(y, p, w, int(n_bins), strategy)


def expected_calibration_error(
    y_true: Any,
    y_prob: Any,
    n_bins: int = 15,
    strategy: BinStrategy = "quantile",
    *,
    sample_weight: Any = None,
    relative: bool = False,
) -> float:
    """Expected calibration error: weight-weighted mean gap between prediction and outcome per bin.

    ``ECE = sum_b (W_b / W) * |mean(p in b) - mean(y in b)|`` over the bins of
    :func:`reliability_curve`; with ``relative=True``, ``ECE / base_rate`` where
    ``base_rate = sum_i w_i y_i / W``.

    Parameters
    ----------
    y_true, y_prob, n_bins, strategy, sample_weight
        As :func:`reliability_curve`.
    relative : bool, default=False
        Divide by the base rate (NaN, with a log line, when there is no positive label).

    Returns
    -------
    float
        ECE in ``[0, 1]`` (or ``>= 0`` relative); 0 is perfectly calibrated at this binning.

    Raises
    ------
    TypeError, ValueError
        As :func:`reliability_curve`.
    """
    y, p, w = _calibration_inputs(y_true, y_prob, n_bins, strategy, sample_weight)
    return _reliability(y, p, w, int(n_bins), strategy).calibration_error(relative=relative)


def _calibration_inputs(
    y_true: Any, y_prob: Any, n_bins: int, strategy: str, sample_weight: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = _binary_1d(y_true, "y_true")
    p = _float_1d(y_prob, "y_prob", low=0.0, high=1.0)
    _check_lengths(y_true=y, y_prob=p)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"n_bins must be an int, got {type(n_bins).__name__}")
    if n_bins < 1:
        raise _fail("n_bins", ">= 1", n_bins)
    if strategy not in ("uniform", "quantile"):
        raise _fail("strategy", "'uniform' or 'quantile'", repr(strategy))
    return y, p, _row_weights(sample_weight, y)


def _row_weights(sample_weight: Any, y: np.ndarray) -> np.ndarray:
    """Non-negative row weights of the length of ``y``, not all zero; ones when None."""
    if sample_weight is None:
        return np.ones(y.size)
    w = _float_1d(sample_weight, "sample_weight", low=0.0)
    _check_lengths(y_true=y, sample_weight=w)
    if w.sum() <= 0.0:
        raise _fail("sample_weight", "not all zero", "a total weight of 0")
    return w


def _bin_edges(p: np.ndarray, w: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    # Weighted quantiles: the predicted value at which the cumulative weight reaches b / n_bins.
    order = np.argsort(p, kind="stable")
    cum = np.cumsum(w[order])
    targets = cum[-1] * np.arange(1, n_bins) / n_bins
    inner = p[order][np.minimum(np.searchsorted(cum, targets), p.size - 1)]
    return np.unique(np.r_[0.0, inner, 1.0])


def _reliability(y: np.ndarray, p: np.ndarray, w: np.ndarray, n_bins: int, strategy: str) -> ReliabilityCurve:
    edges = _bin_edges(p, w, n_bins, strategy)
    # Bin b holds edges[b] < p <= edges[b + 1] (the first bin also p = 0), so a quantile edge
    # keeps the predictions equal to it together in the lower bin.
    idx = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, edges.size - 2)
    nb = edges.size - 1
    wsum = np.bincount(idx, weights=w, minlength=nb)
    count = np.bincount(idx, minlength=nb)
    psum = np.bincount(idx, weights=w * p, minlength=nb)
    ysum = np.bincount(idx, weights=w * y, minlength=nb)
    keep = wsum > 0
    return ReliabilityCurve(
        mean_predicted=psum[keep] / wsum[keep],
        observed_rate=ysum[keep] / wsum[keep],
        weight=wsum[keep],
        count=count[keep],
        bin_lower=edges[:-1][keep],
        bin_upper=edges[1:][keep],
        base_rate=float(np.sum(w * y) / np.sum(w)),
    )
