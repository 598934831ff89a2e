"""CUPED: variance reduction with a pre-experiment covariate (Deng et al., 2013)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.ab._checks import fail, float_1d, open_unit, same_length
from experiments.ab.effects import EffectEstimate, _welch

__all__ = ["CupedAdjustment", "CupedResult", "cuped_adjust", "cuped_ttest"]


@dataclass(frozen=True, eq=False)
class CupedAdjustment:
    """A metric adjusted by its pre-period covariate.

    Attributes
    ----------
    theta : float
        ``cov(y, x) / var(x)``.
    adjusted : ndarray of shape (n,)
        ``y - theta * (x - mean(x))``; same mean as ``y``.
    variance_reduction : float
        ``1 - var(adjusted) / var(y)`` (equals ``corr(y, x)**2``).
    """

    theta: float
    adjusted: np.ndarray
    variance_reduction: float


@dataclass(frozen=True)
class CupedResult:
    """CUPED effect estimate beside the unadjusted one.

    Attributes
    ----------
    effect : EffectEstimate
        Welch test on the adjusted metric (``method="cuped"``).
    unadjusted : EffectEstimate
        Welch test on the raw metric, for comparison.
    theta : float
        Pooled within-arm ``cov(y, x) / var(x)``.
    variance_reduction : float
        ``1 - effect.std_error**2 / unadjusted.std_error**2``: the share of the estimator's
        variance that the covariate removed.
    """

    effect: EffectEstimate
    unadjusted: EffectEstimate
    theta: float
    variance_reduction: float


def cuped_adjust(metric: Any, covariate: Any) -> CupedAdjustment:
    """Adjust a metric by a pre-period covariate: ``y_adj = y - theta (x - mean(x))``.

    ``theta = cov(y, x) / var(x)`` minimises ``var(y_adj)``, which is then
    ``var(y) (1 - corr(y, x)**2)``; the mean is unchanged.

    Parameters
    ----------
    metric : array-like of shape (n,)
        Experiment-period metric per unit.
    covariate : array-like of shape (n,)
        The same units' pre-period value (unaffected by treatment).

    Returns
    -------
    CupedAdjustment

    Raises
    ------
    TypeError
        If an input is not numeric array-like.
    ValueError
        If lengths differ, there are fewer than 2 units, values are non-finite, or the
        covariate or the metric is constant.
    """
    y = float_1d(metric, "metric", min_size=2)
    x = float_1d(covariate, "covariate", min_size=2)
    same_length(metric=y, covariate=x)
    if np.var(x) == 0.0:
        raise fail("covariate", "non-constant", f"all values {x[0]}")
    if np.var(y) == 0.0:
        raise fail("metric", "non-constant", f"all values {y[0]}")
    theta = float(np.cov(y, x, ddof=1)[0, 1] / np.var(x, ddof=1))
    adjusted = y - theta * (x - x.mean())
    return CupedAdjustment(
        theta=theta,
        adjusted=adjusted,
        variance_reduction=float(1.0 - np.var(adjusted) / np.var(y)),
    )


def cuped_ttest(
    control: Any,
    control_covariate: Any,
    treatment: Any,
    treatment_covariate: Any,
    *,
    alpha: float = 0.05,
) -> CupedResult:
    """Welch test on CUPED-adjusted metrics, with one ``theta`` pooled over both arms.

    ``theta = sum_arm sum_i (y_i - ybar_arm)(x_i - xbar_arm) / sum_arm sum_i (x_i - xbar_arm)**2``
    (within-arm, so the treatment effect does not leak into it) and both arms are adjusted
    around the pooled covariate mean: ``y_adj = y - theta (x - xbar)``. The adjusted difference
    ``(ybar_t - ybar_c) - theta (xbar_t - xbar_c)`` is unbiased for the effect because the
    covariate is balanced by randomisation.

    Parameters
    ----------
    control, control_covariate : array-like of shape (n_c,)
        Control metric and its pre-period covariate per unit.
    treatment, treatment_covariate : array-like of shape (n_t,)
        The same for treatment.
    alpha : float, default=0.05
        Interval level ``1 - alpha``.

    Returns
    -------
    CupedResult

    Raises
    ------
    TypeError
        If an input is not numeric array-like.
    ValueError
        If lengths within an arm differ, an arm has fewer than 2 units, values are
        non-finite, the covariate has no within-arm variance, or ``alpha`` is outside (0, 1).
    """
    yc = float_1d(control, "control", min_size=2)
    xc = float_1d(control_covariate, "control_covariate", min_size=2)
    yt = float_1d(treatment, "treatment", min_size=2)
    xt = float_1d(treatment_covariate, "treatment_covariate", min_size=2)
    same_length(control=yc, control_covariate=xc)
    same_length(treatment=yt, treatment_covariate=xt)
    level = open_unit(alpha, "alpha")
    xc_c, xt_c = xc - xc.mean(), xt - xt.mean()
    sxx = np.sum(xc_c**2) + np.sum(xt_c**2)
    if sxx == 0.0:
        raise fail("control_covariate and treatment_covariate", "varying within an arm", "constants")
    theta = float((np.sum((yc - yc.mean()) * xc_c) + np.sum((yt - yt.mean()) * xt_c)) / sxx)
    x_mean = np.concatenate((xc, xt)).mean()
    effect = _welch(yc - theta * (xc - x_mean), yt - theta * (xt - x_mean), level, "cuped")
    raw = _welch(yc, yt, level, "welch")
    reduction = 1.0 - effect.std_error**2 / raw.std_error**2 if raw.std_error > 0.0 else 0.0
    return CupedResult(effect=effect, unadjusted=raw, theta=theta, variance_reduction=float(reduction))
