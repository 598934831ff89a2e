"""Offline classification and marketplace metrics, and the shared ranking and calibration metrics.

The ranking metrics (NDCG, IPS-NDCG, recall, MRR) and the calibration metrics (ECE, the
reliability curve) are defined once in :mod:`features.metrics`, the lowest layer that every
package measuring them can import, and re-exported here; see that module for the definitions
chosen (tie handling, gain, bins). This module adds log loss and AUC (scikit-learn's) and the
marketplace metrics. Public functions validate their inputs once (``TypeError`` for a wrong
type, ``ValueError`` naming the argument for a bad value), with the validators of
:mod:`features.metrics`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.metrics import log_loss as _sk_log_loss
from sklearn.metrics import roc_auc_score as _sk_roc_auc_score

from features.metrics import (
    BinStrategy,
    ReliabilityCurve,
    _array_1d,
    _binary_1d,
    _check_lengths,
    _fail,
    _float_1d,
    expected_calibration_error,
    ips_ndcg_score,
    mrr_score,
    ndcg_score,
    recall_at_k,
    reliability_curve,
)

__all__ = [
    "BinStrategy",
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
