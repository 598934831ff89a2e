"""Item popularity from logged events: the one definition of its event weights and its score.

Popularity is the weighted count of an item's events in a window::

    count_i = sum over events e on item i in the window of weight(type_e)
    score_i = log(prior + count_i)            (the log scale, where a score is needed)

with weights click 1, add-to-cart 2, purchase 4 (:data:`POPULARITY_EVENT_WEIGHTS`): every
event type counts (an add-to-cart is stronger intent than a click and a purchase stronger
still), and a purchase is worth a few clicks, not dozens, so a handful of sales cannot
outrank steady interest. The window is the caller's choice (the serving snapshot: the last 7
days; retrieval: the training window per context segment; a policy: the history it is
given). The retrieval fallback (:class:`retrieval.popularity.SegmentPopularity`), the serving
item snapshot built by ``infra.train`` and the experiments' popularity policies all count
with these functions; ``retrieval.config.ServingConfig.popularity_weights`` defaults to
:data:`DEFAULT_POPULARITY_WEIGHTS` and may be configured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from features.contract import EVENT_TYPES

__all__ = [
    "DEFAULT_POPULARITY_WEIGHTS",
    "POPULARITY_EVENT_WEIGHTS",
    "check_event_weights",
    "event_weights",
    "log_popularity",
    "popularity_counts",
]

POPULARITY_EVENT_WEIGHTS: Mapping[str, float] = MappingProxyType({"click": 1.0, "add_to_cart": 2.0, "purchase": 4.0})
"""Weight of each event type in the popularity count."""

DEFAULT_POPULARITY_WEIGHTS: tuple[float, ...] = tuple(POPULARITY_EVENT_WEIGHTS[t] for t in EVENT_TYPES)
"""The same weights in the contract's event-type order (index = type code)."""


def check_event_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Validate a mapping of event type to weight; return it as a plain dict of floats.

    Raises
    ------
    TypeError
        If ``weights`` is not a mapping.
    ValueError
        If a key is not an event type of the contract, a weight is negative or not finite, or
        no weight is positive.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"event_weights must be a mapping of event type to weight, got {type(weights).__name__}")
    out = {}
    for k, v in weights.items():
        if k not in EVENT_TYPES:
            raise ValueError(f"event_weights keys must be event types {list(EVENT_TYPES)}, got {k!r}")
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"event_weights[{k!r}] must be a finite number >= 0, got {v}")
        out[k] = float(v)
    if not any(out.values()):
        raise ValueError("event_weights must give at least one event type a positive weight")
    return out


def _by_code(weights: Mapping[str, float] | Sequence[float]) -> np.ndarray:
    """Weights indexed by event-type code (position in ``EVENT_TYPES``)."""
    if isinstance(weights, Mapping):
        checked = check_event_weights(weights)
        return np.array([checked.get(t, 0.0) for t in EVENT_TYPES], dtype=np.float64)
    if isinstance(weights, str | bytes):
        raise TypeError(f"event weights must be a mapping or a sequence of numbers, got {type(weights).__name__}")
    arr = np.asarray(weights, dtype=np.float64)
    if arr.shape != (len(EVENT_TYPES),) or not np.all(np.isfinite(arr)) or (arr < 0).any():
        raise ValueError(f"event weights must be {len(EVENT_TYPES)} finite numbers >= 0 "
                         f"({', '.join(EVENT_TYPES)}), got {weights!r}")
    return arr


def event_weights(types: Any, weights: Mapping[str, float] | Sequence[float] = POPULARITY_EVENT_WEIGHTS) -> np.ndarray:
    """Popularity weight of each event, shape (n,).

    Parameters
    ----------
    types : array-like, shape (n,)
        Event types as the contract's names (``"click"`` ...) or as integer codes (index in
        ``EVENT_TYPES``, as :class:`retrieval.logs.EventLog` stores them).
    weights : mapping of event type to weight, or a sequence in ``EVENT_TYPES`` order
        Default :data:`POPULARITY_EVENT_WEIGHTS`.

    Raises
    ------
    ValueError
        On an unknown event type or code, or invalid weights.
    """
    by_code = _by_code(weights)
    t = np.asarray(types)
    if t.size and np.issubdtype(t.dtype, np.integer):
        if t.min() < 0 or t.max() >= len(EVENT_TYPES):
            raise ValueError(f"event type codes must be in [0, {len(EVENT_TYPES)}), got min {t.min()}, max {t.max()}")
        return by_code[t]
    codes = pd.Categorical(t.astype(object).ravel(), categories=list(EVENT_TYPES)).codes
    if (codes < 0).any():
        bad = sorted({str(v) for v in t.ravel()[codes < 0]})[:5]
        raise ValueError(f"event types must be among {list(EVENT_TYPES)}, got {bad}")
    return by_code[codes]


def popularity_counts(item_ids: Any, types: Any,
                      weights: Mapping[str, float] | Sequence[float] = POPULARITY_EVENT_WEIGHTS) -> pd.Series:
    """Weighted event count per item: ``count_i = sum of weight(type_e)`` over item ``i``'s events.

    Parameters
    ----------
    item_ids : array-like of int, shape (n,)
    types : array-like, shape (n,)
        As :func:`event_weights`.
    weights : as :func:`event_weights`

    Returns
    -------
    pandas.Series of float
        Indexed by item id (sorted); only items with at least one event.
    """
    ids = np.asarray(item_ids)
    w = event_weights(types, weights)
    if ids.shape != w.shape:
        raise ValueError(f"item_ids and types must have the same length, got {ids.shape} and {w.shape}")
    return pd.Series(w, index=ids).groupby(level=0).sum()


def log_popularity(counts: Any, prior: float = 1.0) -> np.ndarray:
    """Popularity on the log scale: ``log(prior + count)``; ``prior`` (> 0) is every item's pseudo-count.

    Raises
    ------
    ValueError
        If ``prior`` is not a finite number > 0 or a count is negative.
    """
    if not np.isfinite(prior) or prior <= 0:
        raise ValueError(f"prior must be a finite number > 0, got {prior}")
    c = np.asarray(counts, dtype=np.float64)
    if (c < 0).any():
        raise ValueError("counts must be >= 0")
    return np.log(prior + c)
