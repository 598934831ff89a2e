"""LambdaMART (LightGBM) on graded labels, with inverse-propensity pair weights.

Why a custom objective
----------------------
LightGBM's built-in ``lambdarank`` takes per-row weights but applies them *after* the
pairwise step: each row's accumulated lambda and hessian are multiplied by that row's
weight (``RankingObjective::GetGradientsWithSampledQueries`` in LightGBM 4.x). A pair
``(i, j)`` therefore pushes ``i`` with weight ``w_i`` and ``j`` with weight ``w_j``: the
pair has no single weight, and an IPS weight on the clicked document does not weight its
pairs. The IPS-corrected pairwise loss (Joachims et al., WSDM 2017; Agarwal et al., 2019)
needs a weight per pair::

    L = sum_q sum_{(h, l): y_h > y_l} omega_hl * lambda_hl
    omega_hl = ips(position_h) * sw_h * sw_l,   ips(p) = min(1 / e(p), max_weight)

where ``h`` is the document whose higher grade was observed (it must have been examined,
so its observation is reweighted by its inverse examination probability) and ``sw`` are
negative-downsampling weights (a kept negative stands for ``1 / keep-rate`` negatives).

:class:`LambdaRankObjective` implements LightGBM's LambdaRank-NDCG gradients term for
term (label gains ``2**y - 1``, discounts ``1 / log2(2 + rank)``, pairs with at least one
document in the top ``truncation_level``, the ``|delta NDCG| / (0.01 + |s_h - s_l|)``
regularisation, and the per-query ``log2(1 + S) / S`` normalisation with ``S`` computed
from the *unweighted* lambdas so the normalisation does not undo the IPS weights), then
applies ``omega`` per pair. With all weights 1 it is LightGBM's objective (the naive
baseline uses exactly this code with unit weights; a test checks it against the built-in).
Validation uses LightGBM's own ``ndcg@k`` metric on the validation slice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ranking._booster import FittedBooster
from ranking._checks import (
    EarlyStoppingOnMetric,
    as_feature_matrix,
    graded_labels,
    query_sizes,
    row_weights,
)
from ranking._metrics import ndcg_at_k, query_index
from ranking.config import DEFAULT_PARAMS, GBDTParams

__all__ = ["IPSWeightedNDCG", "LambdaMARTRanker", "LambdaRankObjective"]



class LambdaRankObjective:
    """LightGBM's LambdaRank-NDCG gradients with a weight per document pair (a LightGBM custom objective).

    Parameters
    ----------
    labels : ndarray of float, shape (n,)
        Integer grades; rows of a query are contiguous.
    sizes : ndarray of int, shape (Q,)
        Rows per query.
    high_weight : ndarray of float, shape (n,), optional
        Weight of a pair whose higher-graded document is this row (the IPS weight).
    sample_weight : ndarray of float, shape (n,), optional
        Row weights multiplied into every pair the row is in (both sides).
    truncation_level : int, default 30
    sigmoid : float, default 1.0
    norm : bool, default True

    Notes
    -----
    Per pair ``(h, l)`` with ``y_h > y_l`` and ``min(rank_h, rank_l) < truncation_level``::

        dNDCG   = (g(y_h) - g(y_l)) * |1/log2(2 + rank_h) - 1/log2(2 + rank_l)| / maxDCG_q
        dNDCG  /= 0.01 + |s_h - s_l|              (when norm and the query's scores differ)
        rho     = 1 / (1 + exp(sigmoid * (s_h - s_l)))
        lambda  = -sigmoid * dNDCG * rho,   hess = sigmoid**2 * dNDCG * rho * (1 - rho)
        grad_h += omega * c_q * lambda,     grad_l -= omega * c_q * lambda  (hessians add to both)

    with ``c_q = log2(1 + S_q) / S_q``, ``S_q = sum over the query's pairs of -2 * lambda``.
    """

    def __init__(self, labels: np.ndarray, sizes: np.ndarray, *, high_weight: np.ndarray | None = None,
                 sample_weight: np.ndarray | None = None, truncation_level: int = 30, sigmoid: float = 1.0,
                 norm: bool = True) -> None:
        labels = np.asarray(labels, dtype=np.float64)
        n = len(labels)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.truncation_level = int(truncation_level)
        self.sigmoid = float(sigmoid)
        self.norm = bool(norm)
        self.n_rows = n
        self.qid = query_index(self.sizes)
        self.starts = np.r_[0, np.cumsum(self.sizes)[:-1]].astype(np.int64)
        hw = np.ones(n) if high_weight is None else np.asarray(high_weight, dtype=np.float64)
        sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        gain = np.exp2(labels) - 1.0
        self.high, self.low = _label_pairs(labels, self.sizes, self.starts)
        self.pair_q = self.qid[self.high]
        self.pair_gain = gain[self.high] - gain[self.low]
        self.pair_weight = hw[self.high] * sw[self.high] * sw[self.low]
        self.inv_max_dcg = _inverse_max_dcg(gain, self.sizes, self.starts, self.truncation_level)

    def gradients(self, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gradient and hessian of the weighted LambdaRank loss at ``score`` (each shape (n,))."""
        score = np.asarray(score, dtype=np.float64)
        n = self.n_rows
        rows = np.arange(n)
        order = np.lexsort((rows, -score, self.qid))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = rows - self.starts[self.qid]  # qid is sorted, so sorted slot i belongs to query qid[i]
        r_h, r_l = rank[self.high], rank[self.low]
        active = np.minimum(r_h, r_l) < self.truncation_level
        h, lo, q = self.high[active], self.low[active], self.pair_q[active]
        delta = score[h] - score[lo]
        disc = np.abs(1.0 / np.log2(2.0 + r_h[active]) - 1.0 / np.log2(2.0 + r_l[active]))
        d_ndcg = self.pair_gain[active] * disc * self.inv_max_dcg[q]
        if self.norm:
            best = score[order[self.starts]]
            worst = score[order[self.starts + self.sizes - 1]]
            spread = best[q] != worst[q]
            d_ndcg = np.where(spread, d_ndcg / (0.01 + np.abs(delta)), d_ndcg)
        rho = 1.0 / (1.0 + np.exp(np.clip(self.sigmoid * delta, -500.0, 500.0)))
        lam = -self.sigmoid * d_ndcg * rho
        hess = self.sigmoid ** 2 * d_ndcg * rho * (1.0 - rho)
        if self.norm:
            total = np.bincount(q, weights=-2.0 * lam, minlength=len(self.sizes))
            factor = np.where(total > 0, np.log2(1.0 + total) / np.where(total > 0, total, 1.0), 1.0)
            lam = lam * factor[q]
            hess = hess * factor[q]
        omega = self.pair_weight[active]
        lam = lam * omega
        hess = hess * omega
        grad = np.bincount(h, weights=lam, minlength=n) - np.bincount(lo, weights=lam, minlength=n)
        hessian = np.bincount(h, weights=hess, minlength=n) + np.bincount(lo, weights=hess, minlength=n)
        return grad, hessian

    def __call__(self, preds: np.ndarray, train_data: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.gradients(preds)


def _label_pairs(labels: np.ndarray, sizes: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (high, low) row pairs of a query with ``labels[high] > labels[low]``."""
    highs: list[np.ndarray] = []
    lows: list[np.ndarray] = []
    # Queries of one size at a time: an (m, s, s) comparison per size keeps this vectorised.
    for s in np.unique(sizes):
        if s < 2:
            continue
        base = starts[sizes == s]
        idx = base[:, None] + np.arange(s)[None, :]
        for chunk in np.array_split(idx, max(1, len(idx) * s * s // 4_000_000 + 1)):
            lab = labels[chunk]
            qq, i, j = np.nonzero(lab[:, :, None] > lab[:, None, :])
            highs.append(chunk[qq, i])
            lows.append(chunk[qq, j])
    if not highs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(highs).astype(np.int64), np.concatenate(lows).astype(np.int64)


def _inverse_max_dcg(gain: np.ndarray, sizes: np.ndarray, starts: np.ndarray, k: int) -> np.ndarray:
    """``1 / maxDCG@k`` per query (0 where the query has no positive gain), as LightGBM caches it."""
    q = query_index(sizes)
    rows = np.arange(len(gain))
    order = np.lexsort((-gain, q))
    rank = rows - starts[q]
    contrib = np.where(rank < k, gain[order] / np.log2(rank + 2.0), 0.0)
    max_dcg = np.bincount(q, weights=contrib, minlength=len(sizes))
    return np.divide(1.0, max_dcg, out=np.zeros(len(sizes)), where=max_dcg > 0)


class IPSWeightedNDCG:
    """LightGBM ``feval``: NDCG@k with each logged gain divided by its examination probability.

    ``gain_i = (2**y_i - 1) * w_i`` with ``w_i`` the (clipped) inverse propensity of row ``i``'s
    slot; DCG of the model's order over the ideal DCG of those gains, averaged over queries.
    Position bias hides relevant items shown low; reweighting their observed gains makes the
    metric an estimate of NDCG under full examination (self-normalised per query), which is
    what the IPS ranker should be selected on. Named ``ips_ndcg@k``.
    """

    def __init__(self, labels: np.ndarray, sizes: np.ndarray, weights: np.ndarray, eval_at: Sequence[int]) -> None:
        self.gains = (np.exp2(labels) - 1.0) * weights
        self.sizes = sizes
        self.eval_at = tuple(eval_at)
        self.n_rows = len(labels)

    def __call__(self, preds: np.ndarray, eval_data: Any) -> list[tuple[str, float, bool]]:
        if len(preds) != self.n_rows:  # another dataset (e.g. the training set): not ours to score
            return []
        return [(f"ips_ndcg@{k}", ndcg_at_k(self.gains, preds, self.sizes, k, gain="linear"), True)
                for k in self.eval_at]


class LambdaMARTRanker(FittedBooster):
    """LightGBM LambdaMART on graded labels, optionally with IPS pair weights.

    Parameters
    ----------
    params : GBDTParams
        Tree parameters, number of rounds and early-stopping patience.
    eval_at : tuple of int, default (10, 20)
        NDCG cut-offs evaluated on the validation set.
    stop_at : int, default 20
        Cut-off whose validation NDCG drives early stopping (must be in ``eval_at``).
    truncation_level : int, default 30
    num_threads : int, default 1
    seed : int, default 0

    Attributes
    ----------
    booster_ : lightgbm.Booster
    feature_names_ : list of str
    best_iteration_ : int
        Trees used for prediction (all when no validation set is given).
    valid_scores_ : dict of str to float
        ``ndcg@k`` (and ``ips_ndcg@k`` with ``eval_ips_weight``) on the validation set at
        ``best_iteration_`` (empty without one).
    evals_result_ : dict
        Per-iteration validation metrics, as LightGBM records them.
    """

    def __init__(self, *, params: GBDTParams = DEFAULT_PARAMS, eval_at: tuple[int, ...] = (10, 20), stop_at: int = 20,
                 truncation_level: int = 30, num_threads: int = 1, seed: int = 0) -> None:
        self.params = params
        self.eval_at = eval_at
        self.stop_at = stop_at
        self.truncation_level = truncation_level
        self.num_threads = num_threads
        self.seed = seed

    def lightgbm_params(self) -> dict[str, Any]:
        """LightGBM parameters used for training (without the objective callable)."""
        return {**self.params.lightgbm_params(), "metric": "ndcg", "eval_at": list(self.eval_at),
                "lambdarank_truncation_level": self.truncation_level, "num_threads": self.num_threads,
                "seed": self.seed, "deterministic": True, "force_row_wise": True, "verbosity": -1}

    def stop_metric(self, ips_validation: bool) -> str:
        """The validation metric early stopping and tuning follow: ``[ips_]ndcg@stop_at``."""
        return f"{'ips_' if ips_validation else ''}ndcg@{self.stop_at}"

    def fit(self, X: Any, y: Any, group: Any, *, ips_weight: Any = None, sample_weight: Any = None,
            eval_set: tuple[Any, Any, Any] | None = None, eval_ips_weight: Any = None,
            feature_names: Sequence[str] | None = None,
            callbacks: Sequence[Callable[[Any], None]] = ()) -> LambdaMARTRanker:
        """Train on rows grouped by query.

        Parameters
        ----------
        X : DataFrame or ndarray, shape (n, d)
        y : array-like of int, shape (n,)
            Graded labels (0 = no interaction, higher = better).
        group : array-like, shape (n,)
            Query id of each row (e.g. ``request_id``); a query's rows must be contiguous.
        ips_weight : array-like of float, shape (n,), optional
            Inverse-propensity weight of each row, applied to the pairs where this row holds
            the higher grade. None trains the naive (unweighted) ranker.
        sample_weight : array-like of float, shape (n,), optional
            Downsampling weights, applied to both sides of every pair.
        eval_set : (X_valid, y_valid, group_valid), optional
            Validation slice for early stopping on ``ndcg@stop_at``.
        eval_ips_weight : array-like of float, shape (n_valid,), optional
            Inverse propensities of the validation rows: adds ``ips_ndcg@k``
            (:class:`IPSWeightedNDCG`) and early-stops on ``ips_ndcg@stop_at`` instead.
        feature_names : sequence of str, optional
        callbacks : sequence of LightGBM callbacks, optional
            E.g. an Optuna pruning callback.

        Returns
        -------
        self

        Raises
        ------
        TypeError, ValueError
            On malformed inputs (the message names the argument).
        """
        import lightgbm as lgb

        if not isinstance(self.params, GBDTParams):
            raise TypeError(f"params must be a GBDTParams, got {type(self.params).__name__}")
        if self.stop_at not in self.eval_at:
            raise ValueError(f"stop_at must be one of eval_at {list(self.eval_at)}, got {self.stop_at}")
        matrix, names = as_feature_matrix(X, feature_names)
        n = len(matrix)
        labels = graded_labels("y", y, n)
        sizes = query_sizes("group", group, n)
        hw = row_weights("ips_weight", ips_weight, n)
        sw = row_weights("sample_weight", sample_weight, n)
        objective = LambdaRankObjective(labels, sizes, high_weight=hw, sample_weight=sw,
                                        truncation_level=self.truncation_level)
        params = {**self.lightgbm_params(), "objective": objective}
        train_set = lgb.Dataset(matrix, label=labels, group=sizes, feature_name=names, free_raw_data=True)
        valid_sets = []
        stopper = None
        feval = None
        all_callbacks: list[Any] = list(callbacks)
        evals: dict[str, Any] = {}
        if eval_set is not None:
            Xv, yv, gv = eval_set
            vmatrix, _ = as_feature_matrix(Xv, names, name="eval_set X")
            if vmatrix.shape[1] != matrix.shape[1]:
                raise ValueError(f"eval_set X must have {matrix.shape[1]} features, got {vmatrix.shape[1]}")
            vlabels = graded_labels("eval_set y", yv, len(vmatrix))
            vsizes = query_sizes("eval_set group", gv, len(vmatrix))
            valid_sets.append(lgb.Dataset(vmatrix, label=vlabels, group=vsizes, reference=train_set))
            if eval_ips_weight is not None:
                vw = row_weights("eval_ips_weight", eval_ips_weight, len(vmatrix))
                feval = IPSWeightedNDCG(vlabels, vsizes, vw, self.eval_at)
            stopper = EarlyStoppingOnMetric(self.stop_metric(eval_ips_weight is not None),
                                            self.params.early_stopping_rounds,
                                            min_rounds=min(self.params.min_boost_round, self.params.num_boost_round))
            all_callbacks += [stopper, lgb.record_evaluation(evals)]
        elif eval_ips_weight is not None:
            raise ValueError("eval_ips_weight needs an eval_set")
        booster = lgb.train(params, train_set, num_boost_round=self.params.num_boost_round, valid_sets=valid_sets,
                            valid_names=["valid"][: len(valid_sets)], feval=feval, callbacks=all_callbacks)
        self.evals_result_ = evals
        self._adopt(booster, names, stopper, "ranker")
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Ranking scores (higher = better; comparable within a query only), shape (n,)."""
        return self._predict_raw(X)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, num_threads: int = 1) -> LambdaMARTRanker:
        """Load a ranker saved by :meth:`save` (LightGBM text)."""
        ranker = super().load(path, num_threads=num_threads)
        ranker.evals_result_ = {}
        return ranker

