"""What the ranker and the purchase model share once fitted: a LightGBM booster, its feature
list and best iteration, prediction in the training feature order, and LightGBM text files."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Self

import numpy as np

from ranking._checks import as_feature_matrix

__all__ = ["FittedBooster"]


class FittedBooster:
    """Mixin for a model whose fit sets ``booster_``, ``feature_names_``, ``best_iteration_``
    and ``valid_scores_``; the class must accept ``num_threads`` as a keyword argument."""

    num_threads: int
    booster_: Any
    feature_names_: list[str]
    best_iteration_: int
    valid_scores_: dict[str, float]

    def _adopt(self, booster: Any, names: list[str], stopper: Any, what: str) -> None:
        """Keep a trained ``booster``: its best iteration and validation scores come from the
        early-stopping callback ``stopper`` when it stopped, else every tree counts."""
        self.booster_ = booster
        self.feature_names_ = names
        if stopper is not None and stopper.best_iteration > 0:
            self.best_iteration_ = stopper.best_iteration
            self.valid_scores_ = {r[1]: float(r[2]) for r in stopper.best_results if r[0] == "valid"}
        else:
            self.best_iteration_ = booster.current_iteration()
            self.valid_scores_ = {}
        logging.getLogger(type(self).__module__).info("%s: %d trees (best iteration), validation %s", what,
                                                      self.best_iteration_, self.valid_scores_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load() first")

    def _predict_raw(self, X: Any) -> np.ndarray:
        """The booster's output for each row of ``X`` (features in the training order), shape (n,)."""
        self._check_fitted()
        matrix, names = as_feature_matrix(X, None)
        if hasattr(X, "columns") and names != self.feature_names_:
            raise ValueError("X must have the training features in the training order")
        if matrix.shape[1] != len(self.feature_names_):
            raise ValueError(f"X must have {len(self.feature_names_)} features, got {matrix.shape[1]}")
        return np.asarray(self.booster_.predict(matrix, num_iteration=self.best_iteration_,
                                                num_threads=self.num_threads), dtype=np.float64)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as LightGBM text, trimmed to ``best_iteration_`` trees."""
        self._check_fitted()
        path = Path(path)
        self.booster_.save_model(str(path), num_iteration=self.best_iteration_)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, num_threads: int = 1) -> Self:
        """Load a model saved by :meth:`save` (LightGBM text); validation scores are not kept."""
        import lightgbm as lgb

        booster = lgb.Booster(model_file=str(path))
        model = cls(num_threads=num_threads)  # type: ignore[call-arg]
        model.booster_ = booster
        model.feature_names_ = booster.feature_name()
        model.best_iteration_ = booster.current_iteration()
        model.valid_scores_ = {}
        return model
