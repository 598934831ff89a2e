"""P(purchase | user, item, context): a LightGBM binary model, calibrated apart (``ranking.calibration``).

Position as a feature
---------------------
A purchase is only possible where the buyer looked, so logged purchase rates mix how good
an item is with where the logging policy put it. When trained with ``position`` among its
features (``RankingConfig.purchase_position_feature``) the model learns the slot effect
separately, and the scorer asks for every candidate at slot 0, the slot whose examination
is 1 by normalisation: ``P(purchase | examined)``, comparable across candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ranking._booster import FittedBooster
from ranking._checks import EarlyStoppingOnMetric, as_feature_matrix, binary_labels, row_weights
from ranking.config import DEFAULT_PARAMS, GBDTParams

__all__ = ["PurchaseModel"]



class PurchaseModel(FittedBooster):
    """LightGBM binary classifier, early-stopped on validation log loss: P(purchase), or one
    factor of it (P(click | examined), P(purchase | click); see ``ranking.train``).

    Parameters
    ----------
    params : GBDTParams
    num_threads : int, default 1
    seed : int, default 0

    Attributes
    ----------
    booster_ : lightgbm.Booster
    feature_names_ : list of str
    best_iteration_ : int
    valid_scores_ : dict of str to float
        ``binary_logloss`` and ``auc`` on the validation set at ``best_iteration_``.
    """

    def __init__(self, *, params: GBDTParams = DEFAULT_PARAMS, num_threads: int = 1, seed: int = 0) -> None:
        self.params = params
        self.num_threads = num_threads
        self.seed = seed

    def lightgbm_params(self) -> dict[str, Any]:
        """LightGBM parameters used for training."""
        return {**self.params.lightgbm_params(), "objective": "binary", "metric": ["binary_logloss", "auc"],
                "num_threads": self.num_threads, "seed": self.seed, "deterministic": True,
                "force_row_wise": True, "verbosity": -1}

    def fit(self, X: Any, y: Any, *, sample_weight: Any = None, eval_set: tuple[Any, Any, Any] | None = None,
            feature_names: Sequence[str] | None = None,
            callbacks: Sequence[Callable[[Any], None]] = ()) -> PurchaseModel:
        """Train on rows ``X`` (shape (n, d)) with binary outcomes ``y`` (shape (n,)).

        Parameters
        ----------
        X : DataFrame or ndarray, shape (n, d)
        y : array-like of {0, 1} or bool, shape (n,)
        sample_weight : array-like of float, shape (n,), optional
            Downsampling weights, so predictions estimate the undownsampled rate.
        eval_set : (X_valid, y_valid, sample_weight_valid or None), optional
            Early stopping on weighted ``binary_logloss``.
        feature_names : sequence of str, optional
        callbacks : LightGBM callbacks, optional

        Returns
        -------
        self

        Raises
        ------
        TypeError, ValueError
            On malformed inputs, or when ``y`` has a single class.
        """
        import lightgbm as lgb

        if not isinstance(self.params, GBDTParams):
            raise TypeError(f"params must be a GBDTParams, got {type(self.params).__name__}")
        matrix, names = as_feature_matrix(X, feature_names)
        labels = binary_labels("y", y, len(matrix))
        if labels.min() == labels.max():
            raise ValueError("y must contain both classes (no purchases, or only purchases, in the training slice)")
        w = row_weights("sample_weight", sample_weight, len(matrix))
        train_set = lgb.Dataset(matrix, label=labels, weight=w, feature_name=names, free_raw_data=True)
        valid_sets = []
        stopper = None
        all_callbacks: list[Any] = list(callbacks)
        if eval_set is not None:
            Xv, yv, wv = eval_set
            vmatrix, _ = as_feature_matrix(Xv, names, name="eval_set X")
            vlabels = binary_labels("eval_set y", yv, len(vmatrix))
            vw = row_weights("eval_set sample_weight", wv, len(vmatrix))
            valid_sets.append(lgb.Dataset(vmatrix, label=vlabels, weight=vw, reference=train_set))
            stopper = EarlyStoppingOnMetric("binary_logloss", self.params.early_stopping_rounds,
                                            min_rounds=min(self.params.min_boost_round, self.params.num_boost_round))
            all_callbacks.append(stopper)
        params = self.lightgbm_params()
        constraints = self.params.monotone_constraints(names)
        if constraints is not None and any(constraints):
            params = {**params, "monotone_constraints": constraints, "monotone_constraints_method": "advanced"}
        booster = lgb.train(params, train_set, num_boost_round=self.params.num_boost_round,
                            valid_sets=valid_sets, valid_names=["valid"][: len(valid_sets)], callbacks=all_callbacks)
        self._adopt(booster, names, stopper, "purchase model")
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Uncalibrated P(purchase) for each row, shape (n,)."""
        return self._predict_raw(X)
