"""Per-item feature contributions of the ranker and the purchase model (TreeSHAP via LightGBM).

LightGBM's ``predict(X, pred_contrib=True)`` returns, for each row, one SHAP value per
feature and the model's expected raw output (the base value) last; they add up to the raw
output (the ranker's score, the purchase model's log-odds; with a purchase funnel, the log-odds
of its last stage, P(purchase | click), whose product with the earlier stages is P(purchase))::

    raw_output = base_value + sum_j contribution_j

The compiled libraries serving scores with cannot do this, so :class:`ScoreExplainer` holds
the LightGBM text models of the same training run (loaded from the folder's
``metadata.json``: feature names are read from there, never assumed). An explanation keeps
the ``top`` contributions by absolute size and sums the rest as ``other``, so the identity
above stays checkable on what a response carries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ranking.artifacts import read_metadata
from ranking.scorer import POSITION_FEATURE

__all__ = ["ItemExplanation", "ModelExplanation", "ScoreExplainer", "top_contributions"]


@dataclass(frozen=True)
class ModelExplanation:
    """One model's explanation of one row.

    Attributes
    ----------
    base_value : the model's expected raw output (SHAP base value)
    raw_output : the model's raw output for the row (ranker score; purchase log-odds)
    features : names of the largest contributions, largest ``|contribution|`` first
    values : the row's values of those features (NaN = missing)
    contributions : their contributions
    other : the sum of every other feature's contribution
    """

    base_value: float
    raw_output: float
    features: tuple[str, ...]
    values: tuple[float, ...]
    contributions: tuple[float, ...]
    other: float


@dataclass(frozen=True)
class ItemExplanation:
    """The ranker's and the purchase model's explanation of one candidate."""

    ranker: ModelExplanation
    purchase: ModelExplanation


def top_contributions(contrib: np.ndarray, X: np.ndarray, raw: np.ndarray, names: list[str],
                      top: int) -> list[ModelExplanation]:
    """Explanations of each row from a ``pred_contrib`` matrix.

    Parameters
    ----------
    contrib : ndarray, shape (n, d + 1)
        Contributions of the ``d`` features, then the base value.
    X : ndarray, shape (n, d)
        The rows' feature values.
    raw : ndarray, shape (n,)
        The model's raw output for each row.
    names : list of str, length d
    top : int, >= 0
        Contributions kept per row (at most ``d``); the rest go into ``other``.
    """
    n, d = X.shape
    if contrib.shape != (n, d + 1) or len(names) != d or raw.shape != (n,):
        raise ValueError(f"contrib must have shape (n, d + 1) = ({n}, {d + 1}) with {d} names and raw of shape "
                         f"({n},); got {contrib.shape}, {len(names)} names, raw {raw.shape}")
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    k = min(top, d)
    feats = contrib[:, :d]
    # stable order: largest |contribution| first, ties by feature position
    ranked = np.argsort(-np.abs(feats), axis=1, kind="stable")
    order, rest = ranked[:, :k], ranked[:, k:]
    other = np.take_along_axis(feats, rest, axis=1).sum(axis=1)
    out = []
    for i in range(n):
        idx = order[i]
        out.append(ModelExplanation(
            base_value=float(contrib[i, d]), raw_output=float(raw[i]), features=tuple(names[j] for j in idx),
            values=tuple(float(v) for v in X[i, idx]), contributions=tuple(float(c) for c in feats[i, idx]),
            other=float(other[i])))
    return out


class ScoreExplainer:
    """Contributions of the ranker and the purchase model for assembled candidate rows.

    Parameters
    ----------
    ranker, purchase : lightgbm.Booster
    feature_names : list of str
        The ranker's features (the columns of ``X``).
    purchase_feature_names : list of str
        ``feature_names``, plus ``"position"`` last when the purchase model was trained with the
        slot (filled with 0, as :class:`~ranking.scorer.ExpectedGMVScorer` does).
    num_threads : int, default 1
    """

    def __init__(self, *, ranker: Any, purchase: Any, feature_names: list[str], purchase_feature_names: list[str],
                 num_threads: int = 1) -> None:
        extra = purchase_feature_names[len(feature_names):]
        if purchase_feature_names[:len(feature_names)] != feature_names or extra not in ([], [POSITION_FEATURE]):
            raise ValueError("purchase_feature_names must be feature_names, optionally followed by 'position'")
        for name, booster, want in (("ranker", ranker, feature_names), ("purchase", purchase, purchase_feature_names)):
            if int(booster.num_feature()) != len(want):
                raise ValueError(f"{name} model has {booster.num_feature()} features, the metadata lists {len(want)}")
        self.ranker = ranker
        self.purchase = purchase
        self.feature_names = list(feature_names)
        self.purchase_feature_names = list(purchase_feature_names)
        self.num_threads = num_threads
        self._with_position = extra == [POSITION_FEATURE]

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike[str], *, num_threads: int = 1) -> ScoreExplainer:
        """The LightGBM text models and feature names of a folder written by ``ranking.train``.

        Raises
        ------
        FileNotFoundError
            When ``metadata.json`` or a model file is missing.
        """
        import lightgbm as lgb

        root = Path(model_dir)
        meta = read_metadata(root)
        boosters = {}
        for name in ("ranker", "purchase"):
            path = root / meta["files"][name]
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: the {name} model of {root}")
            boosters[name] = lgb.Booster(model_file=str(path))
        return cls(ranker=boosters["ranker"], purchase=boosters["purchase"], feature_names=list(meta["features"]),
                   purchase_feature_names=list(meta["purchase_features"]), num_threads=num_threads)

    def _model(self, booster: Any, X: np.ndarray, names: list[str], top: int) -> list[ModelExplanation]:
        contrib = np.asarray(booster.predict(X, pred_contrib=True, num_threads=self.num_threads), dtype=np.float64)
        raw = np.asarray(booster.predict(X, raw_score=True, num_threads=self.num_threads), dtype=np.float64)
        return top_contributions(contrib, X, raw, names, top)

    def explain(self, X: np.ndarray, *, top: int) -> list[ItemExplanation]:
        """One :class:`ItemExplanation` per row of ``X`` (n, len(feature_names)), ``top`` contributions per model.

        Raises
        ------
        ValueError
            When ``X`` has the wrong number of columns or ``top < 0``.
        """
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(f"X must have shape (n, {len(self.feature_names)}), got {X.shape}")
        if not len(X):
            return []
        Xp = np.hstack([X, np.zeros((len(X), 1))]) if self._with_position else X
        ranker = self._model(self.ranker, X, self.feature_names, top)
        purchase = self._model(self.purchase, Xp, self.purchase_feature_names, top)
        return [ItemExplanation(ranker=r, purchase=p) for r, p in zip(ranker, purchase, strict=True)]
