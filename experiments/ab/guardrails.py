"""Guardrail table: did any metric degrade by more than it is allowed to?"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from experiments.ab._checks import fail, real
from experiments.ab.effects import EffectEstimate

__all__ = ["GUARDRAIL_COLUMNS", "guardrail_table"]

GUARDRAIL_COLUMNS = (
    "metric",
    "control",
    "treatment",
    "lift",
    "relative_lift",
    "relative_ci_low",
    "relative_ci_high",
    "p_value",
    "allowed_degradation",
    "higher_is_better",
    "passed",
)


def guardrail_table(
    results: Mapping[str, EffectEstimate],
    allowed_degradation: Mapping[str, float],
    *,
    higher_is_better: Mapping[str, bool] | None = None,
) -> pd.DataFrame:
    """One row per metric with control, treatment, lift, relative CI, p-value and pass/fail.

    A guardrail is a non-inferiority check on the relative lift with margin ``m``
    (``allowed_degradation``): it passes when the whole interval stays on the acceptable side::

        higher is better:  relative_ci_low  >= -m
        lower is better:   relative_ci_high <= +m

    so "no evidence of harm" is not enough; the data must rule out harm beyond ``m``. The
    interval is each result's two-sided ``1 - alpha`` interval (one-sided level ``alpha / 2``).
    A metric with an undefined relative interval (control mean 0) fails.

    Parameters
    ----------
    results : mapping of str to EffectEstimate
        Per-metric effect estimates.
    allowed_degradation : mapping of str to float
        Allowed relative degradation per metric (0.01 = 1 %), ``>= 0``; one entry per metric
        in ``results``.
    higher_is_better : mapping of str to bool, optional
        Direction per metric; missing metrics default to True (e.g. set False for latency).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`GUARDRAIL_COLUMNS` in the order of ``results``.

    Raises
    ------
    TypeError
        If a result is not an EffectEstimate or a margin is not a number.
    ValueError
        If ``results`` is empty, a metric has no margin, or a margin is negative.
    """
    if not isinstance(results, Mapping) or not results:
        raise fail("results", "a non-empty mapping of metric name to EffectEstimate", type(results).__name__)
    direction = {} if higher_is_better is None else dict(higher_is_better)
    unknown = set(direction) - set(results)
    if unknown:
        raise fail("higher_is_better", "keyed by metrics in results", f"unknown {sorted(unknown)}")
    rows = []
    for metric, res in results.items():
        if not isinstance(res, EffectEstimate):
            raise TypeError(f"results[{metric!r}] must be an EffectEstimate, got {type(res).__name__}")
        if metric not in allowed_degradation:
            raise fail("allowed_degradation", f"given for metric {metric!r}", f"keys {sorted(allowed_degradation)}")
        margin = real(allowed_degradation[metric], f"allowed_degradation[{metric!r}]")
        if margin < 0.0:
            raise fail(f"allowed_degradation[{metric!r}]", ">= 0", margin)
        up = bool(direction.get(metric, True))
        bound = res.relative_ci_low if up else res.relative_ci_high
        if np.isnan(bound):
            passed = False
        else:
            passed = bool(bound >= -margin) if up else bool(bound <= margin)
        rows.append(
            (
                metric,
                res.control_mean,
                res.treatment_mean,
                res.estimate,
                res.relative_lift,
                res.relative_ci_low,
                res.relative_ci_high,
                res.p_value,
                margin,
                up,
                passed,
            )
        )
    return pd.DataFrame(rows, columns=list(GUARDRAIL_COLUMNS))
