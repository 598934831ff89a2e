"""An Optuna study over the ranker's main LightGBM parameters, pruned on validation NDCG.

Each trial trains :class:`~ranking.ranker.LambdaMARTRanker` (with the same IPS weights as
the final model) and is scored by its validation ``ndcg@stop_at`` (``ips_ndcg@stop_at``
when validation propensities are given) at its early-stopped best iteration. A median pruner, fed that metric after every boosting round, stops trials
that fall behind the median of earlier trials at the same round. The sampler is TPE with
the configured seed, so a study is reproducible for a given budget in trials (a time
budget cuts it wherever the clock says).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ranking.config import DEFAULT_PARAMS, GBDTParams, TuningConfig
from ranking.ranker import LambdaMARTRanker

__all__ = ["SEARCH_SPACE", "TuningResult", "tune_ranker"]

logger = logging.getLogger(__name__)

# name: (kind, low, high, log scale)
SEARCH_SPACE: dict[str, tuple[str, float, float, bool]] = {
    "learning_rate": ("float", 0.01, 0.3, True),
    "num_leaves": ("int", 7, 127, True),
    "min_data_in_leaf": ("int", 5, 200, True),
    "feature_fraction": ("float", 0.5, 1.0, False),
    "bagging_fraction": ("float", 0.5, 1.0, False),
    "lambda_l2": ("float", 1e-3, 10.0, True),
}


@dataclass(frozen=True)
class TuningResult:
    """The outcome of :func:`tune_ranker`.

    Attributes
    ----------
    best_params : GBDTParams
        The base parameters with the best trial's values substituted.
    best_value : float
        Validation ``ndcg@stop_at`` of the best trial.
    best_iteration : int
        Its early-stopped number of trees.
    summary : dict
        JSON-safe study summary: budget, seed, counts by state, every trial's params,
        value, best iteration, state and duration.
    """

    best_params: GBDTParams
    best_value: float
    best_iteration: int
    summary: dict[str, Any]


class _PruningCallback:
    """Report ``metric`` on the validation set to the trial after each round; prune when told."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.order = 40  # after recording and early stopping (see EarlyStoppingOnMetric)
        self.before_iteration = False
        self.trial = trial
        self.metric = metric

    def __call__(self, env: Any) -> None:
        import optuna

        for entry in env.evaluation_result_list:
            if entry[1] == self.metric:
                self.trial.report(float(entry[2]), step=env.iteration)
                if self.trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at round {env.iteration + 1}")
                return


def _suggest(trial: Any, base: GBDTParams) -> GBDTParams:
    values: dict[str, Any] = {}
    for name, (kind, low, high, log) in SEARCH_SPACE.items():
        if kind == "int":
            values[name] = trial.suggest_int(name, int(low), int(high), log=log)
        else:
            values[name] = trial.suggest_float(name, low, high, log=log)
    values["bagging_freq"] = 1 if values["bagging_fraction"] < 1.0 else 0
    return replace(base, **values)


def tune_ranker(X: Any, y: Any, group: Any, *, eval_set: tuple[Any, Any, Any], tuning: TuningConfig,
                base_params: GBDTParams = DEFAULT_PARAMS, ips_weight: Any = None, sample_weight: Any = None,
                eval_ips_weight: Any = None,
                feature_names: Sequence[str] | None = None, eval_at: tuple[int, ...] = (10, 20), stop_at: int = 20,
                truncation_level: int = 30, num_threads: int = 1) -> TuningResult:
    """Search LightGBM parameters of the ranker with Optuna (TPE sampler, median pruner).

    Parameters
    ----------
    X, y, group, ips_weight, sample_weight, feature_names :
        Training rows, as :meth:`LambdaMARTRanker.fit` takes them.
    eval_set : (X_valid, y_valid, group_valid)
        The later time slice; its ``ndcg@stop_at`` is maximised.
    eval_ips_weight : array-like of float, shape (n_valid,), optional
        Inverse propensities of the validation rows: ``ips_ndcg@stop_at`` is maximised instead.
    tuning : TuningConfig
        ``n_trials`` (>= 1 here), ``timeout_s`` (0 = none), ``seed``, ``pruning_warmup_rounds``.
    base_params : GBDTParams
        Values outside the search space (rounds, early stopping, max_depth).
    eval_at, stop_at, truncation_level, num_threads :
        As :class:`LambdaMARTRanker`.

    Returns
    -------
    TuningResult

    Raises
    ------
    TypeError
        When ``tuning`` is not a TuningConfig.
    ValueError
        When ``tuning.n_trials`` is 0 or no trial completed.
    """
    import optuna

    if not isinstance(tuning, TuningConfig):
        raise TypeError(f"tuning must be a TuningConfig, got {type(tuning).__name__}")
    if tuning.n_trials < 1:
        raise ValueError(f"tuning.n_trials must be >= 1 to tune, got {tuning.n_trials}")
    metric = f"{'' if eval_ips_weight is None else 'ips_'}ndcg@{stop_at}"
    sampler = optuna.samplers.TPESampler(seed=tuning.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=min(5, max(1, tuning.n_trials // 4)),
                                         n_warmup_steps=tuning.pruning_warmup_rounds)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)

    def objective(trial: Any) -> float:
        params = _suggest(trial, base_params)
        ranker = LambdaMARTRanker(params=params, eval_at=eval_at, stop_at=stop_at, truncation_level=truncation_level,
                                  num_threads=num_threads, seed=tuning.seed)
        ranker.fit(X, y, group, ips_weight=ips_weight, sample_weight=sample_weight, eval_set=eval_set,
                   eval_ips_weight=eval_ips_weight, feature_names=feature_names,
                   callbacks=[_PruningCallback(trial, metric)])
        trial.set_user_attr("best_iteration", int(ranker.best_iteration_))
        return float(ranker.valid_scores_[metric])

    started = time.perf_counter()
    study.optimize(objective, n_trials=tuning.n_trials, timeout=tuning.timeout_s or None, catch=())
    states = [t.state.name for t in study.trials]
    if "COMPLETE" not in states:
        raise ValueError("no tuning trial completed; raise tuning.n_trials or tuning.timeout_s")
    best = study.best_trial
    best_value = float(best.value if best.value is not None else float("nan"))
    best_params = _suggest(optuna.trial.FixedTrial(best.params), base_params)
    summary = {
        "metric": metric,
        "direction": "maximize",
        "sampler": "TPESampler",
        "pruner": "MedianPruner",
        "seed": tuning.seed,
        "n_trials_budget": tuning.n_trials,
        "timeout_s": tuning.timeout_s,
        "seconds": round(time.perf_counter() - started, 3),
        "counts": {s: states.count(s) for s in sorted(set(states))},
        "best_trial": best.number,
        "best_value": best_value,
        "best_params": {k: (float(v) if isinstance(v, float) else v) for k, v in best.params.items()},
        "search_space": {k: list(v) for k, v in SEARCH_SPACE.items()},
        "trials": [{
            "number": t.number,
            "state": t.state.name,
            "value": None if t.value is None else float(t.value),
            "params": t.params,
            "best_iteration": t.user_attrs.get("best_iteration"),
            "last_reported_round": None if not t.intermediate_values else max(t.intermediate_values) + 1,
            "duration_s": None if t.duration is None else round(t.duration.total_seconds(), 3),
        } for t in study.trials],
    }
    logger.info("tuning: %d trials (%s), best %s = %.4f", len(study.trials), summary["counts"], metric, best_value)
    return TuningResult(best_params=best_params, best_value=best_value,
                        best_iteration=int(best.user_attrs["best_iteration"]), summary=summary)
