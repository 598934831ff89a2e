"""Input checks shared by the ranking estimators, and one LightGBM callback.

Estimators call these once, at ``fit``/``predict``; the messages name the argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ranking._metrics import group_sizes

__all__ = ["EarlyStoppingOnMetric", "as_feature_matrix", "binary_labels", "graded_labels", "query_sizes",
           "row_weights"]

MAX_GRADE = 31


def as_feature_matrix(X: Any, feature_names: Sequence[str] | None, name: str = "X") -> tuple[np.ndarray, list[str]]:
    """Validate features and return them as a float64 matrix (n, d) with their names.

    A DataFrame gives its own column names (``feature_names`` must match when given); an
    array takes ``feature_names`` or gets ``f0..f{d-1}``. NaN marks a missing value.

    Raises
    ------
    TypeError
        When ``X`` is not a DataFrame or array, or a column is not numeric.
    ValueError
        When ``X`` is not 2-D, is empty, or the names do not match its width.
    """
    if isinstance(X, pd.DataFrame):
        bad = [c for c in X.columns if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c]))]
        if bad:
            raise TypeError(f"{name} columns must be numeric, got non-numeric {bad[:5]}")
        names = [str(c) for c in X.columns]
        if feature_names is not None and list(feature_names) != names:
            raise ValueError(f"feature_names must equal {name}'s columns when {name} is a DataFrame")
        matrix = X.to_numpy(dtype=np.float64, na_value=np.nan)
    elif isinstance(X, np.ndarray):
        if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
            raise TypeError(f"{name} must be a numeric array, got dtype {X.dtype}")
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim != 2:
            raise ValueError(f"{name} must be 2-dimensional (n_rows, n_features), got shape {matrix.shape}")
        names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(matrix.shape[1])]
    else:
        raise TypeError(f"{name} must be a pandas DataFrame or a numpy array, got {type(X).__name__}")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one feature, got shape {matrix.shape}")
    if len(names) != matrix.shape[1]:
        raise ValueError(f"feature_names has {len(names)} names for {matrix.shape[1]} columns of {name}")
    if len(set(names)) != len(names):
        raise ValueError("feature_names must be unique")
    if np.isinf(matrix).any():
        raise ValueError(f"{name} must not contain infinite values (use NaN for missing)")
    return matrix, names


def graded_labels(name: str, y: Any, n: int) -> np.ndarray:
    """Integer grades in ``[0, 31]`` as float64, shape (n,)."""
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any() or (arr < 0).any() or (arr != np.floor(arr)).any() or (arr > MAX_GRADE).any():
        raise ValueError(f"{name} must hold integer grades in [0, {MAX_GRADE}]")
    return arr


def binary_labels(name: str, y: Any, n: int) -> np.ndarray:
    """0/1 outcomes as float64, shape (n,)."""
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be bool or numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold only 0 and 1")
    return arr


def row_weights(name: str, w: Any, n: int) -> np.ndarray:
    """Finite non-negative weights, shape (n,); ones when ``w`` is None."""
    if w is None:
        return np.ones(n)
    try:
        arr = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numeric") from None
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if not np.all(np.isfinite(arr)) or (arr < 0).any():
        raise ValueError(f"{name} must be finite and >= 0")
    return arr


def query_sizes(name: str, group: Any, n: int) -> np.ndarray:
    """Rows per query from a query id per row (shape (n,)); a query's rows must be contiguous."""
    arr = np.asarray(group)
    if arr.shape != (n,):
        raise ValueError(f"{name} must give a query id per row, shape ({n},), got {arr.shape}")
    if pd.isna(arr).any():
        raise ValueError(f"{name} must not contain nulls")
    try:
        return group_sizes(arr)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


class EarlyStoppingOnMetric:
    """LightGBM callback: stop when ``metric`` on the first validation set stops improving.

    Unlike ``lightgbm.early_stopping`` it watches one named metric (e.g. ``ndcg@20``) however
    LightGBM orders its evaluation list. ``best_iteration`` is 1-based, as LightGBM's.
    ``rounds = 0`` never stops early but still records the best iteration. No iteration before
    ``min_rounds`` counts as best, so a noisy validation metric that peaks after two trees
    cannot stop a model that has learnt nothing yet; patience counts from ``min_rounds``.
    """

    def __init__(self, metric: str, rounds: int, *, min_rounds: int = 0) -> None:
        # An instance attribute: LightGBM gives callbacks without one in ``__dict__`` a negative
        # order, which would run this before ``record_evaluation`` (order 20) records the round.
        self.order = 30
        self.before_iteration = False
        self.metric = metric
        self.rounds = rounds
        self.min_rounds = min_rounds
        self.best_score = -np.inf
        self.best_iteration = 0
        self.best_results: list[Any] = []

    def __call__(self, env: Any) -> None:
        import lightgbm as lgb

        results = [r for r in env.evaluation_result_list if r[1] == self.metric]
        if not results:
            raise ValueError(f"metric {self.metric!r} is not evaluated on a validation set")
        _, _, value, higher_better = results[0][:4]
        score = value if higher_better else -value
        if env.iteration + 1 < self.min_rounds:
            return
        if score > self.best_score:
            self.best_score = score
            self.best_iteration = env.iteration + 1
            self.best_results = list(env.evaluation_result_list)
        elif self.rounds > 0 and env.iteration + 1 - self.best_iteration >= self.rounds:
            raise lgb.callback.EarlyStopException(self.best_iteration - 1, self.best_results)
