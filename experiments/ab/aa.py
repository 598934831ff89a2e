"""A/A checks: run an analysis on random splits of one arm and look at its p-values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from scipy import stats

from experiments.ab._checks import fail, integer, open_unit
from experiments.ab.effects import EffectEstimate, welch_ttest

__all__ = ["AATestResult", "run_aa_test"]

Data = TypeVar("Data", np.ndarray, pd.DataFrame)


@dataclass(frozen=True, eq=False)
class AATestResult:
    """p-values of an analysis over random A/A splits.

    Attributes
    ----------
    p_values : ndarray of shape (n_splits,)
        p-value of each split.
    false_positive_rate : float
        Share of splits with ``p_value < alpha``; should be close to ``alpha``.
    alpha : float
        Level the p-values were compared with.
    uniformity_p_value : float
        Kolmogorov-Smirnov test of the p-values against Uniform(0, 1); a small value means the
        analysis is miscalibrated on this data (e.g. ignores clustering).
    """

    p_values: np.ndarray
    false_positive_rate: float
    alpha: float
    uniformity_p_value: float


def _welch_split(control: np.ndarray, treatment: np.ndarray) -> EffectEstimate:
    return welch_ttest(control, treatment)


def run_aa_test(
    data: Data,
    analysis: Callable[[Data, Data], EffectEstimate] = _welch_split,
    *,
    n_splits: int = 200,
    alpha: float = 0.05,
    treatment_share: float = 0.5,
    groups: Any = None,
    random_state: int | np.random.Generator = 0,
) -> AATestResult:
    """Split one arm's data at random ``n_splits`` times and collect the analysis' p-values.

    With no real difference between the halves, a well-calibrated analysis rejects in about
    ``alpha`` of the splits and its p-values are uniform.

    Parameters
    ----------
    data : ndarray of shape (n, ...) or pandas.DataFrame with n rows
        Units (or rows) of one arm; rows are split along the first axis.
    analysis : callable (control, treatment) -> EffectEstimate, default=Welch t-test
        The analysis under check, called with the two parts of ``data`` (same type as ``data``).
        The default expects a 1-D array.
    n_splits : int, default=200
        Number of random splits, ``>= 1``.
    alpha : float, default=0.05
        Level for the false-positive rate, in (0, 1).
    treatment_share : float, default=0.5
        Share of units put in the pseudo-treatment, in (0, 1).
    groups : array-like of shape (n,), optional
        Unit id per row (e.g. user id for session rows); whole units are assigned, as in the
        real experiment. Default: each row is a unit.
    random_state : int or numpy.random.Generator, default=0
        Seed or generator for the splits.

    Returns
    -------
    AATestResult

    Raises
    ------
    TypeError
        If ``data`` is neither an ndarray nor a DataFrame, or an argument has the wrong type.
    ValueError
        If an argument is out of range, ``groups`` has the wrong length, or fewer than 2 units
        would land in an arm.
    """
    if not isinstance(data, (np.ndarray, pd.DataFrame)):
        raise TypeError(f"data must be a numpy array or a pandas DataFrame, got {type(data).__name__}")
    if not callable(analysis):
        raise TypeError(f"analysis must be callable, got {type(analysis).__name__}")
    n_rows = data.shape[0]
    reps = integer(n_splits, "n_splits", minimum=1)
    level = open_unit(alpha, "alpha")
    share = open_unit(treatment_share, "treatment_share")
    if groups is None:
        codes, n_units = np.arange(n_rows), n_rows
    else:
        ids = np.asarray(groups)
        if ids.ndim != 1 or ids.shape[0] != n_rows:
            raise fail("groups", f"a 1-D array of length {n_rows} (rows of data)", f"shape {ids.shape}")
        codes, uniques = pd.factorize(ids)
        n_units = len(uniques)
    n_treat = int(round(share * n_units))
    if min(n_treat, n_units - n_treat) < 2:
        raise fail("data", "large enough for >= 2 units per arm", f"{n_units} units at share {share}")
    rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
    p_values = np.empty(reps)
    unit_is_treated = np.zeros(n_units, dtype=bool)
    for rep in range(reps):
        unit_is_treated[:] = False
        unit_is_treated[rng.choice(n_units, size=n_treat, replace=False)] = True
        mask = unit_is_treated[codes]
        if isinstance(data, pd.DataFrame):
            result = analysis(data.iloc[~mask], data.iloc[mask])
        else:
            result = analysis(data[~mask], data[mask])
        p_values[rep] = result.p_value
    return AATestResult(
        p_values=p_values,
        false_positive_rate=float(np.mean(p_values < level)),
        alpha=level,
        uniformity_p_value=float(stats.kstest(p_values, "uniform").pvalue),
    )
