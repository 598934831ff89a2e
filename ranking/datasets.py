"""Readers for public learning-to-rank data (used by checks on data nobody here made)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LetorData", "load_letor"]


@dataclass(frozen=True)
class LetorData:
    """A learning-to-rank set: features, graded labels and query sizes.

    Attributes
    ----------
    X : ndarray of float64, shape (n, d)
        Dense features; absent libsvm entries are 0 (the format's convention).
    y : ndarray of int64, shape (n,)
    sizes : ndarray of int64, shape (Q,)
        Rows per query, in file order.
    """

    X: np.ndarray
    y: np.ndarray
    sizes: np.ndarray

    @property
    def query_ids(self) -> np.ndarray:
        """Query number of each row, shape (n,)."""
        return np.repeat(np.arange(len(self.sizes)), self.sizes)


def load_letor(path: str | os.PathLike[str], *, n_features: int | None = None) -> LetorData:
    """Read a libsvm ranking file and its ``<path>.query`` file (rows per query, one per line).

    This is the layout of LightGBM's ``examples/lambdarank`` (the Yahoo LTR sample).

    Parameters
    ----------
    path : path of the libsvm file (``label idx:value ...``; 1-based or 0-based indices)
    n_features : int, optional
        Width of ``X``; by default the largest index seen (pass the training width when
        reading a test file).

    Raises
    ------
    FileNotFoundError
        When the data or query file is missing.
    ValueError
        When the query sizes do not add up to the number of rows.
    """
    from sklearn.datasets import load_svmlight_file

    path = Path(path)
    query_path = path.with_name(path.name + ".query")
    for p in (path, query_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found")
    X, y = load_svmlight_file(str(path), n_features=n_features, zero_based=False)
    sizes = np.loadtxt(query_path, dtype=np.int64, ndmin=1)
    if sizes.sum() != X.shape[0] or (sizes <= 0).any():
        raise ValueError(f"{query_path}: query sizes add up to {sizes.sum()}, but {path} has {X.shape[0]} rows")
    return LetorData(X=np.asarray(X.todense(), dtype=np.float64), y=y.astype(np.int64), sizes=sizes)
